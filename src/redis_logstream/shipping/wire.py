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

import contextlib
import logging
import math
import os
import socket
from json.encoder import encode_basestring
from typing import Any

from redis_logstream.context import validate_context

__all__ = ["MAX_NAME_BYTES", "Encoder", "host_name"]

_CACHE_LIMIT = 4096
#: The most a logger name, or the text of a context set around the helpers'
#: checks, takes in a record (UTF-8 bytes).  A valid context (128 characters)
#: never comes near it; longer names are cut, marked like a cut message.
MAX_NAME_BYTES = 1024
_TRUNCATED = b',"truncated":true'

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


def _cut(text: str, limit: int) -> str | None:
    """``text`` cut to ``limit`` UTF-8 bytes, marker included, on a character
    boundary; None when it fits.  Lone surrogates count as their visible
    escapes, which is what they become on the wire."""
    data = text.encode("utf-8", "backslashreplace")
    if len(data) <= limit:
        return None
    room = limit - len(f" [... {len(data)} bytes cut]")  # the longest marker
    kept = data[: max(0, room)].decode("utf-8", "ignore")  # whole characters only
    cut = len(data) - len(kept.encode("utf-8"))
    return f"{kept} [... {cut} bytes cut]"


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
            cut = _cut(message, self.max_message_bytes)
            if cut is not None:
                message, truncated = cut, _TRUNCATED
        middle = self._middles.get((levelno, name))
        if middle is None:
            middle, whole = self._middle(levelno, name)
            if not whole:
                truncated = _TRUNCATED
        try:
            known = self._contexts.get(context)
        except TypeError:  # unhashable: set on the raw variable, around the helpers
            known = None
        if known is None:
            ctx, route, whole = self._context(context)
            if not whole:
                truncated = _TRUNCATED
        else:
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

    def _middle(self, levelno: int, name: str) -> tuple[bytes, bool]:
        """The level and logger part, and whether the name was kept whole.

        A cut name is not cached: the cache would hold the huge original.
        """
        level = _clean(str(logging.getLevelName(levelno)))
        cut = _cut(name, MAX_NAME_BYTES) if len(name) > MAX_NAME_BYTES // 6 else None
        middle = (
            f',"level":{encode_basestring(level)},"levelno":{levelno:d}'
            f',"logger":{encode_basestring(_clean(name) if cut is None else cut)}'
        ).encode()
        if cut is None:
            if len(self._middles) >= _CACHE_LIMIT:
                self._middles.clear()
            self._middles[(levelno, name)] = middle
        return middle, cut is None

    def _context(self, context: Any) -> tuple[bytes, str | None, bool]:
        """The JSON of ``context``, the context to route by, and whether its
        text was kept whole.

        The helpers validate contexts when they are set, but the variable
        itself is public: a value set around them (not a str, too long,
        reserved) still reaches the global stream, under its text, cut to
        :data:`MAX_NAME_BYTES`; it never names a key or a channel.
        """
        cut = None
        route: str | None = None
        if context is None:
            ctx = b',"context":null'
        else:
            with contextlib.suppress(ValueError):
                route = validate_context(context)
            text = str(context)
            if len(text) > MAX_NAME_BYTES // 6:
                cut = _cut(text, MAX_NAME_BYTES)
            shown = _clean(text) if cut is None else cut
            ctx = f',"context":{encode_basestring(shown)}'.encode()
        # Only str and None are cached: 1, 1.0 and True are equal keys.
        if cut is None and (context.__class__ is str or context is None):
            if len(self._contexts) >= _CACHE_LIMIT:
                self._contexts.clear()
            self._contexts[context] = (ctx, route)
        return ctx, route, cut is None
