"""The handler's own Redis client.

The handler never borrows the cache's connection pool: the site's requests
use that one, and a handler that blocked on it, or that its retries
re-sent whole batches through, would slow the very code it serves.  It
builds a pool of its own from the same place (a ``client``, a ``url`` or a
django-redis cache alias), with short socket timeouts and no client-side
retries: the shipper alone decides when to try again.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redis_logstream.conf import Options
from redis_logstream.naming import Names
from redis_logstream.redis import topology

__all__ = ["ConfigurationError", "client_factory", "names_for", "pool_kwargs", "uses_cluster"]


def _run_connection_constructors() -> None:
    """Build (never open) one connection of each kind, here, at import.

    redis-py does part of its set-up the first time a connection object is
    made, in whichever thread makes it: from 7.0 on, each connection looks up
    redis-py's own version for ``CLIENT SETINFO`` with
    ``importlib.metadata.version()``, and Python 3.12 and later import that
    module's parts (``_adapters``, ``_text``, the email parser) only then.
    Made first in the shipper thread, those are imports that a fork
    (gunicorn --preload, Celery prefork) can catch half-done, leaving the
    child without Redis for good.  Run once here, by the thread that imports
    the library, whatever a constructor loads is loaded before any fork,
    whichever names a Python or redis-py release gives it.
    """
    for kind in (redis.Connection, redis.SSLConnection, redis.UnixDomainSocketConnection):
        with contextlib.suppress(redis.RedisError):  # e.g. a Python built without ssl
            kind()


_run_connection_constructors()


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


def client_from_url(url: str, socket_timeout: float, **extra: Any) -> Any:
    """A client with its own pool for ``url`` (any of topology.SCHEMES)."""
    kwargs = for_scheme(url, {**extra, **pool_kwargs(socket_timeout)})
    return topology.client_for_url(url, kwargs)


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
    elif url.startswith("rediss") and not certificates_unchecked(url, kwargs):
        kwargs.setdefault("ssl_check_hostname", True)
    return kwargs


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


_PLAIN_SCHEMES = ("redis://", "rediss://", "unix://")
_POOL_KEYS = frozenset(
    {
        "username",
        "password",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
        "ssl_check_hostname",
        "db",
        "protocol",
    }
)


def _locations(alias: str, cache: Mapping[str, Any]) -> list[str]:
    """The Redis URLs of a cache (primary first), or ConfigurationError."""
    location = cache.get("LOCATION")
    if isinstance(location, str):
        locations = [part.strip() for part in location.split(",") if part.strip()]
    elif isinstance(location, (list, tuple)):
        locations = list(location)
    else:
        locations = []
    if not locations or not all(
        isinstance(url, str) and url.startswith(_PLAIN_SCHEMES) for url in locations
    ):
        raise ConfigurationError(
            f"RedisLogHandler: CACHES[{alias!r}]['LOCATION'] is not a redis URL "
            f"({location!r}); give url= instead."
        )
    return locations


def _cache_options(cache: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).upper(): v for k, v in (cache.get("OPTIONS") or {}).items()}


def _alias_is_cluster(cache: Mapping[str, Any]) -> bool:
    """A cache whose client is redis-py's RedisCluster (django-redis has no
    cluster client of its own; sites set ``REDIS_CLIENT_CLASS``)."""
    options = _cache_options(cache)
    named = (options.get("REDIS_CLIENT_CLASS"), options.get("CLIENT_CLASS"))
    return any(
        (isinstance(name, str) and "Cluster" in name.rpartition(".")[2])
        or (isinstance(name, type) and issubclass(name, topology.RedisCluster))
        for name in named
    )


def _client_from_cache(alias: str, socket_timeout: float, cluster: bool) -> Any:
    """A client of our own built from a django-redis (or Django) cache's
    settings: one server, the sentinels' primary or a cluster."""
    cache = _cache_settings(alias)
    locations = _locations(alias, cache)
    options = _cache_options(cache)
    extra: dict[str, Any] = {}
    if options.get("PASSWORD"):
        extra["password"] = options["PASSWORD"]
    for key, value in (options.get("CONNECTION_POOL_KWARGS") or {}).items():
        if key in _POOL_KEYS:
            extra[key] = value
    if options.get("SENTINELS"):  # django-redis's SentinelConnectionFactory
        service = urlsplit(locations[0])
        kwargs = {
            **for_scheme(locations[0], {**extra, **pool_kwargs(socket_timeout)}),
            "db": int(service.path.strip("/") or 0),
            **({"ssl": True} if service.scheme == "rediss" else {}),
        }
        sentinel_kwargs = dict(options.get("SENTINEL_KWARGS") or {})
        sentinels = [tuple(address) for address in options["SENTINELS"]]
        return topology.sentinel_client(sentinels, service.hostname or "", kwargs, sentinel_kwargs)
    if cluster:
        kwargs = for_scheme(locations[0], {**extra, **pool_kwargs(socket_timeout)})
        kwargs.update(redis.connection.parse_url(locations[0]))
        hosts = [(u.hostname or "localhost", u.port or 6379) for u in map(urlsplit, locations)]
        return topology.cluster_from_nodes(hosts, kwargs)
    return client_from_url(locations[0], socket_timeout, **extra)


def uses_cluster(options: Options) -> bool:
    """Whether the handler's Redis is a cluster (and its names hash-tagged):
    ``cluster`` when given, else what the client, URL or alias says."""
    detected = False
    client = options.client
    if client is not None:
        detected = topology.is_cluster(_import(client) if isinstance(client, str) else client)
    elif options.url is not None:
        detected = options.url.startswith(topology.CLUSTER_SCHEMES)
    else:
        try:
            detected = _alias_is_cluster(_cache_settings(options.connection))
        except ConfigurationError:
            detected = False
    if options.cluster is None:
        return detected
    if options.cluster is False and detected:
        raise ConfigurationError(
            "RedisLogHandler: cluster=False, but the Redis given is a cluster "
            "(leave CLUSTER unset to follow the client)."
        )
    return options.cluster


def names_for(options: Options) -> Names:
    """The channel and stream names of ``options`` (hash-tagged on a cluster)."""
    return Names(
        options.channel_prefix,
        options.global_channel,
        options.stream_prefix,
        hash_tags=uses_cluster(options),
    )


def client_factory(options: Options) -> Callable[[], Any]:
    """Check the connection options now; return what builds the client later.

    The client is built in the worker, on the first write, so configuring
    logging never touches the network; a missing alias or URL fails here,
    at configuration time, where it is easy to see.
    """
    timeout = options.socket_timeout
    cluster = uses_cluster(options)
    if options.client is not None:
        client = options.client
        if isinstance(client, str):
            client = _import(client)
        if _is_factory(client):
            return lambda: _checked(client(), cluster)
        _checked(client, cluster)
        return lambda: client
    if options.url is not None:
        url = options.url
        if not url.startswith(topology.SCHEMES):
            raise ConfigurationError(
                f"RedisLogHandler: url={url!r} is not a Redis URL "
                f"({', '.join(s + '...' for s in topology.SCHEMES)})."
            )
        if cluster and not url.startswith(topology.CLUSTER_SCHEMES):
            if not url.startswith(("redis://", "rediss://")):
                raise ConfigurationError(
                    f"RedisLogHandler: cluster=True needs a redis:// or redis+cluster:// URL, "
                    f"not {url.partition('://')[0]}://."
                )
            url = url.replace("://", "+cluster://", 1)  # cluster=True: a startup node
        return lambda: client_from_url(url, timeout)
    alias = options.connection
    _locations(alias, _cache_settings(alias))
    return lambda: _client_from_cache(alias, timeout, cluster)


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(f"RedisLogHandler: cannot import client={path!r}: {exc}") from exc


def _checked(client: Any, cluster: bool) -> Any:
    if not (hasattr(client, "connection_pool") or topology.is_cluster(client)):
        raise ConfigurationError(
            f"RedisLogHandler: client= must be a redis.Redis or redis.cluster.RedisCluster "
            f"client (or a callable returning one), not {type(client).__name__}."
        )
    if topology.is_cluster(client) != cluster:
        raise ConfigurationError(
            "RedisLogHandler: client= gave a RedisCluster, but the handler was built for one "
            "server: set cluster=True (REDIS_LOGSTREAM['CLUSTER']) so that its names carry "
            "hash tags."
            if cluster is False
            else "RedisLogHandler: cluster=True, but client= gave a single-server client."
        )
    return client


def _is_factory(client: Any) -> bool:
    return callable(client) and not (
        hasattr(client, "connection_pool") or topology.is_cluster(client)
    )
