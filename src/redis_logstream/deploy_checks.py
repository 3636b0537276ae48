"""What ``manage.py check --deploy`` warns about: settings that work in
development and lose, keep or expose records in production.

Kept apart from :mod:`.checks` (whose errors stop a site from starting)
because these are judgement calls, each with the reason and the fix.
"""

from __future__ import annotations

from django.core.checks import CheckMessage, Warning

from redis_logstream.conf import Options
from redis_logstream.redis.connection import (
    ConfigurationError,
    _cache_settings,
    _locations,
    certificates_unchecked,
)

__all__ = ["MIN_QUEUE", "MIN_TTL", "risky_options"]

#: Below this, a second of a busy site's records, or of a Redis restart,
#: does not fit in the buffer.
MIN_QUEUE = 1000
#: Below this, a stream expires before a person can read it.
MIN_TTL = 60


def risky_options(where: str, options: Options) -> list[CheckMessage]:
    """The deploy warnings for one handler's resolved options."""
    found: list[CheckMessage] = []

    def warn(message: str, hint: str, number: int) -> None:
        found.append(Warning(message, hint=hint, obj=where, id=f"redis_logstream.W00{number}"))

    if options.queue_size < MIN_QUEUE:
        warn(
            f"queue_size={options.queue_size} holds less than a second of a busy site's "
            f"records: a burst or a Redis restart will {options.overflow.replace('-', ' ')} "
            "records.",
            f"Keep the default (10000) or at least {MIN_QUEUE}; memory is about 200 bytes "
            "per waiting record.",
            2,
        )
    if options.context_ttl is None:
        warn(
            "context_ttl=None keeps every user's and job's stream forever: keys grow with "
            "the number of users and jobs.",
            "Give context_ttl a number of seconds (default 3600); the global stream may "
            "keep global_ttl=None.",
            3,
        )
    for name in ("context_ttl", "global_ttl"):
        ttl = getattr(options, name)
        if ttl is not None and ttl < MIN_TTL:
            warn(
                f"{name}={ttl} s: a stream expires before anyone can read its history.",
                f"Use at least {MIN_TTL} s (defaults: context_ttl 3600, global_ttl 86400).",
                4,
            )
    if options.shutdown_timeout == 0:
        warn(
            "shutdown_timeout=0: records still buffered when a process exits (a deploy, "
            "a worker recycled) are dropped without a try.",
            "Give the handler a second or two (default 2.0) to flush at exit.",
            5,
        )
    url = options.url if options.url is not None else _cache_url(options)
    if url is not None and url.startswith("rediss") and certificates_unchecked(url):
        warn(
            "The Redis URL turns certificate checking off (ssl_cert_reqs=none): anyone on "
            "the path can pose as Redis and read every record.",
            "Give the CA instead: rediss://...?ssl_ca_certs=/path/to/ca.pem "
            "(see docs/security.md).",
            6,
        )
    return found


def _cache_url(options: Options) -> str | None:
    """The URL of the cache alias the handler uses, when it uses one."""
    if options.client is not None:
        return None
    try:
        return _locations(options.connection, _cache_settings(options.connection))[0]
    except ConfigurationError:
        return None
