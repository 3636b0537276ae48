"""Consuming from RabbitMQ with the consumer contract: groups, Nack, Drop, Halt, crashes.

On the machine's broker, with an exchange and queues of each test's own,
deleted after it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import amqp
import pytest

from redis_logstream import log_context
from redis_logstream.amqp import AmqpLogHandler
from redis_logstream.amqp.consumer import (
    DELIVERIES_HEADER,
    AmqpConsumer,
    dead_letter_queue,
    queue_name,
)
from redis_logstream.consumers import Drop, HaltConsumer, LogEntry, Nack
from support.helpers import fresh_logger, wait_for

TESTS = Path(__file__).resolve().parent


@pytest.fixture
def exchange(rabbit_url):
    name = f"test-logs-{uuid.uuid4().hex[:10]}"
    yield name
    conn = amqp.Connection("127.0.0.1:5672")
    conn.connect()
    channel = conn.channel()
    for group in ("g", "alerts", "archive", "probe"):
        channel.queue_delete(queue_name(name, group))
        channel.queue_delete(dead_letter_queue(name, group))
    channel.exchange_delete(name)
    conn.close()


@pytest.fixture
def log(rabbit_url, exchange):
    handler = AmqpLogHandler(url=rabbit_url, exchange=exchange, flush_interval=0.01)
    logger = fresh_logger(handler)

    def write(*messages: str, context: str = "job_1") -> None:
        with log_context(context):
            for message in messages:
                logger.info("%s", message)
        assert handler.flush(5)

    yield write
    handler.close()


class Running(threading.Thread):
    def __init__(self, url: str, exchange: str, group: str, callback=None, **options) -> None:
        super().__init__(daemon=True)
        self.seen: list[str] = []
        self.consumer = AmqpConsumer(
            callback or (lambda entry: self.seen.append(entry.message)),
            url=url,
            group=group,
            exchange=exchange,
            **options,
        )
        self.status: int | None = None

    def run(self) -> None:
        self.status = self.consumer.run()

    def __enter__(self) -> Running:
        self.start()
        wait_for(lambda: self.consumer._channel is not None)  # the queue is bound
        return self

    def __exit__(self, *exc) -> None:
        self.consumer.stop()
        self.join(10)


def numbered(count: int) -> list[str]:
    return [f"record {i}" for i in range(count)]


def test_consumers_of_a_group_share_and_every_group_gets_everything(rabbit_url, exchange, log):
    with (
        Running(rabbit_url, exchange, "alerts", batch=10) as a1,
        Running(rabbit_url, exchange, "alerts", batch=10) as a2,
        Running(rabbit_url, exchange, "archive") as archive,
    ):
        log(*numbered(1000))
        wait_for(lambda: len(a1.seen) + len(a2.seen) == 1000 and len(archive.seen) == 1000)
    assert sorted(a1.seen + a2.seen) == sorted(numbered(1000))
    assert a1.seen and a2.seen, "both consumers of the group should have had a share"
    assert archive.seen == numbered(1000)


def test_nack_requeues_after_the_delay_and_drop_acknowledges(rabbit_url, exchange, log):
    tries = Counter()

    def callback(entry: LogEntry) -> None:
        tries[entry.message] += 1
        if entry.message == "later" and tries["later"] == 1:
            raise Nack("not yet", retry_after=0.2)
        if entry.message == "skip me":
            raise Drop

    with Running(rabbit_url, exchange, "g", callback) as r:
        log("later", "skip me", "now")
        wait_for(lambda: r.consumer.stats()["handled"] == 2)
    assert tries == {"later": 2, "skip me": 1, "now": 1}
    stats = r.consumer.stats()
    assert (stats["nacked"], stats["dropped"], stats["acked"]) == (1, 1, 3)


def test_halt_and_an_unexpected_exception_hand_the_record_back(rabbit_url, exchange, log):
    def halt(entry: LogEntry) -> None:
        raise HaltConsumer(4)

    r = Running(rabbit_url, exchange, "g", halt)
    r.start()
    wait_for(lambda: r.consumer._channel is not None)
    log("first")
    r.join(10)
    assert r.status == 4

    def broken(entry: LogEntry) -> None:
        raise KeyError(entry.message)

    again = Running(rabbit_url, exchange, "g", broken)
    again.start()
    again.join(10)
    assert again.status == 1  # "first" was back in the queue, and failed again
    with Running(rabbit_url, exchange, "g") as fixed:
        wait_for(lambda: fixed.seen == ["first"])


def test_a_consumer_killed_with_records_in_hand_leaves_them_to_another(
    tmp_path, rabbit_url, exchange, log
):
    env = {
        **os.environ,
        "CONSUMED": str(tmp_path / "out.txt"),
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    doomed = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "redis_logstream.cli",
            "consume",
            "--amqp",
            rabbit_url,
            "--exchange",
            exchange,
            "--global",
            "--group",
            "g",
            "--batch",
            "20",
            "--callback",
            "support.consume_callbacks:slowly",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out = tmp_path / "out.txt"
    with Running(rabbit_url, exchange, "probe"):
        pass  # the exchange exists; now wait for the doomed consumer's queue
    wait_for(lambda: _queue_consumers(exchange, "g") == 1, timeout=15)
    log(*numbered(200))
    wait_for(lambda: out.exists() and len(out.read_text().splitlines()) >= 20, timeout=15)
    doomed.send_signal(signal.SIGKILL)
    doomed.communicate()
    before = [line.split(" ", 2)[2] for line in out.read_text().splitlines()]
    with Running(rabbit_url, exchange, "g") as heir:
        wait_for(lambda: set(before) | set(heir.seen) >= set(numbered(200)), timeout=15)
    assert sorted(set(before) | set(heir.seen)) == sorted(numbered(200))
    assert len(set(before) & set(heir.seen)) <= 20  # at most what it held unacknowledged


def _queue_consumers(exchange: str, group: str) -> int:
    conn = amqp.Connection("127.0.0.1:5672")
    conn.connect()
    try:
        return conn.channel().queue_declare(queue_name(exchange, group), passive=True)[2]
    except amqp.exceptions.NotFound:
        return 0
    finally:
        conn.collect()


def _queue_length(queue: str) -> int:
    conn = amqp.Connection("127.0.0.1:5672")
    conn.connect()
    try:
        return conn.channel().queue_declare(queue, passive=True)[1]
    except amqp.exceptions.NotFound:
        return 0
    finally:
        conn.collect()


def _dead_letters(exchange: str, group: str) -> list[amqp.Message]:
    conn = amqp.Connection("127.0.0.1:5672")
    conn.connect()
    channel = conn.channel()
    found = []
    while message := channel.basic_get(dead_letter_queue(exchange, group), no_ack=True):
        found.append(message)
    conn.close()
    return found


class CliConsumer:
    """``redis-logstream consume --amqp`` in a process, as systemd runs it."""

    def __init__(self, tmp_path: Path, rabbit_url: str, exchange: str, *args: str) -> None:
        self.out = tmp_path / "out.txt"
        env = {
            **os.environ,
            "CONSUMED": str(self.out),
            "HANDED": str(tmp_path / "handed.txt"),
            "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "redis_logstream.cli",
                "consume",
                "--amqp",
                rabbit_url,
                "--exchange",
                exchange,
                "--global",
                "--group",
                "g",
                *args,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def handled(self) -> list[str]:
        return (
            [line.split(" ", 2)[2] for line in self.out.read_text().splitlines()]
            if self.out.exists()
            else []
        )


def _systemd(start, settled, kill_when=None, starts: int = 7) -> list[int]:
    """Start again after each exit that is not 0 until settled(), then SIGTERM;
    kill -9 the consumer whenever kill_when() is true.  The exit statuses."""
    statuses: list[int] = []
    for _ in range(starts):
        proc = start()

        def ended(proc: CliConsumer = proc) -> bool:
            return proc.proc.poll() is not None or settled() or bool(kill_when and kill_when())

        wait_for(ended, timeout=30)
        if proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGTERM if settled() else signal.SIGKILL)
        proc.proc.communicate(timeout=15)
        statuses.append(proc.proc.returncode)
        if proc.proc.returncode == 0:
            return statuses
    return statuses


def test_a_poison_message_is_dead_lettered_after_max_deliveries_and_the_group_goes_on(
    tmp_path, rabbit_url, exchange, log
):
    messages = numbered(100)
    messages[42] = "boom 42"
    seen: list[CliConsumer] = []

    def start() -> CliConsumer:
        seen.append(
            CliConsumer(
                tmp_path,
                rabbit_url,
                exchange,
                "--callback",
                "support.consume_callbacks:crash_on_boom",
            )
        )
        return seen[-1]

    def settled() -> bool:
        return (
            len(seen[-1].handled()) == 99
            and _queue_length(dead_letter_queue(exchange, "g")) == 1
            and _queue_length(queue_name(exchange, "g")) == 0
        )

    with Running(rabbit_url, exchange, "probe"):
        pass  # the exchange exists
    first = start()
    wait_for(lambda: _queue_consumers(exchange, "g") == 1, timeout=15)
    log(*messages)
    began = time.monotonic()
    statuses = [*_systemd(lambda: first, settled, starts=1)]
    if statuses != [0]:
        statuses += _systemd(start, settled)
    took = time.monotonic() - began
    assert statuses == [1, 1, 1, 1, 0]  # deliveries 1-4 stop it; the 5th is the last
    handled = seen[-1].handled()
    assert sorted(handled) == sorted(m for m in messages if m != "boom 42")  # each once
    [dead] = _dead_letters(exchange, "g")
    assert b'"message":"boom 42"' in dead.body
    headers = dead.properties["application_headers"]
    assert headers[DELIVERIES_HEADER] == 5
    assert headers["x-redis-logstream-reason"] == "RuntimeError: cannot handle 'boom 42'"
    assert "Traceback" in headers["x-redis-logstream-error"]
    assert headers["x-redis-logstream-routing-key"].startswith("job_1.INFO.")
    handed = (tmp_path / "handed.txt").read_text().splitlines()
    assert [line for line in handed if "boom" in line] == [f"{n} boom 42" for n in range(1, 6)]
    # Received behind it by a consumer that stopped: put back, not charged.
    assert {line.split()[0] for line in handed if "boom" not in line} == {"1"}
    print(
        f"FIGURE poison message, RabbitMQ: {len(statuses)} starts (exit {statuses}), "
        f"{len(handled)} other records handled once each, {took:.1f} s in all"
    )


def test_a_consumer_killed_on_the_poison_message_counts_that_delivery(
    tmp_path, rabbit_url, exchange, log
):
    messages = numbered(10)
    messages[5] = "boom 5"
    handed = tmp_path / "handed.txt"
    seen: list[CliConsumer] = []

    def start() -> CliConsumer:
        seen.append(
            CliConsumer(
                tmp_path,
                rabbit_url,
                exchange,
                "--max-deliveries",
                "3",
                "--callback",
                "support.consume_callbacks:hang_on_boom",
            )
        )
        return seen[-1]

    def hanging() -> bool:
        """The running consumer (each earlier one was killed on it) has the poison."""
        return handed.exists() and handed.read_text().count("boom") >= len(seen)

    def settled() -> bool:
        return (
            _queue_length(dead_letter_queue(exchange, "g")) == 1
            and _queue_length(queue_name(exchange, "g")) == 0
            and len(set(seen[-1].handled())) == 9
        )

    with Running(rabbit_url, exchange, "probe"):
        pass
    first = start()
    wait_for(lambda: _queue_consumers(exchange, "g") == 1, timeout=15)
    log(*messages)
    statuses = _systemd(lambda: first, settled, kill_when=hanging, starts=1)
    statuses += _systemd(start, settled, kill_when=hanging)
    assert statuses == [-signal.SIGKILL] * 3 + [0]
    lines = handed.read_text().splitlines()
    assert [line for line in lines if "boom" in line] == ["1 boom 5", "2 boom 5", "3 boom 5"]
    [dead] = _dead_letters(exchange, "g")
    headers = dead.properties["application_headers"]
    assert headers[DELIVERIES_HEADER] == 3
    assert "never acknowledged" in headers["x-redis-logstream-reason"]
    others = [m for m in messages if m != "boom 5"]
    handled = seen[-1].handled()
    assert sorted(handled) == sorted(others)  # acknowledged one by one: each once
    # Prefetched behind it when it first killed the consumer: charged that once, no more.
    assert max(int(line.split()[0]) for line in lines if "boom" not in line) <= 2


def test_a_quorum_queues_own_delivery_count_is_used(rabbit_url, exchange, log):
    conn = amqp.Connection("127.0.0.1:5672")
    conn.connect()
    conn.channel().queue_declare(
        queue_name(exchange, "g"),
        durable=True,
        auto_delete=False,
        arguments={"x-queue-type": "quorum"},
    )
    conn.close()
    deliveries: list[int] = []

    def broken(entry: LogEntry) -> None:
        deliveries.append(entry.deliveries)
        raise KeyError(entry.message)

    with Running(rabbit_url, exchange, "probe"):
        pass
    first = Running(rabbit_url, exchange, "g", broken, max_deliveries=2, patterns=["#"])
    first.start()
    wait_for(lambda: _queue_consumers(exchange, "g") == 1)
    log("boom")
    first.join(10)
    assert first.status == 1  # delivery 1 of 2: handed back, the broker counts it
    with Running(rabbit_url, exchange, "g", broken, max_deliveries=2, patterns=["#"]) as again:
        wait_for(lambda: again.consumer.stats()["dead_lettered"] == 1)
    assert deliveries == [1, 2]
    [dead] = _dead_letters(exchange, "g")
    assert dead.properties["application_headers"][DELIVERIES_HEADER] == 2


def test_nacks_count_as_deliveries_then_the_message_is_dead_lettered(rabbit_url, exchange, log):
    deliveries: list[int] = []

    def refuse(entry: LogEntry) -> None:
        if entry.message == "refused":
            deliveries.append(entry.deliveries)
            raise Nack("the pager is down", retry_after=0.05)

    with Running(rabbit_url, exchange, "g", refuse, max_deliveries=3) as r:
        log("refused", *numbered(20))
        wait_for(lambda: r.consumer.stats()["dead_lettered"] == 1)
    stats = r.consumer.stats()
    assert deliveries == [1, 2, 3] and stats["nacked"] == 3 and stats["handled"] == 20
    [dead] = _dead_letters(exchange, "g")
    headers = dead.properties["application_headers"]
    assert headers[DELIVERIES_HEADER] == 3
    assert headers["x-redis-logstream-reason"] == "the pager is down"
    assert _queue_length(queue_name(exchange, "g")) == 0
