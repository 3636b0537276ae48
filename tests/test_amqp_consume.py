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
import uuid
from collections import Counter
from pathlib import Path

import amqp
import pytest

from redis_logstream import log_context
from redis_logstream.amqp import AmqpLogHandler
from redis_logstream.amqp_consumer import AmqpConsumer, queue_name
from redis_logstream.consumers import Drop, HaltConsumer, LogEntry, Nack

from helpers import fresh_logger, wait_for

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
            url=url, group=group, exchange=exchange, **options,
        )  # fmt: skip
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
    with Running(rabbit_url, exchange, "alerts", batch=10) as a1, \
            Running(rabbit_url, exchange, "alerts", batch=10) as a2, \
            Running(rabbit_url, exchange, "archive") as archive:  # fmt: skip
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
        [sys.executable, "-m", "redis_logstream.cli", "consume", "--amqp", rabbit_url,
         "--exchange", exchange, "--global", "--group", "g", "--batch", "20",
         "--callback", "consume_callbacks:slowly"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
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
