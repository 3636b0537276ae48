"""Writing real records for the reader and command tests.

Records go through a real RedisLogHandler (the ``handlers`` fixture) to a
real redis-server, so the readers are tested on exactly what the handler
stores; :meth:`Writer.flush` waits until they are in Redis.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from redis_logstream import RedisLogHandler, log_context

REPO = Path(__file__).resolve().parents[2]


class Writer:
    """Logs through ``handler`` under any logger name, level and context."""

    def __init__(self, handler: RedisLogHandler) -> None:
        self.handler = handler
        self._loggers: dict[str, logging.Logger] = {}

    def logger(self, name: str) -> logging.Logger:
        """A logger outside the global hierarchy that sends only to the handler."""
        if name not in self._loggers:
            logger = logging.Logger(name, logging.DEBUG)
            logger.addHandler(self.handler)
            self._loggers[name] = logger
        return self._loggers[name]

    def __call__(
        self,
        message: str,
        context: str | None = None,
        *,
        level: int = logging.INFO,
        logger: str = "app",
        flush: bool = True,
        **kwargs: Any,
    ) -> None:
        if context is None:
            self.logger(logger).log(level, message, **kwargs)
        else:
            with log_context(context):
                self.logger(logger).log(level, message, **kwargs)
        if flush:
            self.flush()

    def flush(self) -> None:
        assert self.handler.flush(5), "records did not reach Redis"


class CountingClient:
    """A client that notes the COUNT of every range read it passes on."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.reads: list[tuple[str, int | None]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def xrange(self, *args: Any, count: int | None = None) -> Any:
        self.reads.append(("xrange", count))
        return self.client.xrange(*args, count=count)

    def xrevrange(self, *args: Any, count: int | None = None) -> Any:
        self.reads.append(("xrevrange", count))
        return self.client.xrevrange(*args, count=count)


def fill(client: redis.Redis, key: str, total: int, *, first: int = 0) -> None:
    """``total`` entries m<first>.. (every third one an ERROR) written straight
    to the stream: many entries, fast."""
    pipe = client.pipeline(transaction=False)
    for i in range(first, first + total):
        levelno = logging.ERROR if i % 3 == 0 else logging.INFO
        record = {"message": f"m{i}", "levelno": levelno, "level": logging.getLevelName(levelno)}
        pipe.xadd(key, {"data": json.dumps(record)})
        if len(pipe) == 2000:
            pipe.execute()
    pipe.execute()


def manage(*args: str, redis_url: str, **kwargs: Any) -> subprocess.Popen[str]:
    """``python manage.py ARGS`` of the testproject, against ``redis_url``."""
    env = {**os.environ, "REDIS_URL": redis_url, "TESTPROJECT_LOG_CONSOLE": "0"}
    return subprocess.Popen(
        [sys.executable, str(REPO / "manage.py"), *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )
