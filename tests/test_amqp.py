"""AmqpLogHandler against a real RabbitMQ: routing, properties, configuration, tail.

These use the machine's broker (127.0.0.1:5672) with an exchange and queues
named for each test and deleted after it; the tests that kill a broker use a
private node of their own (test_amqp_faults.py).
"""

from __future__ import annotations

import json
import logging
import logging.config
import signal
import subprocess
import sys
import time
import uuid

import amqp
import pytest
from django.test import override_settings

from redis_logstream import log_context
from redis_logstream.amqp import AmqpLogHandler, binding_key
from redis_logstream.amqp import sink as amqp_sink
from redis_logstream.amqp.routing import MAX_KEY_BYTES
from support.helpers import fresh_logger


class Broker:
    """A connection to a broker and the names a test made there (deleted after)."""

    def __init__(self, url_host: str = "127.0.0.1:5672") -> None:
        self.conn = amqp.Connection(url_host)
        self.conn.connect()
        self.channel = self.conn.channel()
        self.exchange = f"test-logs-{uuid.uuid4().hex[:10]}"
        self.channel.exchange_declare(self.exchange, "topic", durable=False, auto_delete=False)
        self.queues: list[str] = []

    def queue(self, *patterns: str) -> str:
        name, _count, _consumers = self.channel.queue_declare("", exclusive=True)
        for pattern in patterns:
            self.channel.queue_bind(name, self.exchange, pattern)
        self.queues.append(name)
        return name

    def messages(self, queue: str) -> list[amqp.Message]:
        found = []
        while (message := self.channel.basic_get(queue, no_ack=True)) is not None:
            found.append(message)
        return found

    def bodies(self, queue: str) -> list[str]:
        return [json.loads(m.body)["message"] for m in self.messages(queue)]

    def close(self) -> None:
        for queue in self.queues:
            self.channel.queue_delete(queue)
        self.channel.exchange_delete(self.exchange)
        self.conn.close()


@pytest.fixture
def broker(rabbit_url: str):
    broker = Broker()
    yield broker
    broker.close()


@pytest.fixture
def handler(broker, rabbit_url):
    made = AmqpLogHandler(url=rabbit_url, exchange=broker.exchange, flush_interval=0.01)
    yield made
    made.close()


def emit_mix(logger_base: str, handler: AmqpLogHandler) -> None:
    """INFO and ERROR, with and without contexts, from a logger and its children."""
    for name in (logger_base, f"{logger_base}.request", f"{logger_base}x"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler]
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
    for context in ("User.alice", "User.bob", None):
        for name in (logger_base, f"{logger_base}.request", f"{logger_base}x"):
            for level in (logging.INFO, logging.ERROR):
                if context is None:
                    logging.getLogger(name).log(level, "%s %s %s", "-", name, level)
                else:
                    with log_context(context):
                        logging.getLogger(name).log(level, "%s %s %s", context, name, level)
    assert handler.flush(5)


def test_routing_keys_are_context_level_logger(broker, handler):
    everything = broker.queue("#")
    emit_mix("shop", handler)
    keys = [m.delivery_info["routing_key"] for m in broker.messages(everything)]
    assert keys[:2] == ["User%2Ealice.INFO.shop", "User%2Ealice.ERROR.shop"]
    assert "global.ERROR.shop.request" in keys and len(keys) == 18


def test_star_error_hash_gets_only_errors(broker, handler):
    errors = broker.queue("*.ERROR.#")
    emit_mix("shop", handler)
    got = [json.loads(m.body) for m in broker.messages(errors)]
    assert len(got) == 9 and {r["level"] for r in got} == {"ERROR"}


def test_a_context_binding_gets_only_that_contexts_records(broker, handler):
    alice = broker.queue(binding_key(context="User.alice"))
    nobody = broker.queue(binding_key(context="global"))
    emit_mix("shop", handler)
    assert {json.loads(m.body)["context"] for m in broker.messages(alice)} == {"User.alice"}
    assert {json.loads(m.body)["context"] for m in broker.messages(nobody)} == {None}


def test_a_logger_binding_gets_the_logger_and_its_children_only(broker, handler):
    django = broker.queue(binding_key(logger="django"))
    emit_mix("django", handler)
    loggers = {json.loads(m.body)["logger"] for m in broker.messages(django)}
    assert loggers == {"django", "django.request"}  # not "djangox"


def test_two_listeners_both_get_every_record(broker, handler):
    first, second = broker.queue("#"), broker.queue("#")
    emit_mix("shop", handler)
    got_first, got_second = broker.bodies(first), broker.bodies(second)
    assert got_first == got_second and len(got_first) == 18


def test_messages_carry_the_wire_json_and_its_properties(broker, handler):
    queue = broker.queue("#")
    logger = fresh_logger(handler)
    before = time.time()
    with log_context("job_42"):
        logger.warning("the same %s as on Redis", "JSON")
    assert handler.flush(5)
    [message] = broker.messages(queue)
    record = json.loads(message.body)
    assert record["message"] == "the same JSON as on Redis"
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
    assert message.properties["content_type"] == "application/json"
    assert message.properties["app_id"] == "redis_logstream"
    assert int(before) <= message.properties["timestamp"] <= time.time()
    assert message.properties["delivery_mode"] == 1  # transient by default


def test_persistent_messages_and_a_durable_exchange_are_options(rabbit_url):
    name = f"test-durable-{uuid.uuid4().hex[:10]}"
    handler = AmqpLogHandler(
        url=rabbit_url, exchange=name, exchange_durable=True, persistent=True, flush_interval=0.01
    )
    broker = Broker()
    logger = fresh_logger(handler)
    try:
        logger.info("the handler declares its exchange on the first write")
        assert handler.flush(5)
        queue = broker.channel.queue_declare("", exclusive=True)[0]
        broker.channel.exchange_declare(name, "topic", durable=True, passive=True)
        broker.channel.queue_bind(queue, name, "#")
        logger.info("kept on disk")
        assert handler.flush(5)
        [message] = broker.messages(queue)
        assert message.properties["delivery_mode"] == 2
    finally:
        handler.close()
        broker.channel.exchange_delete(name)
        broker.close()


def test_settings_and_dictconfig_configure_the_handler(broker, rabbit_url):
    queue = broker.queue("#")
    settings = {
        "AMQP_URL": rabbit_url,
        "AMQP_EXCHANGE": broker.exchange,
        "QUEUE_SIZE": 123,
        "URL": "redis://127.0.0.1:1/0",
        "STREAM_MAXLEN": 5,
    }  # Redis-only: ignored
    with override_settings(REDIS_LOGSTREAM=settings):
        logging.config.dictConfig(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "handlers": {
                    "rabbit": {
                        "class": "redis_logstream.amqp.AmqpLogHandler",
                        "flush_interval": 0.01,
                    }
                },
                "loggers": {
                    "configured": {"handlers": ["rabbit"], "level": "INFO", "propagate": False}
                },
            }
        )
        handler = logging.getLogger("configured").handlers[0]
        try:
            assert handler.options.queue_size == 123 and handler.options.exchange == broker.exchange
            logging.getLogger("configured").info("from dictConfig")
            assert handler.flush(5)
            assert broker.bodies(queue) == ["from dictConfig"]
        finally:
            logging.getLogger("configured").handlers.clear()
            handler.close()


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"exchange": ""}, ValueError, "exchange must be a non-empty str"),
        ({"url": "http://localhost"}, ValueError, "not an AMQP URL"),
        ({"persistent": "yes"}, ValueError, "persistent must be a bool"),
        ({"stream_maxlen": 5}, TypeError, "Unknown redis_logstream option 'stream_maxlen'"),
        ({"queue_size": 0}, ValueError, "queue_size must be an int >= 1"),
    ],
)
def test_bad_options_fail_at_configuration(options, error, message):
    with pytest.raises(error, match=message):
        AmqpLogHandler(**options)


def test_tail_amqp_prints_what_the_patterns_select(broker, handler, rabbit_url):
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "redis_logstream.cli",
            "tail",
            "--amqp",
            rabbit_url,
            "--exchange",
            broker.exchange,
            "--bind",
            "*.ERROR.#",
            "--json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "listening to" in tail.stderr.readline()  # bound: what is published now arrives
        emit_mix("shop", handler)
        time.sleep(0.5)
    finally:
        tail.send_signal(signal.SIGINT)
        out, err = tail.communicate(timeout=10)
    assert tail.returncode == 0, err
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == 9 and {r["level"] for r in records} == {"ERROR"}


def test_manage_py_check_reports_bad_amqp_handler_options():
    from redis_logstream.checks import check_handlers

    logging_config = {
        "version": 1,
        "handlers": {
            "rabbit": {"class": "redis_logstream.amqp.AmqpLogHandler", "exchnage": "logs"},
            "rabbit2": {"class": "redis_logstream.amqp.AmqpLogHandler", "persistent": "no"},
            "fine": {"class": "redis_logstream.amqp.AmqpLogHandler", "exchange": "logs"},
        },
    }
    with override_settings(LOGGING=logging_config):
        found = [(m.id, m.obj) for m in check_handlers()]
    assert ("redis_logstream.E002", "LOGGING['handlers']['rabbit']") in found
    assert ("redis_logstream.E003", "LOGGING['handlers']['rabbit2']") in found
    assert not [obj for _id, obj in found if "fine" in obj]


def test_tail_uses_a_durable_exchange_as_the_handler_made_it(rabbit_url):
    name = f"test-durable-{uuid.uuid4().hex[:10]}"
    broker = Broker()
    broker.channel.exchange_declare(name, "topic", durable=True, auto_delete=False)
    tail = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "redis_logstream.cli",
            "tail",
            "--amqp",
            rabbit_url,
            "--exchange",
            name,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert "listening to" in tail.stderr.readline()
    finally:
        tail.send_signal(signal.SIGINT)
        tail.communicate(timeout=10)
        broker.channel.exchange_delete(name)
        broker.close()


def test_an_exchange_declared_otherwise_is_reported_and_nothing_is_lost(rabbit_url):
    name = f"test-durable-{uuid.uuid4().hex[:10]}"
    broker = Broker()
    broker.channel.exchange_declare(name, "topic", durable=True, auto_delete=False)
    handler = AmqpLogHandler(
        url=rabbit_url, exchange=name, flush_interval=0.01, shutdown_timeout=0.2
    )
    try:
        logger = fresh_logger(handler)
        for i in range(5):
            logger.info("record %d", i)
        assert not handler.flush(1)
        stats = handler.stats()
        assert stats["errors"] > 0 and stats["pending"] == 5 and stats["dropped"] == 0
        assert "PRECONDITION_FAILED" in stats["last_error"]
        broker.channel.exchange_delete(name)  # the conflict gone, the kept records go out
        assert handler.flush(10)
        assert handler.stats()["sent"] == 5
    finally:
        handler.close()
        broker.channel.exchange_delete(name)
        broker.close()


# -- long contexts and records that can never be published -------------------

#: A legal username of 28 CJK letters: 259 bytes once encoded.
CJK_USER = "User." + "\u6f22" * 28


def test_long_contexts_are_published_in_order_and_reach_their_bindings(broker, handler):
    longest = "\u00fc" * 128  # 768 bytes once encoded
    everything = broker.queue("#")
    cjk_only = broker.queue(binding_key(context=CJK_USER))
    longest_only = broker.queue(binding_key(context=longest, level="ERROR"))
    logger = fresh_logger(handler)
    expected = []
    for part, context in (("before", CJK_USER), ("between", longest), ("after", None)):
        for i in range(20):
            logger.info("%s %d", part, i)
            expected.append(f"{part} {i}")
        if context is not None:
            with log_context(context):
                logger.error("from %s", context[:4])
            expected.append(f"from {context[:4]}")
    assert handler.flush(5)
    got = broker.messages(everything)
    assert [json.loads(m.body)["message"] for m in got] == expected
    assert max(len(m.delivery_info["routing_key"].encode()) for m in got) <= MAX_KEY_BYTES
    assert [json.loads(m.body)["context"] for m in broker.messages(cjk_only)] == [CJK_USER]
    assert [json.loads(m.body)["context"] for m in broker.messages(longest_only)] == [longest]
    stats = handler.stats()
    assert stats["sent"] == 62 and stats["failed"] == 0 and stats["retries"] == 0


def test_a_record_that_cannot_be_packed_is_counted_and_skipped_its_neighbours_sent_once(
    broker, rabbit_url, monkeypatch, caplog
):
    real = amqp_sink.routing_key

    def routing_key_with_a_bad_one(context, level, logger):
        return "k" * 300 if context == "job_unpackable" else real(context, level, logger)

    monkeypatch.setattr(amqp_sink, "routing_key", routing_key_with_a_bad_one)
    everything = broker.queue("#")
    # A linger long enough that the bad record is in the middle of one batch.
    handler = AmqpLogHandler(url=rabbit_url, exchange=broker.exchange, flush_interval=0.5)
    try:
        logger = fresh_logger(handler)
        for i in range(200):
            logger.info("record %d", i)
            if i == 99:
                with log_context("job_unpackable"):
                    logger.info("never")
        handler.flush(5)  # False: not everything went (a refused last write says so)
        stats = handler.stats()
    finally:
        handler.close()
    assert broker.bodies(everything) == [f"record {i}" for i in range(200)]
    assert stats["sent"] == 200 and stats["failed"] == 1 and stats["pending"] == 0
    assert "format requires 0 <= number <= 255" in stats["last_error"]  # py-amqp's struct.error
    warnings = [r.getMessage() for r in caplog.records if r.name == "redis_logstream"]
    assert any("1 records can never be written and were skipped" in w for w in warnings)


def test_a_timestamp_amqp_cannot_carry_is_sent_as_0(broker, handler):
    everything = broker.queue("#")
    logger = fresh_logger(handler)
    for created in (1e30, -5.0):
        record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "odd clock", (), None)
        record.created = created
        logger.handle(record)
    logger.info("next")
    assert handler.flush(5)
    got = broker.messages(everything)
    assert [json.loads(m.body)["message"] for m in got] == ["odd clock", "odd clock", "next"]
    assert [m.properties["timestamp"] for m in got[:2]] == [0, 0]
