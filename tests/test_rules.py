"""DESIGN.md's rules of behaviour, each against a real redis-server."""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
import redis

from redis_logstream import log_context, user_id_context
from support.helpers import Handlers, entries, fresh_logger, messages, wait_for

GLOBAL = "stream:logs:global"


# -- routing ---------------------------------------------------------------


def test_a_record_with_a_context_goes_to_its_stream_and_the_global_one(
    handlers: Handlers, redis_url: str, redis_client: redis.Redis
) -> None:
    log = fresh_logger(handlers(url=redis_url))
    with log_context("User.alice"):
        log.info("mine")
    log.info("nobody's")
    assert log.handlers[0].flush(5)
    assert messages(redis_client, "stream:logs:User.alice") == ["mine"]
    assert messages(redis_client, GLOBAL) == ["mine", "nobody's"]
    assert set(redis_client.keys("*")) == {GLOBAL.encode(), b"stream:logs:User.alice"}


def test_live_listeners_get_the_same_bytes_on_context_and_global_channels(
    handlers: Handlers, redis_url: str, redis_client: redis.Redis
) -> None:
    pubsub = redis_client.pubsub()
    pubsub.psubscribe("logs:*")
    wait_for(lambda: pubsub.get_message(timeout=0.1))  # the subscribe confirmation
    log = fresh_logger(handlers(url=redis_url))
    with log_context("job_42"):
        log.warning("progress 50%")
    log.info("plain")
    assert log.handlers[0].flush(5)
    got: list[tuple[bytes, bytes]] = []

    def collect() -> bool:
        message = pubsub.get_message(timeout=0.1)
        if message and message["type"] == "pmessage":
            got.append((message["channel"], message["data"]))
        return len(got) >= 3

    wait_for(collect)
    pubsub.close()
    channels = [channel for channel, _ in got]
    assert sorted(channels) == [b"logs:global", b"logs:global", b"logs:job_42"]
    assert got[0][1] == got[1][1]  # one encoding, sent to both channels
    stored = redis_client.xrange("stream:logs:job_42")[0][1][b"data"]
    assert stored == got[0][1]


def test_no_channel_or_stream_is_invented_per_record(
    handlers: Handlers, redis_url: str, redis_client: redis.Redis
) -> None:
    log = fresh_logger(handlers(url=redis_url))
    with log_context("User.alice"):
        for i in range(300):
            log.info("record %d", i, extra={"request_id": i})
    log.handlers[0].flush(5)
    assert len(redis_client.keys("*")) == 2


def test_unsafe_context_names_are_encoded_into_one_safe_key(
    handlers: Handlers, redis_url: str, redis_client: redis.Redis
) -> None:
    log = fresh_logger(handlers(url=redis_url))
    for context in ("a*b", "a?b", "a b", "a%2Ab", "Ålesund[1]"):
        with log_context(context):
            log.info(context)
    log.handlers[0].flush(5)
    keys = sorted(k.decode() for k in redis_client.keys("stream:logs:*") if k != GLOBAL.encode())
    assert keys == [
        "stream:logs:%C3%85lesund%5B1%5D",
        "stream:logs:a%20b",
        "stream:logs:a%252Ab",
        "stream:logs:a%2Ab",
        "stream:logs:a%3Fb",
    ]
    assert messages(redis_client, "stream:logs:a%2Ab") == ["a*b"]
    assert entries(redis_client, "stream:logs:a%2Ab")[0]["context"] == "a*b"


# -- one round trip per batch, no PING ----------------------------------------


def test_each_batch_is_one_round_trip_without_ping(
    handlers: Handlers, redis_url: str, redis_client: redis.Redis
) -> None:
    handler = handlers(url=redis_url, batch_size=200, flush_interval=0.5)
    log = fresh_logger(handler)
    with log_context("User.alice"):
        for i in range(200):
            log.info("r%d", i)
    assert handler.flush(5)
    redis_client.config_resetstat()
    with log_context("User.alice"):
        for i in range(200):
            log.info("r%d", i)
    assert handler.flush(5)
    stats = redis_client.info("commandstats")
    # 200 records = 2 chunks of the batch script, sent in one write; no PING.
    assert stats["cmdstat_evalsha"]["calls"] == 2
    assert "cmdstat_ping" not in stats
    assert handler.stats()["batches"] == 2


def test_trimming_keeps_about_stream_maxlen_entries_in_both_streams(
    handlers: Handlers, redis_url: str, redis_client: redis.Redis
) -> None:
    log = fresh_logger(handlers(url=redis_url, stream_maxlen=100))
    with log_context("User.alice"):
        for i in range(3000):
            log.info("r%d", i)
    assert log.handlers[0].flush(10)
    for key in (GLOBAL, "stream:logs:User.alice"):
        length = redis_client.xlen(key)
        assert 100 <= length < 400, (key, length)  # "~": whole nodes of 100 entries
        assert messages(redis_client, key)[-1] == "r2999"


def test_both_kinds_of_stream_get_their_ttl(
    handlers: Handlers, redis_url: str, redis_client: redis.Redis
) -> None:
    log = fresh_logger(handlers(url=redis_url, context_ttl=120, global_ttl=7200))
    with log_context("User.alice"):
        log.info("x")
    assert log.handlers[0].flush(5)
    assert 110 <= redis_client.ttl("stream:logs:User.alice") <= 120
    assert 7100 <= redis_client.ttl(GLOBAL) <= 7200


def test_ttl_none_leaves_streams_without_expiry(
    handlers: Handlers, redis_url: str, redis_client: redis.Redis
) -> None:
    log = fresh_logger(handlers(url=redis_url, context_ttl=None, global_ttl=None))
    with log_context("User.alice"):
        log.info("x")
    assert log.handlers[0].flush(5)
    assert redis_client.ttl("stream:logs:User.alice") == -1
    assert redis_client.ttl(GLOBAL) == -1


# -- the caller never waits ----------------------------------------------------


def test_emit_does_not_wait_for_a_frozen_redis(
    handlers: Handlers, own_redis, redis_client: redis.Redis
) -> None:
    handler = handlers(
        url=own_redis.url, queue_size=100_000, socket_timeout=30, stream_maxlen=10_000
    )
    log = fresh_logger(handler)
    log.info("warm-up")
    assert handler.flush(5)
    own_redis.pause()
    try:
        done = threading.Event()

        def burst() -> None:
            for i in range(5000):
                log.info("while frozen %d", i)
            done.set()

        threading.Thread(target=burst, daemon=True).start()
        # The worker is stuck in a read for 30 s; callers finish anyway.
        assert done.wait(20)
        assert handler.stats()["sent"] == 1
        assert handler.stats()["pending"] == 5000
    finally:
        own_redis.resume()
    assert handler.flush(40)
    assert own_redis.client().xlen(GLOBAL) == 5001


# -- outages -----------------------------------------------------------------


def test_records_logged_while_redis_is_down_arrive_in_order_when_it_returns(
    handlers: Handlers, own_redis, caplog: pytest.LogCaptureFixture
) -> None:
    handler = handlers(url=own_redis.url)
    log = fresh_logger(handler)
    log.info("before")
    assert handler.flush(5)
    own_redis.kill()
    with caplog.at_level(logging.WARNING, logger="redis_logstream"):
        for i in range(500):
            log.info("during %d", i)
            if i == 250:
                time.sleep(0.3)  # let a few retries fail
        wait_for(lambda: handler.stats()["retries"] >= 2)
        own_redis.restart()
        assert handler.flush(10)
    got = messages(own_redis.client(), GLOBAL)
    assert got == [f"during {i}" for i in range(500)]  # the server lost "before"
    stats = handler.stats()
    assert stats["sent"] == 501 and stats["dropped"] == 0 and stats["pending"] == 0
    reports = [r.getMessage() for r in caplog.records if r.name == "redis_logstream"]
    assert len([m for m in reports if "cannot write" in m]) == 1
    assert len([m for m in reports if "writing again" in m]) == 1


def test_timestamps_are_those_of_the_records_not_of_delivery(handlers: Handlers, own_redis) -> None:
    handler = handlers(url=own_redis.url)
    log = fresh_logger(handler)
    own_redis.kill()
    logged_at = time.time()
    log.info("late")
    time.sleep(0.5)
    own_redis.restart()
    assert handler.flush(10)
    (entry,) = entries(own_redis.client(), GLOBAL)
    assert abs(entry["timestamp"] - logged_at) < 0.1


@pytest.mark.parametrize("policy", ["drop-new", "drop-old"])
def test_a_full_buffer_drops_by_policy_and_counts_exactly(
    handlers: Handlers, own_redis, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    handler = handlers(url=own_redis.url, queue_size=100, batch_size=10, overflow=policy)
    log = fresh_logger(handler)
    own_redis.kill()
    with caplog.at_level(logging.WARNING, logger="redis_logstream"):
        for i in range(1000):
            log.info("%d", i)
        stats = handler.stats()
        assert stats["enqueued"] + stats["dropped"] == 1000
        assert stats["pending"] == 100
        own_redis.restart()
        assert handler.flush(10)
    got = [int(m) for m in messages(own_redis.client(), GLOBAL)]
    assert len(got) == 100 == handler.stats()["sent"]
    assert got == sorted(got)
    if policy == "drop-new":
        assert got[:10] == list(range(10))
    else:
        assert got[-10:] == list(range(990, 1000))
    assert any("records dropped" in r.getMessage() for r in caplog.records)


# -- no recursion ----------------------------------------------------------------


class ThreadNames(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.names.append(record.threadName)


def test_records_logged_while_shipping_never_reenter_the_buffer(
    handlers: Handlers, own_redis
) -> None:
    handler = handlers(url=own_redis.url)
    handler.shipper.retry_base = handler.shipper.retry_cap = 30.0  # flush() cuts it short
    redis_py = logging.getLogger("redis")
    write = handler.shipper.sink.write

    def chatty_write(batch: list) -> None:  # as a client library logging its I/O would
        logging.getLogger("redis.io").debug("writing %d records", len(batch))
        write(batch)

    handler.shipper.sink.write = chatty_write
    ours = logging.getLogger("redis_logstream")
    witness = ThreadNames()
    saved = (redis_py.level, ours.handlers[:])
    redis_py.setLevel(logging.DEBUG)
    ours.addHandler(handler)  # the shipper's own diagnostics
    try:
        log = fresh_logger(handler)
        own_redis.kill()
        log.info("app record")
        wait_for(lambda: handler.stats()["errors"] >= 1)  # "cannot write" was reported
        own_redis.restart()  # the test's client logs too: not attached yet
        redis_py.addHandler(handler)
        redis_py.addHandler(witness)
        assert handler.flush(10)  # the worker reconnects: redis-py logs in its thread
    finally:
        redis_py.removeHandler(handler)
        redis_py.removeHandler(witness)
        redis_py.setLevel(saved[0])
        ours.handlers[:] = saved[1]
    assert "redis-logstream" in witness.names
    assert messages(own_redis.client(), GLOBAL) == ["app record"]


# -- bad input ----------------------------------------------------------------------


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class OddError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("odd")


def test_bad_input_yields_records_and_never_raises(
    handlers: Handlers, redis_url: str, redis_client: redis.Redis
) -> None:
    handler = handlers(url=redis_url)
    log = fresh_logger(handler)
    log.info(Unprintable())
    log.info("%d items", "not a number")
    log.info("%s and %s", "only one")
    log.info({"a dict": 1})
    log.info(b"\xff\xfe bytes")
    log.info("surrogate \udcff from a bad file name")
    log.info("nul \x00 and bell \x07")
    try:
        raise OddError()
    except OddError:
        log.exception("failed")
    assert handler.flush(5)
    got = entries(redis_client, GLOBAL)
    assert len(got) == 8
    assert "Unprintable" in got[0]["message"]
    assert "not a number" in got[1]["message"]
    assert got[3]["message"] == "{'a dict': 1}"
    assert got[5]["message"] == "surrogate \\udcff from a bad file name"
    assert got[6]["message"] == "nul \x00 and bell \x07"
    assert "OddError" in got[7]["message"] and "Traceback" in got[7]["message"]
    assert handler.stats()["errors"] == 0


def test_a_record_whose_args_do_not_fit_keeps_its_traceback(
    handlers: Handlers, redis_url: str, redis_client: redis.Redis
) -> None:
    handler = handlers(url=redis_url)
    log = fresh_logger(handler)
    try:
        {}["card"]
    except KeyError:
        log.exception("checkout failed for %s in %s", "alice")  # one argument short
    assert handler.flush(5)
    (message,) = [e["message"] for e in entries(redis_client, GLOBAL)]
    assert message.startswith("checkout failed for %s in %s (unformattable log record")
    assert "Traceback (most recent call last)" in message and "KeyError: 'card'" in message


def test_huge_messages_are_cut_to_max_message_bytes_and_marked(
    handlers: Handlers, redis_url: str, redis_client: redis.Redis
) -> None:
    handler = handlers(url=redis_url, max_message_bytes=1000)
    log = fresh_logger(handler)
    log.info("é" * 10_000)
    log.info("short")
    assert handler.flush(5)
    cut, short = entries(redis_client, GLOBAL)
    assert len(cut["message"].encode()) <= 1000
    assert cut["message"].startswith("éé") and cut["message"].endswith("bytes cut]")
    assert cut["truncated"] is True
    assert "truncated" not in short


def test_huge_logger_names_and_raw_contexts_are_cut_and_marked_and_name_no_key(
    handlers: Handlers, redis_url: str, redis_client: redis.Redis
) -> None:
    handler = handlers(url=redis_url)
    huge = "x" * (5 * 2**20)
    log = fresh_logger(handler)
    named = logging.getLogger(f"{log.name}.{huge}")  # propagates to ``log``'s handler
    token = user_id_context.set(f"User.{huge}")  # the variable itself, around the checks
    try:
        named.info("under a huge logger and context")  # nothing may be raised here
    finally:
        user_id_context.reset(token)
    log.info("plain")
    assert handler.flush(5)
    [(_, fields), _plain] = redis_client.xrange(GLOBAL)
    assert len(fields[b"data"]) < 4096
    cut, plain = entries(redis_client, GLOBAL)
    assert cut["truncated"] is True and "truncated" not in plain
    assert cut["logger"].startswith(f"{log.name}.xxx") and cut["logger"].endswith("bytes cut]")
    assert cut["context"].startswith("User.xxx") and cut["context"].endswith("bytes cut]")
    assert cut["message"] == "under a huge logger and context"
    assert redis_client.keys("*") == [GLOBAL.encode()]  # no key named after the context
    assert handler.stats()["failed"] == 0


def test_the_stored_json_holds_the_wire_format_fields(
    handlers: Handlers, redis_url: str, redis_client: redis.Redis
) -> None:
    handler = handlers(url=redis_url)
    log = fresh_logger(handler)
    with log_context("User.alice"):
        log.error("boom %s", 1)
    assert handler.flush(5)
    raw = redis_client.xrange("stream:logs:User.alice")[0][1][b"data"]
    record = json.loads(raw)
    assert set(record) == {
        "message",
        "level",
        "levelno",
        "timestamp",
        "logger",
        "context",
        "pod",
        "pid",
    }
    assert record["message"] == "boom 1"
    assert (record["level"], record["levelno"]) == ("ERROR", 40)
    assert record["logger"] == log.name and record["context"] == "User.alice"
