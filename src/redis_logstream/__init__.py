"""Stream a Django site's log records to Redis in real time.

The public API; everything else is an implementation detail.
"""

from .consumer import consume
from .context import (
    get_log_context,
    get_user_context,
    job_id_factory,
    log_context,
    reset_log_context,
    set_log_context,
    user_id_context,
)
from .handler import RedisLogHandler

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
