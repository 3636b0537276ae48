"""Writing real records for the reader and command tests.

Records go through a real RedisLogHandler (the ``handlers`` fixture) to a
real redis-server, so the readers are tested on exactly what the handler
stores; :meth:`Writer.flush` waits until they are in Redis.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from redis_logstream import RedisLogHandler, log_context

REPO = Path(__file__).resolve().parent.parent


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
