"""Handler options: defaults < ``settings.REDIS_LOGSTREAM`` < keyword arguments.

Every option can be given to the handler (``RedisLogHandler(url=...)`` or
a LOGGING dictConfig entry) or site-wide in ``settings.REDIS_LOGSTREAM``
with upper-case keys.  Values are checked once, when the handler is built,
so a typo fails at start-up with the option's name rather than as lost
records later.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

__all__ = [
    "DEFAULTS",
    "OVERFLOW_POLICIES",
    "Options",
    "ShippingOptions",
    "resolve",
    "resolve_options",
    "site_settings",
]

OVERFLOW_POLICIES = ("drop-new", "drop-old")


@dataclass(frozen=True)
class ShippingOptions:
    """What every handler shares, whatever its broker: the buffer, batching
    and exit (see docs/configuration.md)."""

    queue_size: int = 10000
    overflow: str = "drop-new"
    batch_size: int = 500
    flush_interval: float = 0.05
    shutdown_timeout: float = 2.0
    max_message_bytes: int = 65536
    socket_timeout: float = 2.0

    def __post_init__(self) -> None:
        _check_positive_int(self, "queue_size", "batch_size")
        _check_positive_int(self, "max_message_bytes", minimum=256)
        for name in ("flush_interval", "shutdown_timeout", "socket_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{name} must be a number of seconds >= 0, not {value!r}.")
        if self.socket_timeout == 0:
            raise ValueError("socket_timeout must be > 0: 0 would make every read fail.")
        if self.overflow not in OVERFLOW_POLICIES:
            raise ValueError(
                f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}, not {self.overflow!r}."
            )


@dataclass(frozen=True)
class Options(ShippingOptions):
    """The resolved options of one RedisLogHandler (see docs/configuration.md)."""

    connection: str = "default"
    url: str | None = None
    client: Any = None
    channel_prefix: str = "logs"
    global_channel: str = "global"
    stream_prefix: str = "stream:"
    stream_maxlen: int = 1000
    context_ttl: int | None = 3600
    global_ttl: int | None = 86400
    cluster: bool | None = None
    sharded_pubsub: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_positive_int(self, "stream_maxlen")
        for name in ("context_ttl", "global_ttl"):
            if getattr(self, name) is not None:
                _check_positive_int(self, name)
        for name in ("channel_prefix", "global_channel", "stream_prefix", "connection"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ValueError(f"{name} must be a non-empty str, not {value!r}.")
        if self.cluster is not None and not isinstance(self.cluster, bool):
            raise ValueError(f"cluster must be True, False or None (detect), not {self.cluster!r}.")
        if not isinstance(self.sharded_pubsub, bool):
            raise ValueError(f"sharded_pubsub must be a bool, not {self.sharded_pubsub!r}.")
        if self.url is not None and not isinstance(self.url, str):
            raise ValueError(f"url must be a str, not {type(self.url).__name__}.")


def _check_positive_int(options: Options, *names: str, minimum: int = 1) -> None:
    for name in names:
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an int >= {minimum}, not {value!r}.")


OPTION_NAMES = tuple(f.name for f in fields(Options))
DEFAULTS: Mapping[str, Any] = {f.name: f.default for f in fields(Options)}

#: Site-wide settings that are not handler options (``settings.REDIS_LOGSTREAM``
#: only), with their defaults.
SITE_DEFAULTS: Mapping[str, Any] = {
    # Carry the log context into Celery tasks, and give a task sent without
    # one a job context of its own (see docs/celery.md).
    "celery": True,
    # Expose the handlers' stats() as Prometheus metrics (extra "prometheus").
    "prometheus": False,
    # The live console (docs/console.md): records a new viewer gets first,
    # seconds between heartbeats on an idle stream, and how long one
    # response may last before the browser reconnects (and resumes).
    "stream_history": 100,
    "stream_heartbeat": 15.0,
    "stream_max_age": 300.0,
    # A user's log context: the model name and the username (False), or the
    # primary key, which is never given to another user (docs/security.md).
    "user_context_by_pk": False,
    # Purge a user's log context when the user is deleted (their records in
    # the global and dead-letter streams too) or renamed (docs/security.md).
    "purge_user_contexts": True,
    # Console limits (docs/console.md, docs/security.md): bytes a viewer
    # may have waiting before it is cut off to resume, seconds a write to a
    # viewer may stay stuck before its response is ended, streams one
    # signed-in user may hold open per process (0: no cap), and records a
    # resume from before the retained history replays at most.
    "stream_inbox_bytes": 4 * 1024 * 1024,
    "stream_write_timeout": 30.0,
    "stream_user_limit": 8,
    "stream_replay_max": 500,
}


#: Integer site settings whose smallest sensible value is above 0: an inbox
#: smaller than one record of the largest size (``max_message_bytes``'
#: default) would cut off every viewer of such records.
SITE_MINIMUMS: Mapping[str, int] = {"stream_inbox_bytes": 64 * 1024}


def site_setting(name: str) -> Any:
    """A site-only setting (see SITE_DEFAULTS), from settings or its default."""
    default = SITE_DEFAULTS[name]
    value = site_settings().get(name, default)
    minimum = SITE_MINIMUMS.get(name, 0)
    if isinstance(default, bool):
        valid, kind = isinstance(value, bool), "a bool"
    elif isinstance(default, float):  # seconds: an int will do, zero will not
        valid = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        kind = "a number of seconds > 0"
    else:
        valid = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
        kind = f"an int >= {minimum}"
    if not valid:
        raise ValueError(
            f"settings.REDIS_LOGSTREAM[{name.upper()!r}] must be {kind}, not {value!r}."
        )
    return value


def _unknown(name: str, source: str) -> TypeError:
    known = (*OPTION_NAMES, *SITE_DEFAULTS, *AMQP_SETTINGS)
    close = difflib.get_close_matches(name.lower(), known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return TypeError(f"Unknown redis_logstream option {name!r} in {source}.{hint}")


def site_settings() -> dict[str, Any]:
    """``settings.REDIS_LOGSTREAM`` with lower-case keys, or {} outside Django."""
    try:
        from django.conf import settings
    except ImportError:
        return {}
    if not settings.configured:
        return {}
    raw = getattr(settings, "REDIS_LOGSTREAM", None) or {}
    if not isinstance(raw, Mapping):
        raise ValueError(f"settings.REDIS_LOGSTREAM must be a dict, not {type(raw).__name__}.")
    return {str(key).lower(): value for key, value in raw.items()}


#: settings.REDIS_LOGSTREAM keys of the AMQP handler, and its option names.
AMQP_SETTINGS: Mapping[str, str] = {
    "amqp_url": "url",
    "amqp_exchange": "exchange",
    "amqp_exchange_durable": "exchange_durable",
    "amqp_persistent": "persistent",
}
SHIPPING_NAMES = tuple(f.name for f in fields(ShippingOptions))
#: Options of the Redis handler only: an AMQP handler ignores them in settings.
REDIS_ONLY_NAMES = tuple(name for name in OPTION_NAMES if name not in SHIPPING_NAMES)


def resolve_options(overrides: Mapping[str, Any] | None = None) -> Options:
    """Merge defaults, site settings and ``overrides``; raise on any bad name or value."""
    return resolve(Options, overrides, others=AMQP_SETTINGS.keys())


def resolve(
    options_class: type[Any],
    overrides: Mapping[str, Any] | None,
    *,
    renamed: Mapping[str, str] | None = None,
    others: Iterable[str] = (),
) -> Any:
    """``options_class`` from its defaults < site settings < ``overrides``.

    Settings keys are renamed by ``renamed`` (``AMQP_URL`` is an AMQP
    handler's ``url``); those in ``others`` belong to another handler and
    are left alone.  Any other unknown name is a TypeError, a bad value a
    ValueError.
    """
    names = {f.name for f in fields(options_class)}
    renamed = renamed or {}
    skipped = set(others) | set(SITE_DEFAULTS)
    site = {}
    for key, value in site_settings().items():
        if key in skipped:
            continue
        key = renamed.get(key, key)
        if key not in names:
            raise _unknown(key, "settings.REDIS_LOGSTREAM")
        site[key] = value
    merged: dict[str, Any] = dict(site)
    for name, value in dict(overrides or {}).items():
        if name in SITE_DEFAULTS:
            raise TypeError(
                f"{name!r} is a site setting, not a handler option: put "
                f"{name.upper()!r} in settings.REDIS_LOGSTREAM."
            )
        if name not in names:
            raise _unknown(name, "the handler's arguments")
        merged[name] = value
    return options_class(**merged)
