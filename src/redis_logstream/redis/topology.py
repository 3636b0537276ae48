"""Past one Redis: clients for Redis Cluster and for Sentinel-managed primaries.

The handler and the readers take one URL (or one django-redis alias) and
must end up talking to the right servers whatever the topology:

- ``redis://`` / ``rediss://`` / ``unix://``: one server.
- ``redis+cluster://HOST:PORT[,HOST:PORT...]`` (``rediss+cluster://`` for
  TLS): a Redis Cluster, found from any of the startup nodes.  The client
  is redis-py's ``RedisCluster``; names get hash tags (:mod:`.naming`).
- ``redis+sentinel://HOST:PORT[,HOST:PORT...]/SERVICE[/DB]``
  (``rediss+sentinel://``): the primary that the sentinels name for
  SERVICE, found again after a failover.  Credentials in the URL are the
  primary's; ``?sentinel_username=``/``?sentinel_password=`` are the
  sentinels' own, when they have some.

Every client built here has a pool of its own and no client-side retries:
whoever uses it (the shipper, a follower) decides when to try again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, unquote, urlencode, urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

__all__ = [
    "CLUSTER_SCHEMES",
    "SCHEMES",
    "SENTINEL_SCHEMES",
    "client_for_url",
    "clone",
    "cluster_from_nodes",
    "connection_kwargs",
    "disconnect",
    "is_cluster",
    "safe_url",
    "sentinel_client",
]

CLUSTER_SCHEMES = ("redis+cluster://", "rediss+cluster://")
SENTINEL_SCHEMES = ("redis+sentinel://", "rediss+sentinel://")
SCHEMES = ("redis://", "rediss://", "unix://", *CLUSTER_SCHEMES, *SENTINEL_SCHEMES)

#: Pool options that a cluster client takes per node, or not at all.
_NOT_FOR_CLUSTER = ("retry", "db", "connection_pool")


def is_cluster(client: Any) -> bool:
    """True for a redis-py ``RedisCluster`` (names need hash tags then)."""
    return isinstance(client, RedisCluster)


def connection_kwargs(client: Any) -> dict[str, Any]:
    """The options every new connection of ``client`` gets (address, TLS,
    credentials, timeouts), whatever the topology."""
    if is_cluster(client):
        return dict(client.nodes_manager.connection_kwargs)
    pool = getattr(client, "connection_pool", None)
    return dict(getattr(pool, "connection_kwargs", None) or {})


def _hosts(netloc: str, default_port: int) -> tuple[str, list[tuple[str, int]]]:
    """``user:pass@h1:p1,h2:p2`` -> (``user:pass@``, [(h1, p1), (h2, p2)])."""
    userinfo, _, hostlist = netloc.rpartition("@")
    hosts = []
    for part in filter(None, (p.strip() for p in hostlist.split(","))):
        host, colon, port = part.rpartition(":")
        if not colon or part.endswith("]"):  # no port, or a bare [IPv6]
            host, port = part, ""
        if not port.isdigit() and port:
            raise ValueError(f"bad port in {part!r}")
        hosts.append((host.strip("[]"), int(port) if port else default_port))
    if not hosts:
        raise ValueError("no HOST:PORT given")
    return (userinfo + "@" if userinfo else ""), hosts


def client_for_url(url: str, kwargs: Mapping[str, Any]) -> Any:
    """A client with its own pool for ``url``, in any of the :data:`SCHEMES`.

    ``kwargs`` are pool options (timeouts, keepalive, a ``retry`` that does
    not retry); options in the URL's query win over them.
    """
    if not url.startswith(SCHEMES):
        given = f"not {url.partition('://')[0]}://" if "://" in url else "no scheme given"
        raise ValueError(f"a Redis URL starts with {', '.join(SCHEMES)} ({given})")
    if url.startswith(CLUSTER_SCHEMES):
        return _cluster_from_url(url, kwargs)
    if url.startswith(SENTINEL_SCHEMES):
        return _sentinel_from_url(url, kwargs)
    return redis.Redis(connection_pool=redis.ConnectionPool.from_url(url, **kwargs))


def _cluster_from_url(url: str, kwargs: Mapping[str, Any]) -> RedisCluster:
    parts = urlsplit(url)
    userinfo, hosts = _hosts(parts.netloc, 6379)
    if parts.path.strip("/") not in ("", "0"):
        raise ValueError(f"{safe_url(url)}: a Redis Cluster has only database 0")
    scheme = parts.scheme.replace("+cluster", "")
    host, port = hosts[0]
    first = urlunsplit((scheme, f"{userinfo}{host}:{port}", "/0", parts.query, ""))
    options = redis.connection.parse_url(first)
    return cluster_from_nodes(hosts, {**kwargs, **options})


def cluster_from_nodes(hosts: list[tuple[str, int]], kwargs: Mapping[str, Any]) -> RedisCluster:
    """A ``RedisCluster`` that finds the cluster from any of ``hosts``.

    redis-py's own retries stay off; a redirect (MOVED, ASK) is still
    followed, since that is not a failure but the cluster's routing.  The
    first host is given as a URL because only then does redis-py build each
    node's pool with ``connection_pool_class`` (a blocking pool, say).
    """
    options = {k: v for k, v in kwargs.items() if k not in _NOT_FOR_CLUSTER}
    for key in ("host", "port", "retry_on_timeout"):
        options.pop(key, None)
    tls = _pop_tls(options)  # said by the URL's scheme: redis-py picks the connection class
    (host, port), *others = hosts
    url = f"{'rediss' if tls else 'redis'}://{host}:{port}/0"
    nodes = [ClusterNode(h, p) for h, p in others]
    return RedisCluster(url=url, startup_nodes=nodes, retry=Retry(NoBackoff(), 0), **options)


def _pop_tls(options: dict[str, Any]) -> bool:
    """Whether ``options`` ask for TLS (an SSL connection class, or ``ssl``);
    both are taken out, for the caller to say it its own way."""
    tls = options.pop("connection_class", None) is redis.SSLConnection
    return bool(options.pop("ssl", False)) or tls


def _sentinel_from_url(url: str, kwargs: Mapping[str, Any]) -> redis.Redis:
    parts = urlsplit(url)
    userinfo, hosts = _hosts(parts.netloc, 26379)
    path = [p for p in parts.path.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError(
            f"{safe_url(url)}: give the service name: redis+sentinel://HOST:PORT/SERVICE"
        )
    service = unquote(path[0])
    query = {k: v[-1] for k, v in parse_qs(parts.query).items()}
    sentinel_auth = {
        name: query.pop(f"sentinel_{name}")
        for name in ("username", "password")
        if f"sentinel_{name}" in query
    }
    scheme = parts.scheme.replace("+sentinel", "")
    db = path[1] if len(path) > 1 else "0"
    single = urlunsplit((scheme, f"{userinfo}sentinel:1", f"/{db}", urlencode(query), ""))
    options = {**kwargs, **redis.connection.parse_url(single)}
    return sentinel_client(hosts, service, options, sentinel_auth)


def sentinel_client(
    sentinels: list[tuple[str, int]],
    service: str,
    kwargs: Mapping[str, Any],
    sentinel_kwargs: Mapping[str, Any] | None = None,
) -> redis.Redis:
    """A client of the primary that ``sentinels`` name for ``service``.

    Its connections ask the sentinels where the primary is each time they
    connect, so after a failover the next connection reaches the new one;
    a connection to a primary that was demoted fails (READONLY becomes a
    connection error) instead of writing nowhere.
    """
    options = {k: v for k, v in kwargs.items() if k not in ("host", "port", "connection_pool")}
    if _pop_tls(options):
        options["ssl"] = True  # the pool picks the sentinel-managed TLS connection
    to_sentinels = {
        "socket_timeout": options.get("socket_timeout"),
        "socket_connect_timeout": options.get("socket_connect_timeout"),
        **(sentinel_kwargs or {}),
    }
    manager = Sentinel(sentinels, sentinel_kwargs=to_sentinels)
    return redis.Redis(connection_pool=SentinelConnectionPool(service, manager, **options))


def clone(base: Any, client_name: str, **overrides: Any) -> Any:
    """A client with a pool of its own to ``base``'s servers (same address,
    credentials and TLS; same sentinels or cluster), named ``client_name``
    in ``CLIENT LIST``.  ``overrides`` are pool options (``max_connections``,
    ``socket_timeout``, ``connection_pool_class`` with its ``timeout``)."""
    kwargs = {**connection_kwargs(base), "client_name": client_name, **overrides}
    for own in ("connection_pool", "redis_connect_func"):  # the base's own pool and hook
        kwargs.pop(own, None)
    if is_cluster(base):  # each node's pool is a connection_pool_class
        nodes = [(node.host, node.port) for node in base.get_nodes()]
        return cluster_from_nodes(nodes, kwargs)
    pool_class = kwargs.pop("connection_pool_class", redis.ConnectionPool)
    pool = base.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        # redis-py has no blocking sentinel pool: the pool's limit raises
        # instead of waiting, so a clone keeps the base's limit semantics.
        kwargs.pop("timeout", None)
        kwargs["connection_class"] = pool.connection_class
        own = SentinelConnectionPool(pool.service_name, pool.sentinel_manager, **kwargs)
        return redis.Redis(connection_pool=own)
    pool_options = {k: kwargs.pop(k) for k in ("max_connections", "timeout") if k in kwargs}
    return redis.Redis(
        connection_pool=pool_class(connection_class=pool.connection_class, **pool_options, **kwargs)
    )


def disconnect(client: Any) -> None:
    """Close every connection ``client`` holds (all nodes of a cluster)."""
    if is_cluster(client):
        client.close()
    else:
        client.connection_pool.disconnect()


def safe_url(url: str) -> str:
    """``url`` without its password, for error messages."""
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    if userinfo:
        hostlist = f"{userinfo.partition(':')[0]}:***@{hostlist}"
    return urlunsplit((parts.scheme, hostlist, parts.path, "", ""))
