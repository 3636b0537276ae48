"""System checks: what start-up does not already refuse.

A handler in LOGGING checks its options (and ``settings.REDIS_LOGSTREAM``)
when Django builds it, in ``django.setup()`` before any check runs, and a
mistake there stops start-up with the option's name: failing at once beats
a site that runs without its logs.  These checks cover the rest, with the
same messages and a hint: ``REDIS_LOGSTREAM`` in a site whose LOGGING builds
no handler (one that only reads), LOGGING entries when Django does not
configure logging from LOGGING (``LOGGING_CONFIG = None``), the console's
settings, read only when someone watches, and the middleware's place.

Ids: ``redis_logstream.E001`` no usable connection, ``E002`` unknown option,
``E003`` invalid value, ``W001`` middleware placed before authentication.
With ``--deploy`` also settings that work but are risky in production:
``W002`` a tiny queue, ``W003`` context streams that never expire, ``W004``
a TTL too short to read, ``W005`` no time to flush at exit, ``W006`` TLS
without certificate checking.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from redis_logstream.conf import (
    AMQP_SETTINGS,
    REDIS_ONLY_NAMES,
    SITE_DEFAULTS,
    resolve,
    resolve_options,
    site_setting,
    site_settings,
)
from redis_logstream.deploy_checks import risky_options
from redis_logstream.redis.connection import ConfigurationError, client_factory

HANDLER_PATHS = {
    "redis_logstream.RedisLogHandler",
    "redis_logstream.redis.handler.RedisLogHandler",
}
AMQP_HANDLER_PATHS = {"redis_logstream.amqp.AmqpLogHandler"}
MIDDLEWARE_PATH = "redis_logstream.middleware.LogContextMiddleware"
AUTH_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"
# Keys of a dictConfig handler entry that logging itself consumes.
_KEYS = {"class", "()", "level", "formatter", "filters", "."}


def _handler_entries(paths: Iterable[str] = HANDLER_PATHS) -> list[tuple[str, dict[str, Any]]]:
    """Where each handler of ``paths`` is configured and its own options;
    for RedisLogHandler, the site settings alone when LOGGING names none."""
    handlers = (getattr(settings, "LOGGING", None) or {}).get("handlers") or {}
    entries = [
        (f"LOGGING['handlers'][{name!r}]", {k: v for k, v in entry.items() if k not in _KEYS})
        for name, entry in handlers.items()
        if isinstance(entry, Mapping) and (entry.get("class") or entry.get("()")) in paths
    ]
    redis = paths is HANDLER_PATHS
    if redis and not entries and getattr(settings, "REDIS_LOGSTREAM", None):
        entries = [("settings.REDIS_LOGSTREAM", {})]
    return entries


def _check_amqp_options(where: str, options: Mapping[str, Any]) -> list[CheckMessage]:
    try:
        from redis_logstream.amqp.handler import AmqpOptions
    except ImportError as exc:
        return [
            Error(
                str(exc),
                hint='pip install "django-redis-logstream[amqp]"',
                obj=where,
                id="redis_logstream.E001",
            )
        ]
    try:
        resolve(AmqpOptions, options, renamed=AMQP_SETTINGS, others=REDIS_ONLY_NAMES)
    except TypeError as exc:
        return [
            Error(
                str(exc),
                hint="See docs/rabbitmq.md for the option names.",
                obj=where,
                id="redis_logstream.E002",
            )
        ]
    except ValueError as exc:
        return [
            Error(
                str(exc),
                hint="See docs/rabbitmq.md for the allowed values.",
                obj=where,
                id="redis_logstream.E003",
            )
        ]
    return []


def _check_options(where: str, options: Mapping[str, Any]) -> list[CheckMessage]:
    try:
        resolved = resolve_options(options)
    except TypeError as exc:
        return [
            Error(
                str(exc),
                hint="See docs/configuration.md for the option names.",
                obj=where,
                id="redis_logstream.E002",
            )
        ]
    except ValueError as exc:
        return [
            Error(
                str(exc),
                hint="See docs/configuration.md for the allowed values.",
                obj=where,
                id="redis_logstream.E003",
            )
        ]
    try:
        client_factory(resolved)
    except ConfigurationError as exc:
        return [
            Error(
                str(exc),
                hint="Give the handler url= (redis://...), client=, or connection= naming a "
                "django-redis cache alias in settings.CACHES.",
                obj=where,
                id="redis_logstream.E001",
            )
        ]
    return []


@register("redis_logstream")
def check_handlers(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Every RedisLogHandler in LOGGING, and REDIS_LOGSTREAM alone, must resolve."""
    messages: list[CheckMessage] = []
    for where, options in _handler_entries():
        messages += _check_options(where, options)
    for where, options in _handler_entries(AMQP_HANDLER_PATHS):
        messages += _check_amqp_options(where, options)
    return messages


@register("redis_logstream", deploy=True)
def check_deployment(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``manage.py check --deploy``: options that work but lose or expose records."""
    messages: list[CheckMessage] = []
    for where, options in _handler_entries():
        try:
            resolved = resolve_options(options)
        except (TypeError, ValueError):
            continue  # an error (E002, E003), not a deploy warning
        messages += risky_options(where, resolved)
    return messages


@register("redis_logstream")
def check_site_settings(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Site-only settings (CELERY, STREAM_*) have the right type and range."""
    messages: list[CheckMessage] = []
    try:
        site_settings()
    except ValueError:
        return messages  # not a dict at all: check_handlers says so once
    for name in SITE_DEFAULTS:
        try:
            site_setting(name)
        except (TypeError, ValueError) as exc:
            messages.append(
                Error(
                    str(exc),
                    hint="See docs/django.md and docs/console.md for the site settings.",
                    obj="settings.REDIS_LOGSTREAM",
                    id="redis_logstream.E003",
                )
            )
    return messages


@register("redis_logstream")
def check_middleware_order(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The middleware reads request.user, which authentication sets."""
    middleware = list(getattr(settings, "MIDDLEWARE", None) or [])
    if MIDDLEWARE_PATH not in middleware:
        return []
    if AUTH_MIDDLEWARE in middleware and middleware.index(AUTH_MIDDLEWARE) < middleware.index(
        MIDDLEWARE_PATH
    ):
        return []
    return [
        Warning(
            "LogContextMiddleware runs before AuthenticationMiddleware: it cannot see the "
            "user, so requests get no log context.",
            hint=f"Put {MIDDLEWARE_PATH!r} after {AUTH_MIDDLEWARE!r} in MIDDLEWARE.",
            obj="settings.MIDDLEWARE",
            id="redis_logstream.W001",
        )
    ]
