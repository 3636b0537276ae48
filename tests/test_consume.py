"""Consumer groups against a real Redis: sharing, fanout, crashes, Nack, Drop, trimming.

In-process consumers run in threads (their counters are what is checked);
where an exit status or a signal is the point, ``redis-logstream consume``
runs as a real process (test_consume_cli.py).
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections import Counter
from pathlib import Path

import pytest

from redis_logstream import consume, log_context
from redis_logstream.consumers import Drop, Forward, LogEntry, Nack
from redis_logstream.consumers.consumer import Consumer, consumer_client
from support.helpers import fresh_logger, wait_for


@pytest.fixture
def context() -> str:
    return f"job_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def log(handlers, redis_url, context):
    """log(n, start=0): records "record <i>" under the test's context, flushed."""
    handler = handlers(url=redis_url, stream_maxlen=100_000)
    logger = fresh_logger(handler)

    def write(count: int, start: int = 0, level: int = logging.INFO) -> None:
        with log_context(context):
            for i in range(start, start + count):
                logger.log(level, "record %d", i)
        assert handler.flush(10)

    write.handler = handler
    return write


class Running(threading.Thread):
    """A Consumer in a thread, with what its callback saw."""

    def __init__(self, url: str, context: str, group: str, callback=None, **options) -> None:
        super().__init__(daemon=True)
        client, names = consumer_client(None, url, None, options.get("block_ms", 200))
        options.setdefault("block_ms", 200)
        self.seen: list[LogEntry] = []
        self.consumer = Consumer(
            callback or self.seen.append,
            client=client,
            names=names,
            streams=[names.stream(context)],
            group=group,
            **options,
        )
        self.status: int | None = None

    def run(self) -> None:
        self.status = self.consumer.run()

    def __enter__(self) -> Running:
        return self.begin()

    def begin(self) -> Running:
        """Start, and return once the group exists (what is logged from now on reaches it)."""
        self.start()
        streams = self.consumer.streams
        wait_for(
            lambda: any(
                g["name"] == streams.group.encode()
                for g in groups(streams.client, streams.streams[0])
            )
        )
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> int | None:
        self.consumer.stop()
        self.join(10)
        assert not self.is_alive()
        return self.status

    @property
    def stats(self) -> dict[str, int]:
        return self.consumer.stats()


def groups(client, stream: str) -> list[dict]:
    return client.xinfo_groups(stream) if client.exists(stream) else []


def pending(redis_client, stream: str, group: str) -> int:
    return redis_client.xpending(stream, group)["pending"]


def test_two_consumers_of_a_group_share_10000_records_each_handled_once(redis_url, log, context):
    with (
        Running(redis_url, context, "g", consumer="a", batch=100) as a,
        Running(redis_url, context, "g", consumer="b", batch=100) as b,
    ):
        log(10_000)
        wait_for(lambda: len(a.seen) + len(b.seen) >= 10_000, timeout=30)
    handled = [e.message for e in a.seen + b.seen]
    assert sorted(handled) == sorted(f"record {i}" for i in range(10_000))
    assert len(a.seen) > 0 and len(b.seen) > 0, "both consumers should have had a share"
    for running in (a, b):  # in order within each consumer's share
        numbers = [int(e.message.split()[1]) for e in running.seen]
        assert numbers == sorted(numbers)
    assert a.stats["acked"] + b.stats["acked"] == 10_000


def test_every_group_gets_every_record(redis_url, log, context, redis_client):
    with (
        Running(redis_url, context, "alerts") as alerts,
        Running(redis_url, context, "archive") as archive,
    ):
        log(500)
        wait_for(lambda: len(alerts.seen) == 500 and len(archive.seen) == 500)
    assert [e.message for e in alerts.seen] == [e.message for e in archive.seen]
    assert [e.message for e in alerts.seen] == [f"record {i}" for i in range(500)]


def test_a_group_created_from_the_start_reads_what_the_stream_already_holds(
    redis_url, log, context
):
    log(50)
    with Running(redis_url, context, "late", start="0") as late:
        wait_for(lambda: len(late.seen) == 50)
    first = late.seen[0]
    assert (first.message, first.level, first.levelno, first.context) == (
        "record 0",
        "INFO",
        20,
        context,
    )
    assert first.stream == f"stream:logs:{context}" and first.pid is not None


def test_nack_retries_then_moves_the_record_to_the_dead_letter_stream(
    redis_url, log, context, redis_client
):
    attempts = Counter()

    def refuse(entry: LogEntry) -> None:
        attempts[entry.message] += 1
        raise Nack("the pager is down")

    with Running(redis_url, context, "pager", refuse, retry_after=0.05, max_retries=2) as r:
        log(1)
        wait_for(lambda: r.stats["dead_lettered"] == 1)
    assert attempts == {"record 0": 3}
    assert r.stats["nacked"] == 3 and r.stats["handled"] == 0
    assert pending(redis_client, f"stream:logs:{context}", "pager") == 0
    [(_, fields)] = redis_client.xrange("stream:logs/dead-letter/pager")
    assert fields[b"attempts"] == b"3" and fields[b"reason"] == b"the pager is down"
    assert fields[b"stream"] == f"stream:logs:{context}".encode()
    assert b'"message":"record 0"' in fields[b"data"]
    redis_client.delete("stream:logs/dead-letter/pager")


def test_a_nack_that_later_succeeds_is_handled_once(redis_url, log, context):
    tries = Counter()

    def flaky(entry: LogEntry) -> None:
        tries[entry.message] += 1
        if tries[entry.message] < 2:
            raise Nack(retry_after=0.05)

    with Running(redis_url, context, "flaky", flaky) as r:
        log(3)
        wait_for(lambda: r.stats["handled"] == 3)
    assert r.stats["nacked"] == 3 and r.stats["dead_lettered"] == 0


def test_drop_acknowledges_without_handling(redis_url, log, context, redis_client):
    def drop_odd(entry: LogEntry) -> None:
        if int(entry.message.split()[1]) % 2:
            raise Drop

    with Running(redis_url, context, "evens", drop_odd) as r:
        log(10)
        wait_for(lambda: r.stats["handled"] + r.stats["dropped"] == 10)
    assert (r.stats["handled"], r.stats["dropped"]) == (5, 5)
    assert pending(redis_client, f"stream:logs:{context}", "evens") == 0


def test_an_unexpected_exception_stops_the_consumer_with_the_record_pending(
    redis_url, log, context, redis_client, caplog
):
    def broken(entry: LogEntry) -> None:
        if entry.message == "record 2":
            raise KeyError("oops")

    r = Running(redis_url, context, "broken", broken, batch=10).begin()
    log(5)
    r.join(10)
    assert r.status == 1
    assert r.stats["handled"] == 2
    # records 0 and 1 acknowledged; 2 (the failure) and 3, 4 (not reached) pending
    assert pending(redis_client, f"stream:logs:{context}", "broken") == 3
    assert "KeyError: 'oops'" in caplog.text and "stays pending" in caplog.text


def test_a_restarted_consumer_first_takes_back_what_it_left_pending(redis_url, log, context):
    def broken(entry: LogEntry) -> None:
        raise RuntimeError("bug")

    first = Running(redis_url, context, "g", broken, consumer="worker-1").begin()
    log(3)
    first.join(10)
    assert first.status == 1
    with Running(redis_url, context, "g", consumer="worker-1") as fixed:
        wait_for(lambda: len(fixed.seen) == 3)
    assert [e.message for e in fixed.seen] == ["record 0", "record 1", "record 2"]


def test_another_consumer_claims_what_a_dead_one_left_after_claim_after(
    redis_url, log, context, redis_client
):
    stream = f"stream:logs:{context}"
    with Running(redis_url, context, "g", consumer="alive") as alive:
        log(5)
        wait_for(lambda: len(alive.seen) == 5)
    # A consumer that read records and died without acknowledging them:
    log(5, start=5)
    redis_client.xreadgroup("g", "dead", {stream: ">"})
    assert pending(redis_client, stream, "g") == 5
    with Running(redis_url, context, "g", consumer="heir", claim_after=0.3) as heir:
        wait_for(lambda: len(heir.seen) == 5, timeout=5)
    assert [e.message for e in heir.seen] == [f"record {i}" for i in range(5, 10)]
    assert heir.stats["claimed"] == 5
    assert pending(redis_client, stream, "g") == 0


def test_records_trimmed_before_the_group_read_them_are_reported_once_with_the_count(
    handlers, redis_url, context, caplog
):
    handler = handlers(url=redis_url, stream_maxlen=100)
    logger = fresh_logger(handler)
    with Running(redis_url, context, "slow"):
        pass
    # The group exists; nobody reads while 1,000 records go into a stream capped at ~100.
    with log_context(context):
        for i in range(1000):
            logger.info("record %d", i)
    assert handler.flush(10)
    with Running(redis_url, context, "slow") as again:
        wait_for(lambda: again.stats["missed"] > 0, timeout=5)
        wait_for(lambda: len(again.seen) + again.stats["missed"] == 1000, timeout=5)
    assert again.seen[-1].message == "record 999"
    warnings = [r for r in caplog.records if "were trimmed before group slow" in r.getMessage()]
    assert len(warnings) == 1
    assert f"{again.stats['missed']} records of stream:logs:{context}" in warnings[0].getMessage()


def test_forward_reemits_records_into_a_file_handler(redis_url, log, context, tmp_path: Path):
    target = logging.FileHandler(tmp_path / "errors.log")
    target.setLevel(logging.ERROR)
    target.setFormatter(logging.Formatter("%(levelname)s %(context)s %(name)s: %(message)s"))
    with Running(redis_url, context, "files", Forward(target)) as r:
        log(2)
        log(1, start=2, level=logging.ERROR)
        wait_for(lambda: r.stats["handled"] == 3)
    lines = (tmp_path / "errors.log").read_text().splitlines()
    assert lines == [f"ERROR {context} tests.logger{lines[0].split('tests.logger')[1]}"]
    assert lines[0].endswith(": record 2")


def test_to_log_record_gives_back_the_producers_record(redis_url, log, context):
    with Running(redis_url, context, "records") as r:
        log(1, level=logging.WARNING)
        wait_for(lambda: len(r.seen) == 1)
    entry = r.seen[0]
    record = entry.to_log_record()
    assert (record.levelno, record.levelname, record.getMessage()) == (30, "WARNING", "record 0")
    assert record.created == entry.timestamp and record.process == entry.pid
    assert record.context == context and record.entry_id == entry.id


def test_consume_calls_a_class_callback_built_once_with_its_config(redis_url, log, context):
    built = []

    class Collect:
        def __init__(self, prefix: str) -> None:
            built.append(prefix)
            self.prefix = prefix
            self.seen: list[str] = []

        def __call__(self, entry: LogEntry) -> None:
            self.seen.append(self.prefix + entry.message)
            if len(self.seen) == 3:
                from redis_logstream.consumers import HaltConsumer

                raise HaltConsumer(7, ack=True)

    status = []
    thread = threading.Thread(
        target=lambda: status.append(
            consume(
                Collect,
                group="cls",
                contexts=[context],
                url=redis_url,
                block_ms=200,
                callback_config={"prefix": "> "},
            )
        )
    )
    thread.start()
    wait_for(
        lambda: consumer_client(None, redis_url, None, 200)[0].exists(f"stream:logs:{context}")
    )
    log(5)
    thread.join(10)
    assert status == [7] and built == ["> "]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"group": "g"}, "give at least one stream"),
        ({"group": "", "contexts": ["job_1"]}, "group must be a non-empty str"),
        ({"group": "g", "contexts": ["job_1"], "batch": 0}, "batch must be an int >= 1"),
        (
            {"group": "g", "contexts": ["job_1"], "max_deliveries": 0},
            "max_deliveries must be an int >= 1",
        ),
        ({"group": "g", "contexts": ["job_1"], "callback_config": {"a": 1}}, "for a class"),
    ],
)
def test_consume_checks_its_arguments(redis_url, options, message):
    with pytest.raises(ValueError, match=message):
        consume(print, url=redis_url, **options)


def test_a_consumer_outlives_a_redis_restart_and_recreates_its_group(
    handlers, own_redis, context, caplog
):
    handler = handlers(url=own_redis.url)
    logger = fresh_logger(handler)

    def log(*messages: str) -> None:
        with log_context(context):
            for message in messages:
                logger.info(message)
        assert handler.flush(10)

    with Running(own_redis.url, context, "g") as r:
        log("before")
        wait_for(lambda: len(r.seen) == 1)
        own_redis.restart()  # killed, back empty: no stream, no group
        wait_for(lambda: "group g is gone" in caplog.text, timeout=10)
        log("after")
        wait_for(lambda: len(r.seen) == 2, timeout=10)
    assert [e.message for e in r.seen] == ["before", "after"]


def test_nacks_count_as_deliveries_across_a_restart(redis_url, log, context, redis_client):
    group = f"pager-{uuid.uuid4().hex[:8]}"
    deliveries: list[int] = []

    def refuse(entry: LogEntry) -> None:
        deliveries.append(entry.deliveries)
        raise Nack("the pager is down", retry_after=0.05)

    first = Running(redis_url, context, group, refuse, consumer="c", max_deliveries=3).begin()
    log(1)
    wait_for(lambda: len(deliveries) == 2)
    first.stop()  # the count is Redis's: a restart does not start it again at 1
    with Running(redis_url, context, group, refuse, consumer="c", max_deliveries=3) as again:
        wait_for(lambda: again.stats["dead_lettered"] == 1)
    assert deliveries == [1, 2, 3]
    [(_, fields)] = redis_client.xrange(f"stream:logs/dead-letter/{group}")
    assert fields[b"attempts"] == b"3" and fields[b"reason"] == b"the pager is down"
    assert pending(redis_client, f"stream:logs:{context}", group) == 0
    redis_client.delete(f"stream:logs/dead-letter/{group}")


def test_the_last_delivery_failing_dead_letters_the_record_and_the_consumer_goes_on(
    redis_url, log, context, redis_client, caplog
):
    group = f"broken-{uuid.uuid4().hex[:8]}"

    def broken(entry: LogEntry) -> None:
        if entry.message == "record 2":
            raise KeyError("oops")

    with Running(redis_url, context, group, broken, max_deliveries=1) as r:
        log(5)
        wait_for(lambda: r.stats["handled"] == 4 and r.stats["dead_lettered"] == 1)
        assert r.is_alive() and r.status is None
    assert r.stop() == 0
    [(_, fields)] = redis_client.xrange(f"stream:logs/dead-letter/{group}")
    assert b'"message":"record 2"' in fields[b"data"] and fields[b"attempts"] == b"1"
    assert fields[b"reason"] == b"KeyError: 'oops'"
    assert fields[b"error"].startswith(b"Traceback") and b"in broken" in fields[b"error"]
    assert pending(redis_client, f"stream:logs:{context}", group) == 0
    assert "delivery 1 of 1" in caplog.text and "goes on" in caplog.text
    redis_client.delete(f"stream:logs/dead-letter/{group}")


def test_records_a_stopping_consumer_never_reached_are_not_charged_a_delivery(
    redis_url, log, context
):
    from redis_logstream.consumers import HaltConsumer

    seen: list[tuple[str, int]] = []

    def halt_on_2(entry: LogEntry) -> None:
        seen.append((entry.message, entry.deliveries))
        if entry.message == "record 2" and entry.deliveries == 1:
            raise HaltConsumer(3)  # left pending; so are 3 and 4, read in the same batch

    first = Running(redis_url, context, "g", halt_on_2, consumer="w", max_deliveries=2).begin()
    log(5)
    first.join(10)
    assert first.status == 3
    with Running(redis_url, context, "g", halt_on_2, consumer="w", max_deliveries=2) as again:
        wait_for(lambda: again.stats["handled"] == 3)
    assert seen == [
        ("record 0", 1),
        ("record 1", 1),
        ("record 2", 1),
        ("record 2", 2),
        ("record 3", 1),
        ("record 4", 1),
    ]
    assert again.stats["dead_lettered"] == 0


def test_the_documented_acl_line_lets_a_consumer_retry_claim_and_dead_letter(own_redis):
    """Every command of a consumer's paths (first reads, a restart's pending
    records, claims, Nacks, dead-lettering) under docs/processing.md's ACL."""
    import json

    import redis

    docs = (Path(__file__).resolve().parent.parent / "docs" / "processing.md").read_text()
    [line] = [text for text in docs.splitlines() if text.startswith("user logconsumer ")]
    admin = redis.Redis.from_url(own_redis.url)
    admin.execute_command("ACL", "SETUSER", *line.split()[1:])
    admin.execute_command("ACL", "LOG", "RESET")
    stream = "stream:logs:job_acl"
    for i in range(6):
        admin.xadd(stream, {"data": json.dumps({"message": f"m{i}", "level": "INFO"})})
    url = own_redis.url.replace("redis://", "redis://logconsumer:PASSWORD@", 1)
    seen: list[tuple[str, int]] = []

    def callback(entry: LogEntry) -> None:
        seen.append((entry.message, entry.deliveries))
        if entry.message == "m1":
            raise Nack("later", retry_after=0.01)
        if entry.message == "m3" and entry.deliveries == 1:
            raise RuntimeError("stop here")

    options = {"start": "0", "claim_after": 0.2, "max_deliveries": 2}
    first = Running(url, "job_acl", "g", callback, consumer="w", **options)
    first.start()  # (begin() would check the group with the admin's commands)
    first.join(10)
    assert first.status == 1
    admin.xadd(stream, {"data": "left by a dead consumer"})
    admin.xreadgroup("g", "dead", {stream: ">"})
    again = Running(url, "job_acl", "g", callback, consumer="w", **options)
    again.start()
    wait_for(lambda: again.stats["claimed"] == 1 and again.stats["dead_lettered"] == 1)
    assert again.stop() == 0
    assert ("m3", 2) in seen and ("m1", 2) in seen
    assert admin.xpending(stream, "g")["pending"] == 0
    assert admin.xlen("stream:logs/dead-letter/g") == 1
    assert admin.execute_command("ACL", "LOG") == []
