"""A Sentinel-managed primary and replica, for tests that fail over.

:class:`SentinelServers` is a primary, its replica and 3 sentinels (quorum 2),
all :class:`servers.RedisServer` processes (free loopback ports, private
directories, killed by pid, closed by the ``atexit`` clean-up). With
``fast=True`` (``SENTINEL DEBUG info-period 1000 publish-period 500``) the
sentinels demote a stale primary ~3 s after a failover, not ~10 s. Fixture:
``sentinel_servers`` (private to each test, service ``logstream``).

The replica syncs from an RDB file (why: see ``cluster_servers.py``); "ready"
also means ``WAIT 1`` returned 1 on the primary. The polling, query and
life-cycle helpers come from ``cluster_servers.py``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.sentinel import Sentinel

from support.cluster_servers import _FAST_SYNC, TopologyError, _ask, _conn, _logs, _Topology, _wait
from support.servers import LOOPBACK, RedisServer, no_retry

__all__ = ["SentinelServer", "SentinelServers"]


class SentinelServer(RedisServer):
    """``redis-server sentinel.conf --sentinel``; it answers PING, so the base probe fits."""

    def __init__(self, service: str, primary_port: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.conf_path = self.dir / "sentinel.conf"
        self.service = service
        self.primary_port = primary_port

    def _command(self) -> list[str]:
        if not self.conf_path.exists():  # a restart keeps what the sentinel rewrote
            name = self.service
            self.conf_path.write_text(
                f"bind {LOOPBACK}\ndir {self.dir}\n"
                f"sentinel monitor {name} {LOOPBACK} {self.primary_port} 2\n"
                f"sentinel down-after-milliseconds {name} 1000\n"
                f"sentinel failover-timeout {name} 5000\n"
                f"sentinel parallel-syncs {name} 1\n"
            )
        return [
            self.binary,
            str(self.conf_path),
            "--sentinel",
            "--port",
            str(self.port),
            "--daemonize",
            "no",
        ]


class SentinelServers(_Topology):
    """A primary, its replica and three sentinels watching them as ``service_name``."""

    def __init__(
        self, service_name: str = "logstream", *, fast: bool = True, start_timeout: float = 20.0
    ) -> None:
        self.service_name = service_name
        self.fast = fast
        self.start_timeout = start_timeout
        self._primary = RedisServer(_FAST_SYNC)
        self._replica = RedisServer(_FAST_SYNC)  # --replicaof is added once the port is known
        self.sentinels: list[SentinelServer] = []
        self._clients: list[redis.Redis] = []

    def servers(self) -> list[RedisServer]:
        return [self._primary, self._replica, *self.sentinels]

    def _start(self) -> None:
        """Start everything; return once a failover could start right away."""
        self._primary.start()
        self._replica.args += ["--replicaof", LOOPBACK, str(self._primary.port)]
        self._replica.start()
        _wait(self._in_sync, self.start_timeout, "replica in sync", self._diagnose)
        # Started after the sync, the sentinels see the replica in their first
        # INFO of the primary rather than 10 s later.
        for _ in range(3):
            self.sentinels.append(SentinelServer(self.service_name, self._primary.port))
            self.sentinels[-1].start()
            if self.fast:  # SENTINEL DEBUG is Redis >= 7; an older one is just slower
                with contextlib.suppress(redis.ResponseError):
                    _ask(
                        self.sentinels[-1],
                        "SENTINEL",
                        "DEBUG",
                        "info-period",
                        1000,
                        "publish-period",
                        500,
                    )
        _wait(self._sentinels_ready, self.start_timeout, "sentinels ready", self._diagnose)

    @property
    def sentinel_addresses(self) -> list[tuple[str, int]]:
        return [(LOOPBACK, s.port) for s in self.sentinels if s.port]

    @property
    def primary(self) -> RedisServer:
        """The server the sentinels call primary (the last one known if none answers)."""
        with contextlib.suppress(TopologyError):
            if self.current_primary_address()[1] == self._replica.port:
                self._primary, self._replica = self._replica, self._primary
        return self._primary

    @property
    def replica(self) -> RedisServer:
        """The other server (after :meth:`kill_primary_and_wait`: the dead one)."""
        return self._replica if self.primary is self._primary else self._primary

    def current_primary_address(self) -> tuple[str, int]:
        """SENTINEL GET-MASTER-ADDR-BY-NAME, from the first sentinel that answers."""
        for sentinel in self.sentinels:
            with contextlib.suppress(redis.RedisError), _conn(sentinel) as client:
                return client.sentinel_get_master_addr_by_name(self.service_name)
        raise TopologyError("no sentinel answered GET-MASTER-ADDR-BY-NAME")

    def client(self, **kwargs: Any) -> redis.Redis:
        """A ``redis.Redis`` to the primary through the sentinels: short timeouts, no retry."""
        quick = {"socket_timeout": 0.5, "socket_connect_timeout": 0.5, "retry": no_retry()}
        sentinel = Sentinel(self.sentinel_addresses, sentinel_kwargs=quick, **quick)
        client = sentinel.master_for(
            self.service_name, **{**quick, "socket_timeout": 2.0, **kwargs}
        )
        self._clients += [*sentinel.sentinels, client]
        return client

    def failover(self, timeout: float = 15) -> RedisServer:
        """A planned failover that loses no acknowledged write; return the new primary.

        Replication is asynchronous: a write the primary acknowledged a moment
        before ``SENTINEL FAILOVER`` promoted the replica may not have reached
        it, and is gone once the sentinels demote the old primary
        (``min-replicas-to-write`` cannot help: the replica was still
        connected when the write came).  So, as Redis's own ``FAILOVER``
        does: pause writes on the primary, let the replica catch up, fail
        over, and end the pause once the old primary has seen its replica go
        (writes then get NOREPLICAS).  Then wait until every sentinel names
        the replica and it takes writes.  The old primary stays a primary
        (stale) until the sentinels demote it: ~2 s with ``fast``, see
        :meth:`wait_replica_synced`.
        """
        old, new = self.primary, self.replica
        _ask(old, "CLIENT", "PAUSE", int(timeout * 1000), "WRITE")
        try:
            _wait(lambda: self._caught_up(old, new), timeout, "replica caught up", self._diagnose)
            _ask(self.sentinels[0], "SENTINEL", "FAILOVER", self.service_name)
            _wait(
                lambda: _ask(new, "ROLE")[0] == "master" and not self._good_replicas(old),
                timeout,
                f"promotion of {new!r}",
                self._diagnose,
            )
        finally:
            _ask(old, "CLIENT", "UNPAUSE")
        return self._wait_promoted(new, timeout)

    @staticmethod
    def _good_replicas(primary: RedisServer) -> int:
        """The replicas that count for ``min-replicas-to-write`` (all, when unset)."""
        info = _ask(primary, "INFO", "replication")
        return info.get("min_slaves_good_slaves", info["connected_slaves"])

    @staticmethod
    def _caught_up(primary: RedisServer, replica: RedisServer) -> bool:
        """The replica has applied everything the primary wrote (its offset
        reached the primary's: exact, where the primary's view waits for an ACK)."""
        done = _ask(replica, "INFO", "replication")["master_repl_offset"]
        return done >= _ask(primary, "INFO", "replication")["master_repl_offset"]

    def kill_primary_and_wait(self, timeout: float = 20) -> RedisServer:
        """SIGKILL the primary, wait until the sentinels promoted the replica; return it."""
        old, new = self.primary, self.replica
        old.kill()
        return self._wait_promoted(new, timeout)

    def _wait_promoted(self, new: RedisServer, timeout: float) -> RedisServer:
        def promoted() -> bool:
            for sentinel in (s for s in self.sentinels if s.is_running):
                with _conn(sentinel) as client:
                    if client.sentinel_get_master_addr_by_name(self.service_name)[1] != new.port:
                        return False
            with _conn(new) as client:
                return client.role()[0] == "master" and bool(client.set("topology:probe", 1))

        _wait(promoted, timeout, f"promotion of {new!r}", self._diagnose)
        _ask(new, "DEL", "topology:probe")
        if self._replica is new:
            self._primary, self._replica = self._replica, self._primary
        return new

    def wait_replica_synced(self, timeout: float = 15) -> RedisServer:
        """Wait until the replica (e.g. a demoted primary) follows the primary; return it."""
        _wait(self._in_sync, timeout, "replica in sync", self._diagnose)
        return self._replica

    def _in_sync(self) -> bool:
        """The replica follows the primary and has acknowledged all its writes."""
        info = _ask(self._replica, "INFO", "replication")
        if info["role"] != "slave" or info.get("master_port") != self._primary.port:
            return False
        return info["master_link_status"] == "up" and _ask(self._primary, "WAIT", 1, 100) >= 1

    def _sentinels_ready(self) -> bool:
        """Every sentinel sees a sane primary, the replica linked and fresh, both peers."""
        name = self.service_name
        for sentinel in self.sentinels:
            with _conn(sentinel) as client:
                master = client.sentinel_master(name)
                replicas = client.sentinel_slaves(name)
                peers = client.sentinel_sentinels(name)
            down = ("is_sdown", "is_odown", "is_disconnected")
            if any(r[flag] for r in [master, *replicas, *peers] for flag in down):
                return False
            if len(peers) != 2 or len(replicas) != 1 or not master["is_master"]:
                return False
            # info-refresh is "ms since the last INFO": huge until the first one
            if replicas[0]["master-link-status"] != "ok" or replicas[0]["info-refresh"] > 20000:
                return False
        return True

    def _diagnose(self) -> str:
        return _logs(self.servers())


# -- pytest fixtures ---------------------------------------------------------


@pytest.fixture
def sentinel_servers() -> Iterator[SentinelServers]:
    """A private primary + replica + 3 sentinels, service ``logstream``."""
    with SentinelServers() as servers:
        yield servers
