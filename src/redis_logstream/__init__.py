"""Stream a Django site's log records to Redis in real time.

The public API; everything else is an implementation detail.

``RedisLogHandler`` and ``consume`` are resolved on first use (PEP 562), so
that ``import redis_logstream.amqp`` does not load the Redis sink stack;
``from redis_logstream import RedisLogHandler`` and the dotted path
``"redis_logstream.RedisLogHandler"`` in a LOGGING dict work as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from redis_logstream.context import (
    get_log_context,
    get_user_context,
    job_id_factory,
    log_context,
    reset_log_context,
    set_log_context,
    user_id_context,
)

if TYPE_CHECKING:
    from redis_logstream.consumers.consumer import consume
    from redis_logstream.redis.handler import RedisLogHandler

__all__ = [
    "RedisLogHandler",
    "consume",
    "get_log_context",
    "get_user_context",
    "job_id_factory",
    "log_context",
    "reset_log_context",
    "set_log_context",
    "user_id_context",
]

__version__ = "0.1.0"

_LAZY = {
    "RedisLogHandler": "redis_logstream.redis.handler",
    "consume": "redis_logstream.consumers.consumer",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value  # resolved once; later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
