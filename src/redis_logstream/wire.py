"""The wire format: one JSON object per record, built once in the worker.

``{"message": ..., "level": "INFO", "levelno": 20, "timestamp": 1764028888.123456,
"logger": "app.views", "context": "User.alice" | null, "pod": "web-1", "pid": 42}``

The same bytes go to pub/sub and into the stream entry's ``data`` field.
A general ``json.dumps`` of a small dict costs more than formatting the
record did; since every key is known, the encoder only escapes the strings
(the C escaper json itself uses) and caches the parts that repeat: level,
logger name, context, host and pid.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from json.encoder import encode_basestring
from typing import Any

from .context import validate_context

__all__ = ["Encoder", "host_name"]

_CACHE_LIMIT = 4096

# The timestamp must read back as exactly record.created, and the shortest
# repr of a float costs as much as half the rest of the encoding.  From 2**30
# seconds (January 2004) on, doubles near a timestamp are at least 2**-22 s
# (0.24 us) apart, so its correctly rounded value to 0.1 us lies within
# 0.05 us, less than half that spacing, and reads back as the same double;
# a fixed 7-decimal format costs about half of repr.
_FIXED_FROM, _FIXED_UNTIL = float(2**30), 1e15
_FIXED = b'{"message":%b%b,"timestamp":%.7f%b%b%b'
_ANY = b'{"message":%b%b,"timestamp":%b%b%b%b'


def _timestamp(created: float) -> bytes:
    """Other timestamps: the shortest exact form; null for NaN and infinities."""
    return repr(created).encode() if math.isfinite(created) else b"null"



def host_name() -> str:
    """The pod or host: HOSTNAME (set in containers), else the host name."""
    return os.environ.get("HOSTNAME") or socket.gethostname()


def _clean(text: str) -> str:
    """Make ``text`` encodable as UTF-8: lone surrogates (undecodable bytes
    smuggled in by surrogateescape) become visible ``\\udcXX`` escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class Encoder:
    """Turns a buffered ``(message, levelno, created, logger, context)``
    tuple into ``(context, json_bytes)``."""

    def __init__(self, max_message_bytes: int = 65536) -> None:
        self.max_message_bytes = max_message_bytes
        # A str of n characters takes at most 6n bytes (4 for UTF-8, 6 for
        # a lone surrogate's visible escape): below this no count is needed.
        self._short = max_message_bytes // 6
        self._middles: dict[tuple[int, str], bytes] = {}
        self._contexts: dict[Any, tuple[bytes, str | None]] = {}
        self.after_fork()

    def after_fork(self) -> None:
        """The pid is part of every record: read it once per process."""
        tail = f',"pod":{encode_basestring(_clean(host_name()))},"pid":{os.getpid()}}}'
        self._tail = tail.encode("utf-8")

    def __call__(self, item: tuple[str, int, float, str, Any]) -> tuple[str | None, bytes]:
        message, levelno, created, name, context = item
        truncated = b""
        if len(message) > self._short:
            message, truncated = self._cut(message)
        middle = self._middles.get((levelno, name))
        if middle is None:
            middle = self._middle(levelno, name)
        try:
            known = self._contexts.get(context)
        except TypeError:  # unhashable: set on the raw variable, around the helpers
            known = None
        if known is None:
            known = self._context(context)
        ctx, route = known
        if created.__class__ is not float:
            created = float(created)
        try:
            text = encode_basestring(message).encode("utf-8")
        except UnicodeEncodeError:
            text = encode_basestring(_clean(message)).encode("utf-8")
        if _FIXED_FROM <= created < _FIXED_UNTIL:
            return route, _FIXED % (text, truncated, created, middle, ctx, self._tail)
        return route, _ANY % (text, truncated, _timestamp(created), middle, ctx, self._tail)

    def _cut(self, message: str) -> tuple[str, bytes]:
        data = message.encode("utf-8", "backslashreplace")
        limit = self.max_message_bytes
        if len(data) <= limit:
            return message, b""
        room = limit - len(f" [... {len(data)} bytes cut]")  # the longest marker
        kept = data[:room].decode("utf-8", "ignore")  # whole characters only
        cut = len(data) - len(kept.encode("utf-8"))
        return f"{kept} [... {cut} bytes cut]", b',"truncated":true'

    def _middle(self, levelno: int, name: str) -> bytes:
        level = _clean(str(logging.getLevelName(levelno)))
        middle = (
            f',"level":{encode_basestring(level)},"levelno":{levelno:d}'
            f',"logger":{encode_basestring(_clean(name))}'
        ).encode()
        if len(self._middles) >= _CACHE_LIMIT:
            self._middles.clear()
        self._middles[(levelno, name)] = middle
        return middle

    def _context(self, context: Any) -> tuple[bytes, str | None]:
        """The JSON of ``context`` and the context to route by.

        The helpers validate contexts when they are set, but the variable
        itself is public: a value set around them (not a str, too long,
        reserved) still reaches the global stream, under its text.
        """
        if context is None:
            known: tuple[bytes, str | None] = (b',"context":null', None)
        else:
            try:
                route: str | None = validate_context(context)
            except ValueError:
                route = None
            text = f',"context":{encode_basestring(_clean(str(context)))}'
            known = (text.encode("utf-8"), route)
        if context.__class__ is str or context is None:  # 1, 1.0 and True are equal keys
            if len(self._contexts) >= _CACHE_LIMIT:
                self._contexts.clear()
            self._contexts[context] = known
        return known
