"""Sentinel: a primary, a replica and three sentinels, really failed over.

The handler is configured the way a Django site on Sentinel already is
(django-redis's Sentinel settings, read from CACHES), or with a
``redis+sentinel://`` URL; either way it finds the new primary after a
failover and delivers what waited in its buffer.
"""

from __future__ import annotations

import threading
import time

import pytest
from django.core.cache import caches
from django.test import override_settings

from redis_logstream import log_context
from redis_logstream.cli import main as cli_main
from support.helpers import fresh_logger, messages
from support.sentinel_servers import SentinelServers

SERVICE = "logstream"


def django_redis_sentinel_caches(servers: SentinelServers) -> dict:
    """CACHES as django-redis documents them for Sentinel."""
    return {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": f"redis://{servers.service_name}/0",
            "OPTIONS": {
                "CLIENT_CLASS": "django_redis.client.SentinelClient",
                "CONNECTION_FACTORY": "django_redis.pool.SentinelConnectionFactory",
                "SENTINELS": servers.sentinel_addresses,
                "SOCKET_TIMEOUT": 1,
            },
        }
    }


def sentinel_url(servers: SentinelServers) -> str:
    hosts = ",".join(f"{host}:{port}" for host, port in servers.sentinel_addresses)
    return f"redis+sentinel://{hosts}/{servers.service_name}/0"


def log_numbered(logger, start: int, count: int) -> None:
    """Records ``start`` .. ``start + count - 1``, round-robin over three jobs."""
    for i in range(start, start + count):
        with log_context(f"job_{i % 3}"):
            logger.info("record %d", i)


def assert_all_arrived(client, handler, total: int) -> None:
    """Records 0 .. total-1, once each, in order, in every stream."""
    names = handler.names
    assert messages(client, names.global_stream) == [f"record {i}" for i in range(total)]
    for k in range(3):
        expected = [f"record {i}" for i in range(k, total, 3)]
        assert messages(client, names.stream(f"job_{k}")) == expected
    stats = handler.stats()
    assert stats["sent"] == total and stats["dropped"] == 0 and stats["failed"] == 0


class Logging(threading.Thread):
    """Logs numbered records until stopped; ``count`` says how many."""

    def __init__(self, logger, start: int) -> None:
        super().__init__(daemon=True)
        self.logger = logger
        self.count = start
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            log_numbered(self.logger, self.count, 1)
            self.count += 1
            time.sleep(0.002)

    def stop(self) -> int:
        self.stopping.set()
        self.join(5)
        return self.count


def wait_replicated(servers: SentinelServers) -> None:
    """Everything written so far is on the replica too (replication is
    asynchronous: what a primary acknowledged and then lost with it is
    Redis's loss, not one the handler could prevent)."""
    assert servers.primary.client().execute_command("WAIT", 1, 2000) == 1


@pytest.mark.django_db
def test_configured_through_django_redis_it_delivers_across_a_forced_failover(
    handlers, sentinel_servers
):
    servers = sentinel_servers
    # A primary that has lost its replica refuses writes (NOREPLICAS) instead
    # of taking records it will throw away once the sentinels demote it.
    for server in (servers.primary, servers.replica):
        server.client().config_set("min-replicas-to-write", 1)
    with override_settings(CACHES=django_redis_sentinel_caches(servers)):
        caches["default"].set("proof", "the cache itself runs on these settings")
        assert caches["default"].get("proof").startswith("the cache")
        handler = handlers(connection="default", queue_size=100_000, stream_maxlen=100_000)
        logger = fresh_logger(handler)
        log_numbered(logger, 0, 100)
        assert handler.flush(5)
        wait_replicated(servers)
        old = servers.primary
        writer = Logging(logger, start=100)
        writer.start()
        # Planned, as docs/scaling.md says (writes paused until the replica is
        # promoted): otherwise the batch in flight at that instant may be lost
        # by Redis's asynchronous replication, whatever the handler does.
        new = servers.failover(timeout=20)
        time.sleep(3)  # the old primary is demoted meanwhile; records keep coming
        total = writer.stop()
        assert handler.flush(10)
    assert new.port != old.port
    assert_all_arrived(servers.client(), handler, total)
    caches["default"].close()


def test_a_sentinel_url_finds_the_replica_promoted_after_the_primary_is_killed(
    handlers, sentinel_servers
):
    servers = sentinel_servers
    handler = handlers(url=sentinel_url(servers), queue_size=100_000, stream_maxlen=100_000)
    logger = fresh_logger(handler)
    log_numbered(logger, 0, 100)
    assert handler.flush(5)
    wait_replicated(servers)
    writer = Logging(logger, start=100)
    writer.start()
    servers.kill_primary_and_wait(timeout=20)
    time.sleep(0.5)
    total = writer.stop()
    assert handler.flush(10)
    assert total > 200, "records should have been logged while there was no primary"
    assert_all_arrived(servers.client(), handler, total)
    assert handler.stats()["retries"] > 0


def test_tail_reads_through_the_sentinels(handlers, sentinel_servers, capsys):
    servers = sentinel_servers
    handler = handlers(url=sentinel_url(servers))
    logger = fresh_logger(handler)
    for i in range(5):
        logger.info("record %d", i)
    assert handler.flush(5)
    assert cli_main(["tail", "--url", sentinel_url(servers), "--global", "-n", "2"]) == 0
    out = capsys.readouterr().out
    assert [line.rsplit(": ", 1)[1] for line in out.splitlines()] == ["record 3", "record 4"]
