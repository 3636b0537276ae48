"""Turning stream entries into lines for a person or for a program.

``HH:MM:SS.mmm LEVEL    context logger: message``, the level coloured on a
terminal, or the stored JSON (``--json``) for ``jq`` and friends.

Log messages carry whatever users typed, and other producers may write
anything, so a record must not be able to drive the reader's terminal:
control characters (escape sequences, carriage returns, C1 controls) and
bidirectional marks and overrides are shown as visible escapes in text, and
as JSON escapes with ``--json`` (the same text once decoded).  Newlines
stay, with continuation lines indented, so a traceback reads as one record.
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

from redis_logstream.reading.reader import Entry

__all__ = ["INDENT", "Renderer", "safe", "use_color"]

INDENT = "    "
RESET = "\x1b[0m"
DIM = "\x1b[2m"
#: (minimum levelno, SGR colour), highest first.
LEVEL_COLORS = (
    (50, "\x1b[1;97;41m"),  # CRITICAL: bold white on red
    (40, "\x1b[1;31m"),  # ERROR: bold red
    (30, "\x1b[33m"),  # WARNING: yellow
    (20, "\x1b[32m"),  # INFO: green
    (0, "\x1b[2m"),  # DEBUG and below: dim
)
UNKNOWN_COLOR = "\x1b[35m"  # not our JSON: magenta
ALARM = "\x1b[31m"  # the message text of ERROR and worse: red, so tracebacks stand out

#: What must not reach a terminal raw: C0 controls but tab and newline (a
#: carriage return too, which would let a line overwrite itself), DEL, C1
#: controls (U+009B is a one-character CSI), the bidirectional marks,
#: embeddings, overrides and isolates (which reorder what is shown), and lone
#: surrogates (valid in JSON, but no terminal encoding can print them).
_UNSAFE = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def safe(text: str, *, in_json: bool = False) -> str:
    """``text`` with every character that could drive a terminal made visible.

    Text for a person shows them as ``\\x1b`` or ``\\u202e``.  With ``in_json``,
    ``text`` is a JSON document and each becomes the JSON escape ``\\u001b``:
    the line stays valid JSON that decodes to the very same characters (the
    characters matched can only occur inside JSON strings, where an escape
    means the character itself).  Key names and anything else printed from
    what producers stored go through here too.
    """
    return _UNSAFE.sub(_json_escape if in_json else _visible, text)


def use_color(stream: Any, force: bool | None = None) -> bool:
    """Colour when asked, else only on a terminal and unless NO_COLOR is set
    (https://no-color.org: any non-empty value)."""
    if force is not None:
        return force
    if os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except (ValueError, OSError):  # a closed stream
        return False


class Renderer:
    """Formats entries as text lines (each ending with a newline)."""

    def __init__(self, *, color: bool = False, json_lines: bool = False, utc: bool = False) -> None:
        self.color = color
        self.json_lines = json_lines
        self._clock = time.gmtime if utc else time.localtime

    def __call__(self, entry: Entry) -> str:
        return self.json(entry) if self.json_lines else self.text(entry)

    def json(self, entry: Entry) -> str:
        """The stored JSON (one valid JSON line for anything else), with the
        characters that could drive a terminal as JSON escapes."""
        if entry.valid:
            try:
                text = entry.raw.decode("utf-8")
            except UnicodeDecodeError:  # JSON in UTF-16 or -32: not ours, re-encoded
                text = ""
            if text and "\n" not in text and "\r" not in text:
                return safe(text, in_json=True) + "\n"
        return safe(json.dumps(entry.record, ensure_ascii=False), in_json=True) + "\n"

    def text(self, entry: Entry) -> str:
        """``HH:MM:SS.mmm LEVEL context logger: message`` with continuation
        lines indented."""
        stamp = self._stamp(entry.timestamp)
        level = safe(entry.level)
        context = safe(entry.context) if entry.context is not None else "-"
        logger = safe(entry.logger) or "-"
        lines = entry.message.replace("\r\n", "\n").rstrip("\n").split("\n")
        lines = [safe(line) for line in lines]
        if self.color:
            paint = self._level_color(entry)
            stamp = f"{DIM}{stamp}{RESET}"
            level = f"{paint}{level:<8}{RESET}"
            if (entry.levelno or 0) >= 40:
                lines = [f"{ALARM}{line}{RESET}" if line else line for line in lines]
        else:
            level = f"{level:<8}"
        head = f"{stamp} {level} {context} {logger}: {lines[0]}"
        rest = "".join(f"\n{INDENT}{line}" if line else "\n" for line in lines[1:])
        return f"{head}{rest}\n"

    def _stamp(self, timestamp: float) -> str:
        try:
            parts = self._clock(timestamp)
        except (OverflowError, OSError, ValueError):
            return "??:??:??.???"
        millis = int((timestamp % 1) * 1000)
        return f"{time.strftime('%H:%M:%S', parts)}.{millis:03d}"

    @staticmethod
    def _level_color(entry: Entry) -> str:
        levelno = entry.levelno
        if levelno is None:
            return UNKNOWN_COLOR
        return next((color for floor, color in LEVEL_COLORS if levelno >= floor), DIM)
