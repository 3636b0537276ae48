"""Small helpers shared by the handler tests."""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from redis_logstream import RedisLogHandler
from redis_logstream.shipping import lifecycle

_names = itertools.count()


def fresh_logger(handler: logging.Handler, level: int = logging.DEBUG) -> logging.Logger:
    """A logger of its own that sends only to ``handler``."""
    logger = logging.getLogger(f"tests.logger{next(_names)}")
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False
    return logger


def entries(client: redis.Redis, key: str) -> list[dict[str, Any]]:
    """The decoded records of a stream, oldest first."""
    return [json.loads(fields[b"data"]) for _id, fields in client.xrange(key)]


def messages(client: redis.Redis, key: str) -> list[str]:
    return [entry["message"] for entry in entries(client, key)]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll until ``predicate()`` is truthy; fail with the last value otherwise."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    assert value, f"condition not met within {timeout} s (last value: {value!r})"
    return value


class Handlers:
    """Builds handlers for a test and closes them at teardown."""

    def __init__(self) -> None:
        self.made: list[RedisLogHandler] = []

    def __call__(self, **options: Any) -> RedisLogHandler:
        options.setdefault("flush_interval", 0.01)
        handler = RedisLogHandler(**options)
        self.made.append(handler)
        return handler

    def close(self) -> None:
        """Close every handler the test made.  What one could not deliver
        (its peer was never Redis, or is gone) the test has already judged:
        the exit hook must not wait for it again, nor report it lost at the
        end of the run as if the suite had lost records."""
        for handler in self.made:
            handler.shipper.shutdown(0.5)
            handler.close()
            lifecycle._live.discard(handler.shipper)
