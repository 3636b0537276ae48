"""Choosing the topology: URLs, options and aliases for Cluster and Sentinel.

No server is needed to tell what a configuration means; these run without
one (what the handler then does on a real cluster is in test_cluster.py).
"""

from __future__ import annotations

import pytest
from django.test import override_settings
from redis.sentinel import SentinelConnectionPool

from redis_logstream import RedisLogHandler
from redis_logstream.conf import Options
from redis_logstream.naming import Names
from redis_logstream.redis.cluster_sink import ClusterSink
from redis_logstream.redis.connection import names_for, uses_cluster
from redis_logstream.redis.sink import RedisSink
from redis_logstream.redis.topology import client_for_url, clone, connection_kwargs


def test_a_cluster_url_gives_hash_tagged_names_and_the_cluster_sink() -> None:
    handler = RedisLogHandler(url="redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    assert handler.names == Names(hash_tags=True)
    assert isinstance(handler.shipper.sink, ClusterSink)
    handler.close()


def test_a_plain_url_keeps_the_names_existing_consumers_use() -> None:
    handler = RedisLogHandler(url="redis://127.0.0.1:7000/0")
    assert handler.names.stream("User.alice") == "stream:logs:User.alice"
    assert type(handler.shipper.sink) is RedisSink
    handler.close()


def test_cluster_true_turns_a_plain_url_into_a_startup_node() -> None:
    options = Options(url="redis://127.0.0.1:7000/0", cluster=True)
    assert names_for(options).hash_tags


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"url": "redis+cluster://127.0.0.1:7000", "cluster": False}, "cluster=False, but"),
        ({"url": "unix:///tmp/redis.sock", "cluster": True}, "cluster=True needs a redis://"),
        ({"cluster": "yes"}, "cluster must be True, False or None"),
        ({"sharded_pubsub": 1}, "sharded_pubsub must be a bool"),
    ],
)
def test_contradictory_topology_options_fail_at_configuration(options, message) -> None:
    with pytest.raises(ValueError, match=message):
        RedisLogHandler(**options)


def test_an_alias_whose_client_is_redis_cluster_is_a_cluster() -> None:
    caches = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "redis://127.0.0.1:7000,redis://127.0.0.1:7001",
            "OPTIONS": {"REDIS_CLIENT_CLASS": "redis.cluster.RedisCluster"},
        }
    }
    with override_settings(CACHES=caches):
        assert uses_cluster(Options(connection="default"))
    caches["default"]["OPTIONS"] = {}
    with override_settings(CACHES=caches):
        assert not uses_cluster(Options(connection="default"))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis+cluster://", "no HOST:PORT given"),
        ("redis+cluster://127.0.0.1:70x0", "bad port in '127.0.0.1:70x0'"),
        ("redis+cluster://127.0.0.1:7000/3", "a Redis Cluster has only database 0"),
        ("redis+sentinel://127.0.0.1:26379", "give the service name"),
        ("redis+sentinel://u:secret@127.0.0.1:26379/a/0/x", "give the service name"),
    ],
)
def test_bad_topology_urls_say_what_is_wrong(url, message) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        client_for_url(url, {})
    assert "secret" not in str(caught.value)


def test_a_sentinel_url_names_the_service_the_database_and_both_credentials() -> None:
    client = client_for_url(
        "redis+sentinel://app:pw@127.0.0.1:26379,[::1]:26380/my%20primary/2"
        "?sentinel_password=sp&socket_timeout=0.5",
        {"socket_connect_timeout": 0.25},
    )
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "my primary"
    kwargs = connection_kwargs(client)
    assert (kwargs["db"], kwargs["username"], kwargs["password"]) == (2, "app", "pw")
    assert kwargs["socket_timeout"] == 0.5 and kwargs["socket_connect_timeout"] == 0.25
    manager = pool.sentinel_manager
    addresses = [s.connection_pool.connection_kwargs for s in manager.sentinels]
    assert [(a["host"], a["port"]) for a in addresses] == [("127.0.0.1", 26379), ("::1", 26380)]
    assert {a.get("password") for a in addresses} == {"sp"}


def test_a_clone_of_a_sentinel_client_asks_the_same_sentinels() -> None:
    base = client_for_url("redis+sentinel://127.0.0.1:26379/svc", {"socket_timeout": 1.0})
    copy = clone(base, "redis_logstream:test", max_connections=3, socket_timeout=9.0)
    assert copy.connection_pool.sentinel_manager is base.connection_pool.sentinel_manager
    assert copy.connection_pool.connection_class is base.connection_pool.connection_class
    assert copy.connection_pool.max_connections == 3
    assert connection_kwargs(copy)["socket_timeout"] == 9.0
    assert connection_kwargs(copy)["client_name"] == "redis_logstream:test"


def test_manage_py_check_reports_a_contradiction_as_e001() -> None:
    from redis_logstream.checks import _check_options

    found = _check_options("LOGGING", {"url": "redis+cluster://10.0.0.1:6379", "cluster": False})
    assert [(m.id, m.msg) for m in found] == [
        (
            "redis_logstream.E001",
            "RedisLogHandler: cluster=False, but the Redis given is a "
            "cluster (leave CLUSTER unset to follow the client).",
        )
    ]


@pytest.mark.parametrize(
    ("url", "said"),
    [
        (
            "redis+cluster://u:secret@127.0.0.1:1",
            "cannot reach Redis at redis+cluster://u:***@127.0.0.1:1: ",
        ),
        (
            "redis+sentinel://127.0.0.1:1/svc",
            "cannot reach Redis at the primary 'svc' of the sentinels "
            "127.0.0.1:1: No master found for 'svc' (",  # then redis-py's own words
        ),
    ],
)
def test_tail_says_in_one_line_that_a_cluster_or_sentinels_are_unreachable(url, said, capsys):
    from redis_logstream.cli import main

    assert main(["tail", "--url", url, "--global"]) == 1
    err = capsys.readouterr().err
    assert said in err and "secret" not in err and len(err.splitlines()) == 1
