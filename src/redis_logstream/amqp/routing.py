"""Routing keys of the AMQP sink, and the binding patterns that select them.

A record's routing key is ``<context word>.<LEVEL>.<logger name>``:

- the context (or ``global`` for a record without one) is exactly one
  topic word.  It is encoded as in channel names (:mod:`.naming`: anything
  outside ``A-Za-z0-9._-@:`` becomes ``%XX``, ``%`` included), and then its
  dots become ``%2E``, so ``User.alice`` routes as ``User%2Ealice``.  The
  encoding is reversible (:func:`decode_word`) but for the long words
  shortened below, and no word holds ``*``, ``#`` or a dot;
- the level name (``ERROR``), one word, encoded the same way;
- the logger's dotted name, its words as they are (``django.request`` is
  two words, so that ``django.#`` selects a logger and its children), each
  word encoded the same way but for its dots.

Nobody has to encode by hand: :func:`binding_key` builds patterns from
plain values.  AMQP caps a routing key at 255 bytes, and a context of 128
characters can take 1,536 once encoded, so every part has a budget:

- a context word longer than :data:`MAX_CONTEXT_WORD` bytes (a level word
  longer than :data:`MAX_LEVEL_WORD`) is shortened to the longest prefix of
  whole encoded characters that fits, then ``~`` and the first 16 hex
  digits of the SHA-256 of the full word.  ``~`` is always encoded
  (``%7E``) in a full word, so a shortened word never equals another
  context's word; the word depends on the context alone, which is what
  lets :func:`binding_key` build the same one;
- the logger's words (each shortened like a context word when longer)
  fill what is left and are cut at a word boundary (the record still
  carries the full name).
"""

from __future__ import annotations

import hashlib
from urllib.parse import unquote

from redis_logstream.naming import encode_context

__all__ = ["binding_key", "decode_word", "encode_word", "routing_key"]

GLOBAL_WORD = "global"
MAX_KEY_BYTES = 255
#: The most bytes a context word (a level word) takes; together with their
#: two dots they leave the logger at least 29 bytes.
MAX_CONTEXT_WORD = 192
MAX_LEVEL_WORD = 32
#: Marks a shortened word; never part of a full one (``~`` is encoded).
SHORTENED = "~"
_DIGEST_HEX = 16


def encode_word(value: str, limit: int = MAX_CONTEXT_WORD) -> str:
    """``value`` as one topic word of at most ``limit`` bytes: no dot,
    ``*``, ``#`` or space (all ASCII, so bytes and characters agree)."""
    word = encode_context(value).replace(".", "%2E")
    if len(word) <= limit:
        return word
    digest = hashlib.sha256(word.encode()).hexdigest()[:_DIGEST_HEX]
    room = limit - len(SHORTENED) - _DIGEST_HEX
    prefix = []
    for char in value:  # whole characters, so that the prefix still decodes
        part = encode_word(char)
        room -= len(part)
        if room < 0:
            break
        prefix.append(part)
    return f"{''.join(prefix)}{SHORTENED}{digest}"


def decode_word(word: str) -> str:
    """Invert :func:`encode_word`.  A shortened word cannot be inverted:
    it decodes to its prefix followed by ``~`` and its digest (the record's
    ``context`` field always carries the full value)."""
    return unquote(word, encoding="utf-8", errors="surrogatepass")


def _logger_words(name: str) -> str:
    return ".".join(encode_word(part) for part in name.split("."))


def routing_key(context: str | None, level: str, logger: str) -> str:
    """The routing key of one record."""
    word = GLOBAL_WORD if context is None else encode_word(context)
    head = f"{word}.{encode_word(level, MAX_LEVEL_WORD)}"
    tail = _logger_words(logger or "root")
    key = f"{head}.{tail}"
    while len(key.encode()) > MAX_KEY_BYTES and "." in tail:
        tail = tail.rpartition(".")[0]
        key = f"{head}.{tail}"
    return key if len(key.encode()) <= MAX_KEY_BYTES else head


def binding_key(
    context: str | None = None, level: str | None = None, logger: str | None = None
) -> str:
    """A topic pattern for records of ``context`` (``"global"``: those
    without one), at ``level`` (a name: ``"ERROR"``), of ``logger`` and its
    children; what is not given matches anything.

    ``binding_key(level="ERROR")`` is ``*.ERROR.#``;
    ``binding_key(context="User.alice")`` is ``User%2Ealice.*.#``.
    """
    if context is None:
        word = "*"
    elif context == GLOBAL_WORD:
        word = GLOBAL_WORD
    else:
        word = encode_word(context)
    level_word = "*" if level is None else encode_word(str(level).upper(), MAX_LEVEL_WORD)
    tail = "#" if not logger else f"{_logger_words(logger)}.#"
    return f"{word}.{level_word}.{tail}"
