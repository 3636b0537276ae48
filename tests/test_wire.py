"""Unit tests of redis_logstream.shipping.wire: the JSON a record becomes on the wire.

The encoder takes the handler's ``(message, levelno, created, logger, context)``
tuple and returns ``(route, json_bytes)``; no Redis involved.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from redis_logstream.shipping.wire import MAX_NAME_BYTES, Encoder

KEYS = {"message", "level", "levelno", "timestamp", "logger", "context", "pod", "pid"}
CUT = re.compile(r" \[\.\.\. (\d+) bytes cut\]\Z")


def encode(
    message: str = "hello",
    levelno: int = logging.INFO,
    created: float = 1764028888.123456,
    logger: str = "app.views",
    context: object = None,
    *,
    encoder: Encoder | None = None,
) -> tuple[str | None, bytes, dict]:
    route, data = (encoder or Encoder())((message, levelno, created, logger, context))
    assert isinstance(data, bytes)
    return route, data, json.loads(data.decode("utf-8"))


# -- shape -------------------------------------------------------------------


def test_encoder_returns_route_and_json_bytes_with_exactly_the_wire_keys():
    route, _, record = encode("hello", logging.WARNING, 1.5, "app.views", "User.alice")
    assert route == "User.alice"
    assert set(record) == KEYS
    assert record["message"] == "hello"
    assert record["level"] == "WARNING"
    assert record["levelno"] == logging.WARNING
    assert record["timestamp"] == 1.5
    assert record["logger"] == "app.views"
    assert record["context"] == "User.alice"
    assert record["pid"] == os.getpid()


def test_encoder_writes_null_context_and_routes_none_without_a_context():
    route, _, record = encode(context=None)
    assert route is None
    assert record["context"] is None
    assert set(record) == KEYS


@pytest.mark.parametrize(
    ("levelno", "level"),
    [
        (logging.DEBUG, "DEBUG"),
        (logging.INFO, "INFO"),
        (logging.ERROR, "ERROR"),
        (logging.CRITICAL, "CRITICAL"),
        (25, "Level 25"),
    ],
)
def test_encoder_names_the_level(levelno, level):
    _, _, record = encode(levelno=levelno)
    assert record["level"] == level
    assert record["levelno"] == levelno
    assert isinstance(record["levelno"], int)


def test_encoder_keeps_level_and_logger_apart_for_each_record_it_caches():
    encoder = Encoder()
    first = encode("a", logging.INFO, 1.0, "one", None, encoder=encoder)[2]
    second = encode("b", logging.ERROR, 2.0, "two", "User.bob", encoder=encoder)[2]
    third = encode("c", logging.INFO, 3.0, "one", "User.alice", encoder=encoder)[2]
    assert (first["level"], first["logger"], first["context"]) == ("INFO", "one", None)
    assert (second["level"], second["logger"], second["context"]) == ("ERROR", "two", "User.bob")
    assert (third["level"], third["logger"], third["context"]) == ("INFO", "one", "User.alice")


# -- timestamp ---------------------------------------------------------------


@pytest.mark.parametrize(
    "created", [1764028888.123456, 0.1, 1e-7, 1.0, 1700000000.0000002, 2**53 + 0.0]
)
def test_timestamp_round_trips_exactly(created):
    _, _, record = encode(created=created)
    assert record["timestamp"] == created
    assert isinstance(record["timestamp"], float)


@given(st.floats(min_value=0, max_value=4e9, allow_nan=False, allow_infinity=False))
def test_any_timestamp_round_trips_exactly(created):
    _, _, record = encode(created=created)
    assert record["timestamp"] == created


@given(st.floats(min_value=2**30, max_value=1e15, exclude_max=True))
def test_timestamps_of_this_era_round_trip_exactly_through_the_short_fixed_form(created):
    _, data, record = encode(created=created)
    assert record["timestamp"] == created
    assert re.search(rb'"timestamp":\d+\.\d{7},', data)


@pytest.mark.parametrize("created", [float("nan"), float("inf"), float("-inf")])
def test_a_timestamp_that_is_not_a_number_is_null_and_the_json_stays_valid(created):
    _, _, record = encode(created=created)
    assert record["timestamp"] is None


def test_integer_created_is_encoded_as_a_number():
    _, data, record = encode(created=1764028888)
    assert record["timestamp"] == 1764028888
    assert isinstance(record["timestamp"], (int, float))
    assert b'"timestamp":"' not in data


# -- pod and pid -------------------------------------------------------------


def test_pid_is_the_current_process_id():
    assert encode()[2]["pid"] == os.getpid()


def test_pod_is_the_hostname_environment_variable_when_set(monkeypatch):
    monkeypatch.setenv("HOSTNAME", "web-7")
    assert encode(encoder=Encoder())[2]["pod"] == "web-7"


def test_pod_with_json_special_characters_stays_valid_json(monkeypatch):
    monkeypatch.setenv("HOSTNAME", 'pod "1"\\x')
    assert encode(encoder=Encoder())[2]["pod"] == 'pod "1"\\x'


def test_pod_falls_back_to_the_host_name(monkeypatch):
    monkeypatch.delenv("HOSTNAME", raising=False)
    assert encode(encoder=Encoder())[2]["pod"] == socket.gethostname()


def test_after_fork_refreshes_the_pid(monkeypatch):
    encoder = Encoder()
    assert encode(encoder=encoder)[2]["pid"] == os.getpid()
    monkeypatch.setattr(os, "getpid", lambda: 424242)
    assert encode(encoder=encoder)[2]["pid"] != 424242  # read once per process...
    encoder.after_fork()
    assert encode(encoder=encoder)[2]["pid"] == 424242  # ...and again after fork


# -- routing -----------------------------------------------------------------


def test_a_valid_context_is_the_route():
    assert encode(context="User.alice")[0] == "User.alice"
    assert encode(context="a b*?")[0] == "a b*?"  # encoded later, in key names only


@pytest.mark.parametrize(
    ("context", "text"),
    [
        pytest.param(42, "42", id="int"),
        pytest.param("global", "global", id="reserved"),
        pytest.param("x" * 200, "x" * 200, id="200-chars"),
        pytest.param("", "", id="empty"),
    ],
)
def test_an_invalid_context_routes_to_global_only_but_keeps_its_text(context, text):
    route, _, record = encode(context=context)
    assert route is None
    assert record["context"] == text


def test_an_unhashable_context_routes_to_global_only_but_keeps_its_text():
    # The variable is public: a legacy caller may store any object in it.
    route, _, record = encode(context=["User", "alice"])
    assert route is None
    assert record["context"] == "['User', 'alice']"


def test_contexts_that_compare_equal_keep_their_own_text():
    encoder = Encoder()
    assert encode(context=1, encoder=encoder)[2]["context"] == "1"
    assert encode(context=True, encoder=encoder)[2]["context"] == "True"
    assert encode(context=1.0, encoder=encoder)[2]["context"] == "1.0"


def test_a_context_with_a_lone_surrogate_is_kept_as_visible_text():
    route, data, record = encode(context="User.b\udcffd")
    data.decode("utf-8")
    assert route == "User.b\udcffd"
    assert record["context"] == "User.b\\udcffd"


# -- awkward text ------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        'say "hi"',
        "back\\slash \\n not a newline",
        "line1\nline2\r\nline3",
        "tab\there",
        "nul\x00bell\x07esc\x1bdel\x7f",
        "\u2028\u2029 separators",
        "emoji 🎉👩‍💻 and ünïcødé",
        "</script><script>alert(1)</script>",
        "",
    ],
)
def test_awkward_messages_encode_to_valid_utf8_json_that_decodes_back(message):
    _, data, record = encode(message)
    data.decode("utf-8", "strict")
    assert record["message"] == message
    assert set(record) == KEYS


@pytest.mark.parametrize(
    ("message", "visible"),
    [
        ("bad \udcff byte", "bad \\udcff byte"),
        ("\udc80", "\\udc80"),
        ("mixed é\udce9 and 🎉", "mixed é\\udce9 and 🎉"),
    ],
)
def test_lone_surrogates_in_a_message_become_visible_text(message, visible):
    _, data, record = encode(message)
    data.decode("utf-8", "strict")
    assert record["message"] == visible
    record["message"].encode("utf-8")  # a consumer can print or re-encode it


def test_lone_surrogates_in_a_logger_name_become_visible_text():
    _, data, record = encode(logger="app.\udcff")
    data.decode("utf-8", "strict")
    assert record["logger"] == "app.\\udcff"


@given(st.text(), st.text(max_size=40))
def test_any_message_and_logger_round_trip(message, logger):
    _, data, record = encode(message, logger=logger)
    data.decode("utf-8", "strict")
    assert record["message"] == message
    assert record["logger"] == logger


# -- size limit --------------------------------------------------------------


def _cut_count(message: str) -> int:
    match = CUT.search(message)
    assert match, f"no cut marker at the end of {message[-60:]!r}"
    return int(match.group(1))


def test_a_message_over_the_limit_is_cut_marked_and_fits():
    limit = 1024
    original = "x" * 5000
    _, _, record = encode(original, encoder=Encoder(limit))
    assert record["truncated"] is True
    assert set(record) == KEYS | {"truncated"}
    assert len(record["message"].encode("utf-8")) <= limit
    kept = CUT.sub("", record["message"])
    assert original.startswith(kept)
    assert len(kept) >= limit - 40  # cut near the limit, not far below it
    assert _cut_count(record["message"]) > 0


def test_the_default_limit_is_64_kib():
    _, _, record = encode("y" * 70000)
    assert record["truncated"] is True
    assert len(record["message"].encode("utf-8")) <= 65536


def test_a_message_just_at_the_limit_is_not_cut():
    limit = 1024
    _, _, record = encode("x" * limit, encoder=Encoder(limit))
    assert record["message"] == "x" * limit
    assert "truncated" not in record


def test_a_multibyte_message_just_at_the_limit_is_not_cut():
    limit = 1024
    message = "é" * (limit // 2)  # two bytes each: exactly the limit
    _, _, record = encode(message, encoder=Encoder(limit))
    assert record["message"] == message
    assert "truncated" not in record


def test_a_message_one_byte_over_the_limit_is_cut():
    limit = 1024
    _, _, record = encode("x" * (limit + 1), encoder=Encoder(limit))
    assert record["truncated"] is True
    assert len(record["message"].encode("utf-8")) <= limit


@pytest.mark.parametrize("char", ["é", "€", "🎉"])
def test_a_multibyte_message_is_cut_on_a_character_boundary(char):
    limit = 1000
    original = ("a" + char) * 2000
    _, data, record = encode(original, encoder=Encoder(limit))
    data.decode("utf-8", "strict")
    assert record["truncated"] is True
    assert len(record["message"].encode("utf-8")) <= limit
    kept = CUT.sub("", record["message"])
    assert original.startswith(kept)
    assert "\ufffd" not in kept


@pytest.mark.parametrize(
    ("original", "limit"),
    [
        ("x" * 1025, 1024),
        ("x" * 5000, 1024),
        ("é" * 3000, 1001),
        ("🎉" * 70000, 65536),
    ],
)
def test_the_cut_marker_counts_the_bytes_that_were_cut(original, limit):
    _, _, record = encode(original, encoder=Encoder(limit))
    kept = CUT.sub("", record["message"])
    assert original.startswith(kept)
    cut = len(original.encode("utf-8")) - len(kept.encode("utf-8"))
    assert _cut_count(record["message"]) == cut


def test_a_message_of_lone_surrogates_is_cut_to_the_limit():
    limit = 256
    _, _, record = encode("\udcff" * 64, encoder=Encoder(limit))  # 384 bytes once visible
    assert record.get("truncated") is True
    assert len(record["message"].encode("utf-8")) <= limit


@given(
    st.text(min_size=0, max_size=3000),
    st.integers(min_value=256, max_value=2048),
)
def test_any_message_fits_the_limit_and_is_marked_only_when_cut(message, limit):
    _, data, record = encode(message, encoder=Encoder(limit))
    data.decode("utf-8", "strict")
    size = len(message.encode("utf-8"))
    if size <= limit:
        assert record["message"] == message
        assert "truncated" not in record
    else:
        assert record["truncated"] is True
        assert len(record["message"].encode("utf-8")) <= limit
        assert message.startswith(CUT.sub("", record["message"]))


# -- logger names and raw contexts ---------------------------------------------


def test_a_huge_logger_name_is_cut_like_a_message_and_marked():
    original = "shop." + "x" * (5 * 2**20)
    _, data, record = encode("short", logger=original)
    assert len(data) < 2 * MAX_NAME_BYTES
    assert record["truncated"] is True
    assert record["message"] == "short"
    assert len(record["logger"].encode("utf-8")) <= MAX_NAME_BYTES
    kept = CUT.sub("", record["logger"])
    assert original.startswith(kept) and len(kept) >= MAX_NAME_BYTES - 40
    assert _cut_count(record["logger"]) == len(original) - len(kept)


def test_a_huge_raw_context_is_cut_marked_and_names_no_stream():
    # Set on the variable itself, around the helpers' checks.
    original = "User." + "é" * (5 * 2**20)
    route, data, record = encode(context=original)
    assert route is None  # the global stream only: no key or channel of that size
    assert len(data) < 2 * MAX_NAME_BYTES
    assert record["truncated"] is True
    assert len(record["context"].encode("utf-8")) <= MAX_NAME_BYTES
    assert original.startswith(CUT.sub("", record["context"]))


def test_a_cut_name_and_a_cut_message_carry_one_marker():
    _, data, record = encode(
        "m" * 5000, logger="l" * 5000, context="c" * 5000, encoder=Encoder(1024)
    )
    assert data.count(b'"truncated"') == 1
    assert all(CUT.search(record[key]) for key in ("message", "logger", "context"))


def test_names_up_to_the_bound_are_kept_whole_and_unmarked():
    logger, context = "a" * MAX_NAME_BYTES, "é" * (MAX_NAME_BYTES // 2)
    encoder = Encoder()
    for _ in range(2):  # computed, then from the cache
        _, _, record = encode(logger=logger, context=context, encoder=encoder)
        assert (record["logger"], record["context"]) == (logger, context)
        assert "truncated" not in record


def test_a_cut_name_is_marked_on_every_record_not_only_the_first():
    encoder = Encoder()
    for _ in range(3):
        assert encode(logger="x" * 5000, encoder=encoder)[2]["truncated"] is True
        assert encode(context="y" * 5000, encoder=encoder)[2]["truncated"] is True
    assert "truncated" not in encode(encoder=encoder)[2]


@given(st.text(min_size=0, max_size=3000), st.text(min_size=0, max_size=3000))
def test_any_logger_and_context_fit_the_bound_and_are_marked_only_when_cut(logger, context):
    _, data, record = encode(logger=logger, context=context)
    data.decode("utf-8", "strict")
    cut = False
    for key, original in (("logger", logger), ("context", context)):
        if len(original.encode("utf-8")) <= MAX_NAME_BYTES:
            assert record[key] == original
        else:
            cut = True
            assert len(record[key].encode("utf-8")) <= MAX_NAME_BYTES
            assert original.startswith(CUT.sub("", record[key]))
    assert record.get("truncated", False) is cut
