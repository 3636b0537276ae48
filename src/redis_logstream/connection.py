"""The handler's own Redis client.

The handler never borrows the cache's connection pool: the site's requests
use that one, and a handler that blocked on it, or that its retries
re-sent whole batches through, would slow the very code it serves.  It
builds a pool of its own from the same place (a ``client``, a ``url`` or a
django-redis cache alias), with short socket timeouts and no client-side
retries: the shipper alone decides when to try again.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from .conf import Options

__all__ = ["ConfigurationError", "client_factory", "pool_kwargs"]


class ConfigurationError(ValueError):
    """The handler cannot tell which Redis to write to."""


def pool_kwargs(socket_timeout: float) -> dict[str, Any]:
    """What the handler's pool adds to any URL or cache settings."""
    return {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
        "health_check_interval": 0,
        "max_connections": 4,
    }


def client_from_url(url: str, socket_timeout: float, **extra: Any) -> redis.Redis:
    """A client with its own pool for ``url`` (redis://, rediss://, unix://)."""
    kwargs = for_scheme(url, {**extra, **pool_kwargs(socket_timeout)})
    return redis.Redis(connection_pool=redis.ConnectionPool.from_url(url, **kwargs))


def for_scheme(url: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Pool options fitted to the URL's scheme.

    A Unix socket has no TCP keepalive (redis-py refuses the option there),
    and a ``rediss://`` certificate must name the host, as redis-py 6 and
    later check by default and 5.x does not; options in the URL's query
    (``?ssl_check_hostname=false``) still win.
    """
    kwargs = dict(kwargs)
    if url.startswith("unix://"):
        kwargs.pop("socket_keepalive", None)
    elif url.startswith("rediss://") and not certificates_unchecked(url, kwargs):
        kwargs.setdefault("ssl_check_hostname", True)
    return kwargs


def cloned_client(
    base: Any, client_name: str, *, pool_class: type = redis.ConnectionPool, **overrides: Any
) -> redis.Redis:
    """A client with a pool of its own to ``base``'s server (same address,
    credentials and TLS), named ``client_name`` in ``CLIENT LIST``."""
    pool = base.connection_pool
    kwargs = {**pool.connection_kwargs, "client_name": client_name}
    pool_options = {k: overrides.pop(k) for k in ("max_connections", "timeout") if k in overrides}
    kwargs.update(overrides)
    return redis.Redis(
        connection_pool=pool_class(connection_class=pool.connection_class, **pool_options, **kwargs)
    )


def certificates_unchecked(url: str, kwargs: Mapping[str, Any] | None = None) -> bool:
    """Certificate checking is off (ssl_cert_reqs=none): there is no
    certificate to match the host against, and Python refuses to try."""
    default = (kwargs or {}).get("ssl_cert_reqs")
    asked = parse_qs(urlsplit(url).query).get("ssl_cert_reqs", [default])
    return any(
        value is not None and str(value).lower() in {"none", "cert_none", "verifymode.cert_none"}
        for value in asked
    )


def _cache_settings(alias: str) -> Mapping[str, Any]:
    try:
        from django.conf import settings
    except ImportError as exc:
        raise ConfigurationError(
            "RedisLogHandler needs url= or client= when Django is not installed."
        ) from exc
    if not settings.configured:
        raise ConfigurationError(
            "RedisLogHandler needs url= or client= when Django settings are not configured "
            f"(it would otherwise read the cache alias {alias!r} from settings.CACHES)."
        )
    caches = getattr(settings, "CACHES", {}) or {}
    if alias not in caches:
        known = ", ".join(sorted(caches)) or "none"
        raise ConfigurationError(
            f"RedisLogHandler: settings.CACHES has no alias {alias!r} (aliases: {known}). "
            "Set REDIS_LOGSTREAM['CONNECTION'] to a django-redis cache alias, or give url=."
        )
    return caches[alias]


_SCHEMES = ("redis://", "rediss://", "unix://")


def _cache_location(alias: str, cache: Mapping[str, Any]) -> str:
    """The (primary) Redis URL of a cache, or ConfigurationError."""
    location = cache.get("LOCATION")
    if isinstance(location, str):
        location = location.split(",")[0].strip()  # django-redis: primary first
    elif isinstance(location, (list, tuple)) and location:
        location = location[0]
    if not isinstance(location, str) or not location.startswith(_SCHEMES):
        raise ConfigurationError(
            f"RedisLogHandler: CACHES[{alias!r}]['LOCATION'] is not a redis URL "
            f"({location!r}); give url= instead."
        )
    return location


def _client_from_cache(alias: str, socket_timeout: float) -> redis.Redis:
    """A client of our own built from a django-redis (or Django) cache's settings."""
    cache = _cache_settings(alias)
    location = _cache_location(alias, cache)
    options = {str(k).upper(): v for k, v in (cache.get("OPTIONS") or {}).items()}
    extra: dict[str, Any] = {}
    if options.get("PASSWORD"):
        extra["password"] = options["PASSWORD"]
    for key, value in (options.get("CONNECTION_POOL_KWARGS") or {}).items():
        if key in {"username", "password", "ssl_cert_reqs", "ssl_ca_certs", "ssl_certfile",
                   "ssl_keyfile", "ssl_check_hostname", "db", "protocol"}:
            extra[key] = value
    return client_from_url(location, socket_timeout, **extra)


def client_factory(options: Options) -> Callable[[], Any]:
    """Check the connection options now; return what builds the client later.

    The client is built in the worker, on the first write, so configuring
    logging never touches the network; a missing alias or URL fails here,
    at configuration time, where it is easy to see.
    """
    timeout = options.socket_timeout
    if options.client is not None:
        client = options.client
        if isinstance(client, str):
            client = _import(client)
        if _is_factory(client):
            return lambda: _checked(client())
        _checked(client)
        return lambda: client
    if options.url is not None:
        url = options.url
        if not url.startswith(_SCHEMES):
            raise ConfigurationError(f"RedisLogHandler: url={url!r} is not a redis:// URL.")
        return lambda: client_from_url(url, timeout)
    alias = options.connection
    _cache_location(alias, _cache_settings(alias))
    return lambda: _client_from_cache(alias, timeout)


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"RedisLogHandler: cannot import client={path!r}: {exc}") from exc


def _checked(client: Any) -> Any:
    if not hasattr(client, "connection_pool"):
        raise ConfigurationError(
            f"RedisLogHandler: client= must be a redis.Redis client (or a callable returning "
            f"one), not {type(client).__name__}; Redis Cluster clients are not supported yet."
        )
    return client


def _is_factory(client: Any) -> bool:
    return callable(client) and not hasattr(client, "connection_pool")
