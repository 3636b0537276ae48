"""Stream entries as readers see them, and which of them a reader shows.

:class:`Entry` wraps one XRANGE/XREAD row: the id, the decoded record and
the stored bytes.  A stream may hold what another producer wrote, or bytes
that are not JSON at all; a reader must show those, not crash on them, so
decoding never raises and the accessors fall back to something printable.
:class:`EntryFilter` is the one level/logger predicate the command-line
tools and the SSE view share.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["LEVELS", "Entry", "EntryFilter", "decode_entry", "pages", "parse_level"]

LEVELS: Mapping[str, int] = {
    "DEBUG": 10,
    "INFO": 20,
    "WARNING": 30,
    "WARN": 30,
    "ERROR": 40,
    "CRITICAL": 50,
    "FATAL": 50,
}
_LEVEL_NAMES = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}


@dataclass(frozen=True)
class Entry:
    """One stream entry: its id, its decoded record and the stored bytes.

    ``valid`` is False when the stored data was not a JSON object; the
    record then carries the raw text as ``message`` and ``"?"`` as level.
    The properties never raise, whatever another producer wrote.
    """

    id: str
    record: dict[str, Any]
    raw: bytes
    valid: bool = True

    @property
    def levelno(self) -> int | None:
        """The numeric level, from ``levelno`` or a standard level name; None if unknown."""
        value = self.record.get("levelno")
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return LEVELS.get(str(self.record.get("level", "")).upper())

    @property
    def level(self) -> str:
        """The level name as stored; ``"?"`` when the record has none."""
        level = self.record.get("level")
        if level is None:
            return _LEVEL_NAMES.get(self.levelno or -1, "?")
        return str(level)

    @property
    def logger(self) -> str:
        """The logger name, ``""`` when absent."""
        return str(self.record.get("logger") or "")

    @property
    def context(self) -> str | None:
        """The raw context value (not its encoded key form), or None."""
        context = self.record.get("context")
        return None if context is None else str(context)

    @property
    def message(self) -> str:
        """The formatted message, as text whatever type a producer stored."""
        message = self.record.get("message", "")
        return message if isinstance(message, str) else str(message)

    @property
    def timestamp(self) -> float:
        """``record.created``; the entry id's milliseconds when absent."""
        value = self.record.get("timestamp")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        return int(self.id.partition("-")[0] or 0) / 1000


def _text(value: Any) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _bytes(text: str) -> bytes:
    """The bytes a ``decode_responses=True`` client decoded, as near as can be."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


def decode_entry(entry_id: bytes | str, fields: Mapping[Any, Any]) -> Entry:
    """Build an :class:`Entry` from a raw XRANGE/XREAD row; never raises.

    Works with bytes and ``decode_responses=True`` clients alike.
    """
    eid = _text(entry_id)
    data = fields.get(b"data", fields.get("data"))
    if data is None:
        text = " ".join(f"{_text(k)}={_text(v)}" for k, v in fields.items())
        raw = text.encode("utf-8", "backslashreplace")
        return Entry(eid, {"message": raw.decode(), "level": "?"}, raw, valid=False)
    raw = data if isinstance(data, bytes) else _bytes(str(data))
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        record = None
    if not isinstance(record, dict):
        text = raw.decode("utf-8", "backslashreplace")
        return Entry(eid, {"message": text, "level": "?"}, raw, valid=False)
    return Entry(eid, record, raw)


@dataclass(frozen=True)
class EntryFilter:
    """Which entries a reader shows: a minimum level and a logger subtree.

    ``logger="shop"`` keeps ``shop`` and ``shop.views`` but not
    ``shopping``: the logging hierarchy, as the logger names mean it.
    Entries whose level is unknown (not our JSON) pass the level test: a
    reader should not hide what it cannot judge.
    """

    min_level: int | None = None
    logger: str | None = None

    def __call__(self, entry: Entry) -> bool:
        if self.min_level is not None:
            levelno = entry.levelno
            if levelno is not None and levelno < self.min_level:
                return False
        if self.logger:
            prefix = self.logger.rstrip(".")
            name = entry.logger
            if name != prefix and not name.startswith(prefix + "."):
                return False
        return True

    @property
    def active(self) -> bool:
        return self.min_level is not None or bool(self.logger)


def parse_level(text: str) -> int:
    """``"warning"``, ``"WARN"``, ``"30"`` -> 30; ValueError otherwise."""
    text = text.strip()
    if text.isdigit():
        return int(text)
    if text.upper() in LEVELS:
        return LEVELS[text.upper()]
    raise ValueError(
        f"unknown level {text!r}: use DEBUG, INFO, WARNING, ERROR, CRITICAL or a number"
    )


def pages(client: Any, key: Any, low: str, high: str, page: int) -> Iterator[list[Any]]:
    """The raw entries of ``key`` from ``low`` to ``high``, oldest first, one
    XRANGE of at most ``page`` entries per list: one page in memory at a time."""
    while True:
        rows = client.xrange(key, low, high, count=page)
        if rows:
            yield rows
        if len(rows) < page:
            return
        low = f"({_text(rows[-1][0])}"
