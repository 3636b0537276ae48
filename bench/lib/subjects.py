"""The handlers under test, and the one logging call they all receive.

Every part of the benchmark measures the same four handlers on the same call
with the same formatter; this module is the single place that says what they
are, how each is built, and how to wait until what it was given has arrived
(each handler has its own notion of "done": nothing, a QueueListener's thread,
or a Redis server).
"""

from __future__ import annotations

import contextlib
import json
import logging
import logging.handlers
import os
import queue
import socket
from collections.abc import Iterator
from typing import Any

import redis

from redis_logstream import RedisLogHandler, get_log_context

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
MESSAGE = "user %s did %s in %.2f ms"
CONTEXT = "User.alice"
LOGGER_NAME = "bench"

HANDLERS = ("format-only", "queue", "naive", "ours")
LABELS = {
    "format-only": "format-only",
    "queue": "QueueHandler",
    "naive": "naive redis-py",
    "ours": "RedisLogHandler",
}
#: The handlers that store every record in Redis (checked there, and whose
#: share of Redis's CPU is measured).
REDIS_HANDLERS = ("naive", "ours")
QUEUE_SIZE = 200_000
STREAM_MAXLEN = 200_000
GLOBAL_STREAM = "stream:logs:global"

#: Under callgrind everything runs some 50 times slower: a generous limit.
FLUSH_TIMEOUT = 600.0


class FormatOnlyHandler(logging.Handler):
    """The floor: any handler turns the record into text at least once."""

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)


class NaiveRedisHandler(logging.Handler):
    """A hand-rolled Redis handler: one pipeline round trip per record.

    It writes what RedisLogHandler writes (the same JSON fields, to the
    context's and the global channel and stream), so that the Redis side of
    the comparison is like for like; only the way of getting there differs.
    """

    def __init__(self, url: str) -> None:
        super().__init__()
        self.client = redis.Redis.from_url(url)
        self.pod = os.environ.get("HOSTNAME") or socket.gethostname()
        self.pid = os.getpid()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            context = get_log_context()
            data = json.dumps(
                {
                    "message": self.format(record),
                    "level": record.levelname,
                    "levelno": record.levelno,
                    "timestamp": record.created,
                    "logger": record.name,
                    "context": context,
                    "pod": self.pod,
                    "pid": self.pid,
                }
            )
            pipe = self.client.pipeline(transaction=False)
            if context is not None:
                pipe.publish(f"logs:{context}", data)
                pipe.xadd(
                    f"stream:logs:{context}", {"data": data}, maxlen=STREAM_MAXLEN, approximate=True
                )
            pipe.publish("logs:global", data)
            pipe.xadd(GLOBAL_STREAM, {"data": data}, maxlen=STREAM_MAXLEN, approximate=True)
            pipe.execute()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        """Give the connections back: the private server is stopped at the end."""
        with contextlib.suppress(Exception):
            self.client.close()
        super().close()


def _formatted(handler: logging.Handler) -> logging.Handler:
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler


class Subject:
    """One handler under test, with what it takes to start it, to wait until
    everything emitted so far has reached its destination, and to close it."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.listener: logging.handlers.QueueListener | None = None
        self.handler: logging.Handler
        if name == "format-only":
            self.handler = _formatted(FormatOnlyHandler())
        elif name == "queue":
            # The documented pattern: the QueueHandler merges the message
            # (prepare() formats with its default "%(message)s"), the
            # listener's handler formats for output.
            records: queue.SimpleQueue[Any] = queue.SimpleQueue()
            self.handler = logging.handlers.QueueHandler(records)
            self.listener = logging.handlers.QueueListener(records, _formatted(FormatOnlyHandler()))
        elif name == "naive":
            self.handler = _formatted(NaiveRedisHandler(url))
        elif name == "ours":
            self.handler = _formatted(
                RedisLogHandler(url=url, queue_size=QUEUE_SIZE, stream_maxlen=STREAM_MAXLEN)
            )
        else:
            raise ValueError(f"unknown handler {name!r}")

    def start(self) -> None:
        """Start what runs in the background (the others start on their own)."""
        if self.listener is not None:
            self.listener.start()

    def stop(self) -> bool:
        """Wait until all records emitted so far are handled or stored.

        The QueueListener has no flush: stop() returns once its thread has
        taken everything in the queue, and the listener is stopped after.
        """
        if self.listener is not None:
            self.listener.stop()
            return True
        if isinstance(self.handler, RedisLogHandler):
            return self.handler.flush(timeout=FLUSH_TIMEOUT)
        return True

    def drain(self) -> bool:
        """Like stop(), but ready for more records afterwards."""
        ok = self.stop()
        self.start()
        return ok

    def close(self) -> None:
        self.stop()
        self.handler.close()

    def stats(self) -> dict[str, Any]:
        if isinstance(self.handler, RedisLogHandler):
            return self.handler.stats()
        return {}


def bench_logger() -> logging.Logger:
    """The one logger every handler is measured on (handlers are swapped)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


#: The call log_records() makes, as text for the results.
CALL = f'logger.info("{MESSAGE}", "alice", "checkout", 12.5)'


def log_records(logger: logging.Logger, count: int) -> None:
    """The measured call, ``count`` times, in the caller's current context.

    The arguments are literals on purpose: this line is what callgrind
    counts, and unpacking a tuple of them would add to every handler's cost.
    """
    for _ in range(count):
        logger.info(MESSAGE, "alice", "checkout", 12.5)


@contextlib.contextmanager
def attached(logger: logging.Logger, handler: logging.Handler) -> Iterator[None]:
    logger.handlers = [handler]
    try:
        yield
    finally:
        logger.handlers = []
