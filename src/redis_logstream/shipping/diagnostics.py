"""How the library speaks about itself without feeding its own handlers.

Diagnostics go to the ``redis_logstream`` logger, so they reach the site's
console or file handlers like any other warning, but they are logged under
the internal context, which every RedisLogHandler drops.  That is what
keeps a dying Redis from filling the buffer with reports about itself.
"""

from __future__ import annotations

import logging
import time

from redis_logstream.context import INTERNAL, user_id_context

__all__ = ["RateLimiter", "logger", "report"]

logger = logging.getLogger("redis_logstream")


def report(level: int, message: str, *args: object, exc_info: bool = False) -> None:
    """Log ``message % args`` on the library's logger, never into a RedisLogHandler."""
    token = user_id_context.set(INTERNAL)
    try:
        logger.log(level, message, *args, exc_info=exc_info)
    except Exception:  # a broken third-party handler must not break shipping
        pass
    finally:
        user_id_context.reset(token)


class RateLimiter:
    """Allows one event per ``interval`` seconds: a flood of drops or errors
    becomes one line a minute, not one per record."""

    __slots__ = ("_next", "interval")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next = 0.0

    def ready(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.interval
        return True
