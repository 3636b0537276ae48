"""Routing keys of the AMQP sink, and the binding patterns that select them.

A record's routing key is ``<context word>.<LEVEL>.<logger name>``:

- the context (or ``global`` for a record without one) is exactly one
  topic word.  It is encoded as in channel names (:mod:`.naming`: anything
  outside ``A-Za-z0-9._-@:`` becomes ``%XX``, ``%`` included), and then its
  dots become ``%2E``, so ``User.alice`` routes as ``User%2Ealice``.  The
  encoding is reversible (:func:`decode_word`) and no word holds ``*``,
  ``#`` or a dot;
- the level name (``ERROR``), one word, encoded the same way;
- the logger's dotted name, its words as they are (``django.request`` is
  two words, so that ``django.#`` selects a logger and its children), each
  word encoded the same way but for its dots.

Nobody has to encode by hand: :func:`binding_key` builds patterns from
plain values.  AMQP caps a routing key at 255 bytes: a longer logger name
is cut at a word boundary (its record still carries the full name).
"""

from __future__ import annotations

from urllib.parse import unquote

from .naming import encode_context

__all__ = ["binding_key", "decode_word", "encode_word", "routing_key"]

GLOBAL_WORD = "global"
MAX_KEY_BYTES = 255


def encode_word(value: str) -> str:
    """``value`` as one topic word: no dot, ``*``, ``#`` or space."""
    return encode_context(value).replace(".", "%2E")


def decode_word(word: str) -> str:
    """Invert :func:`encode_word`."""
    return unquote(word, encoding="utf-8", errors="surrogatepass")


def _logger_words(name: str) -> str:
    return ".".join(encode_word(part) for part in name.split("."))


def routing_key(context: str | None, level: str, logger: str) -> str:
    """The routing key of one record."""
    head = f"{GLOBAL_WORD if context is None else encode_word(context)}.{encode_word(level)}"
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
    level_word = "*" if level is None else encode_word(str(level).upper())
    tail = "#" if not logger else f"{_logger_words(logger)}.#"
    return f"{word}.{level_word}.{tail}"
