"""Unit tests of redis_logstream.naming: channel and stream names of contexts."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from redis_logstream.naming import SAFE_CHARACTERS, Names, decode_context, encode_context

GLOB_CHARACTERS = "*?[]\\"

#: Any text, lone surrogates included (undecodable bytes smuggled in by
#: surrogateescape reach contexts too).
characters = st.one_of(st.characters(), st.characters(categories=("Cs",)))
contexts = st.text(characters, min_size=1, max_size=128)

ENCODED = re.compile(r"(?:[A-Za-z0-9._\-@:]|%[0-9A-F]{2})+")


def _suffix(names: Names, channel: str) -> str:
    prefix = names.channel_prefix + ":"
    assert channel.startswith(prefix)
    return channel[len(prefix) :]


# -- defaults ----------------------------------------------------------------


def test_default_channel_of_a_context_is_logs_colon_context():
    assert Names().channel("User.alice") == "logs:User.alice"


def test_default_global_channel_is_logs_global():
    names = Names()
    assert names.channel(None) == "logs:global"
    assert names.global_channel_name == "logs:global"


def test_default_stream_of_a_context_is_stream_colon_channel():
    assert Names().stream("User.alice") == "stream:logs:User.alice"


def test_default_global_stream_is_stream_logs_global():
    names = Names()
    assert names.stream(None) == "stream:logs:global"
    assert names.global_stream == "stream:logs:global"


def test_everyday_names_pass_through_unchanged():
    for context in ("User.alice", "job_1b4e28ba2fa1", "Member.x@y.z", "a-b_c.d:e", "ABC123"):
        assert encode_context(context) == context
        assert Names().channel(context) == f"logs:{context}"


# -- custom prefixes ---------------------------------------------------------


def test_custom_channel_prefix_names_channels_and_streams():
    names = Names(channel_prefix="site1")
    assert names.channel("User.alice") == "site1:User.alice"
    assert names.channel(None) == "site1:global"
    assert names.stream("User.alice") == "stream:site1:User.alice"
    assert names.global_stream == "stream:site1:global"


def test_custom_stream_prefix_is_prepended_to_the_channel():
    names = Names(stream_prefix="history/")
    assert names.stream("User.alice") == "history/logs:User.alice"
    assert names.stream(None) == "history/logs:global"
    assert names.channel("User.alice") == "logs:User.alice"


def test_custom_global_channel_names_the_firehose():
    names = Names(channel_prefix="app", global_channel="all", stream_prefix="s:")
    assert names.channel(None) == "app:all"
    assert names.global_channel_name == "app:all"
    assert names.global_stream == "s:app:all"


# -- encoding of unsafe characters -------------------------------------------


@pytest.mark.parametrize(
    ("context", "encoded"),
    [
        ("a b", "a%20b"),
        ("a*", "a%2A"),
        ("a?", "a%3F"),
        ("[a]", "%5Ba%5D"),
        ("a\\b", "a%5Cb"),
        ("{a}", "%7Ba%7D"),
        ("100%", "100%25"),
        ("%41", "%2541"),
        ("a\nb", "a%0Ab"),
        ("a\tb", "a%09b"),
        ("a\x00b", "a%00b"),
        ("a\x7fb", "a%7Fb"),
        ("é", "%C3%A9"),
        ("User.jösé", "User.j%C3%B6s%C3%A9"),
        ("🎉", "%F0%9F%8E%89"),
        ("\u00a0", "%C2%A0"),
        ("\udcff", "%ED%B3%BF"),
        ("a/b", "a%2Fb"),
        ("a\"b'", "a%22b%27"),
    ],
)
def test_unsafe_characters_are_percent_encoded_and_decode_back(context, encoded):
    assert encode_context(context) == encoded
    assert decode_context(encoded) == context
    assert Names().channel(context) == f"logs:{encoded}"
    assert Names().stream(context) == f"stream:logs:{encoded}"


def test_percent_encoding_uses_upper_case_hex():
    assert encode_context("\xff") == "%C3%BF"


def test_safe_characters_are_exactly_letters_digits_and_dot_underscore_dash_at_colon():
    for code in range(128):
        char = chr(code)
        expected = char.isascii() and (char.isalnum() or char in "._-@:")
        assert (char in SAFE_CHARACTERS) == expected, repr(char)
        assert (encode_context(char) == char) == expected, repr(char)


def test_the_reserved_global_name_never_names_the_global_channel():
    names = Names()
    assert names.channel("global") != names.channel(None)
    assert names.stream("global") != names.global_stream
    assert decode_context(_suffix(names, names.channel("global"))) == "global"


def test_a_context_named_like_a_custom_global_channel_does_not_collide_with_it():
    names = Names(global_channel="all")
    assert names.channel(None) == "logs:all"
    assert names.channel("all") != "logs:all"
    assert names.stream("all") != names.global_stream
    assert decode_context(_suffix(names, names.channel("all"))) == "all"
    # ... nor with the contexts whose plain form looks like the escape.
    for other in ("%61ll", "%2561ll", "a ll", "All", "all2"):
        assert names.channel(other) != names.channel("all")


# -- properties --------------------------------------------------------------


@given(contexts)
def test_channels_hold_no_glob_whitespace_control_or_brace_characters(context):
    channel = Names().channel(context)
    suffix = _suffix(Names(), channel)
    assert ENCODED.fullmatch(suffix), suffix
    assert not any(c in GLOB_CHARACTERS for c in channel)
    assert not any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in channel)
    assert "{" not in channel and "}" not in channel
    assert channel.isascii()


@given(contexts)
def test_decode_context_inverts_encode_context(context):
    assert decode_context(encode_context(context)) == context


@given(contexts)
def test_the_channel_round_trips_to_its_context(context):
    names = Names()
    assert decode_context(_suffix(names, names.channel(context))) == context


@given(contexts, contexts)
def test_distinct_contexts_get_distinct_channels_and_streams(a, b):
    names = Names()
    if a != b:
        assert names.channel(a) != names.channel(b)
        assert names.stream(a) != names.stream(b)
    else:
        assert names.channel(a) == names.channel(b)


@given(contexts)
def test_no_context_gets_the_global_channel(context):
    names = Names()
    assert names.channel(context) != names.channel(None)
    assert names.stream(context) != names.global_stream


@given(st.one_of(contexts, st.sampled_from(["all", "%61ll", "All", "all "])))
def test_with_a_custom_global_channel_no_context_collides_with_it_and_all_round_trip(context):
    names = Names(global_channel="all")
    channel = names.channel(context)
    assert channel != names.channel(None)
    assert decode_context(_suffix(names, channel)) == context
    assert ENCODED.fullmatch(_suffix(names, channel))


@given(contexts, contexts)
def test_with_a_custom_global_channel_distinct_contexts_get_distinct_channels(a, b):
    names = Names(global_channel="all")
    assert (names.channel(a) == names.channel(b)) == (a == b)
    assert (names.channel("all") == names.channel(a)) == (a == "all")
