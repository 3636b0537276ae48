"""AMQP routing keys and binding patterns, without a broker: every key fits
AMQP's 255 bytes, and a context's binding selects its records."""

from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from redis_logstream.amqp import binding_key, decode_word, routing_key
from redis_logstream.amqp.routing import (
    MAX_CONTEXT_WORD,
    MAX_KEY_BYTES,
    MAX_LEVEL_WORD,
    SHORTENED,
    encode_word,
)


@pytest.mark.parametrize(
    "value", ["User.alice", "a*b#c", "50%.off", "üñí cödé", "global", "x" * 128, "a..b"]
)
def test_a_context_is_one_reversible_word(value):
    word = encode_word(value)
    assert "." not in word and "*" not in word and "#" not in word and " " not in word
    assert decode_word(word) == value


def test_routing_keys_stay_within_255_bytes():
    key = routing_key("User.alice", "INFO", ".".join(["segment"] * 60))
    assert len(key.encode()) <= MAX_KEY_BYTES
    assert key.startswith("User%2Ealice.INFO.segment.segment")


def test_binding_keys_from_plain_values():
    assert binding_key() == "*.*.#"
    assert binding_key(level="error") == "*.ERROR.#"
    assert binding_key(context="User.alice") == "User%2Ealice.*.#"
    assert binding_key(logger="django.request") == "*.*.django.request.#"
    assert binding_key(context="global", level="WARNING") == "global.WARNING.#"


#: A legal username of 28 CJK letters: 259 bytes once encoded.
CJK_USER = "User." + "\u6f22" * 28
#: Any text, lone surrogates included, as contexts may hold.
_characters = st.one_of(st.characters(), st.characters(categories=("Cs",)))
contexts = st.text(_characters, min_size=1, max_size=128).filter(lambda c: c != "global")


def topic_matches(pattern: str, key: str) -> bool:
    """AMQP topic matching: ``*`` is one word, ``#`` zero or more."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and p[0] in ("*", k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))


@given(contexts, st.text(_characters, max_size=300), st.text(_characters, max_size=600))
def test_every_routing_key_fits_in_255_bytes_and_its_context_binding_matches_it(
    context, level, logger
):
    level = level.upper()
    assume(level.upper() == level)
    key = routing_key(context, level, logger)
    assert len(key.encode()) <= MAX_KEY_BYTES
    assert topic_matches(binding_key(context=context), key)
    assert topic_matches(binding_key(context=context, level=level), key)
    assert not topic_matches(binding_key(context=context + "x"), key)


@given(contexts, contexts)
def test_two_contexts_never_share_a_word(first, second):
    assume(first != second)
    assert encode_word(first) != encode_word(second)


@given(contexts)
def test_a_long_context_word_is_a_decodable_prefix_and_a_digest(context):
    full = encode_word(context, limit=10**6)
    word = encode_word(context)
    if len(full) <= MAX_CONTEXT_WORD:
        assert word == full and SHORTENED not in word
        assert decode_word(word) == context
    else:
        assert len(word) <= MAX_CONTEXT_WORD and word.count(SHORTENED) == 1
        prefix, _, digest = decode_word(word).rpartition(SHORTENED)
        assert context.startswith(prefix) and len(prefix) >= 10
        assert len(digest) == 16 and int(digest, 16) >= 0


def test_the_cjk_username_of_the_report_gets_a_stable_short_word():
    word = encode_word(CJK_USER)
    assert len(encode_word(CJK_USER, limit=10**6)) == 259
    assert word.startswith("User%2E%E6%BC%A2") and SHORTENED in word
    assert word == encode_word("User." + "\u6f22" * 28)  # no salt, no per-process state
    assert len(encode_word("L" * 100, MAX_LEVEL_WORD)) == MAX_LEVEL_WORD
