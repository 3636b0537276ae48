"""A local Redis Cluster for tests that fail over, and what every topology shares.

:class:`RedisClusterServers` is 6 :class:`servers.RedisServer` processes (free
loopback ports, private directories, killed by pid, closed by the ``atexit``
clean-up): 3 primaries and 3 replicas joined by ``redis-cli --cluster create``;
ready in ~2 s (a master will not turn ``cluster_state:ok`` until 2 s after it
started: a Redis rule). Fixtures: ``redis_cluster`` (the session's),
``cluster`` (that one, flushed) and ``own_cluster`` (private, to kill nodes).

Replicas sync from an RDB file (Redis 7's default diskless sync waits 5 s for
more replicas, then holds the write stream until the replica's first ACK, up to
1 s, so a write made just after "link up" could be lost in a failover); "ready"
also means ``WAIT 1`` returned 1 on every primary.

The polling, query and life-cycle helpers here (``_wait``, ``_ask``,
``_Topology``, ``TopologyError``...) also serve ``sentinel_servers.py``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, TypeVar

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from support.servers import LOOPBACK, RedisServer, RedisServerError, free_port, no_retry

__all__ = ["ClusterNodeServer", "RedisClusterServers", "TopologyError"]

_T = TypeVar("_T")
_S = TypeVar("_S", bound="_Topology")
_REDIS_PY_MAJOR = int(redis.__version__.split(".")[0])
_FAST_SYNC = ["--repl-diskless-sync", "no"]


class TopologyError(RedisServerError):
    """A cluster or sentinel topology did not form or heal in time."""


def _wait(check: Callable[[], _T], timeout: float, what: str, why: Callable[[], str]) -> _T:
    """Poll ``check`` until it returns something truthy; raise with ``why()`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(redis.RedisError):
            result = check()
            if result:
                return result
        if time.monotonic() > deadline:
            raise TopologyError(f"{what}: not reached within {timeout}s\n{why()}")
        time.sleep(0.05)


def _conn(server: RedisServer) -> redis.Redis:
    return redis.Redis(
        host=LOOPBACK,
        port=server.port,
        socket_timeout=0.5,
        retry=no_retry(),
        socket_connect_timeout=0.5,
        decode_responses=True,
    )


def _ask(server: RedisServer, *args: Any) -> Any:
    with _conn(server) as client:
        return client.execute_command(*args)


def _logs(servers: list[RedisServer], tail: int = 15) -> str:
    return "\n".join(
        f"--- log of :{s.port}:\n" + "\n".join(s.read_log().splitlines()[-tail:]) for s in servers
    )


class _Topology:
    """Life cycle shared by both topologies; :meth:`close` also runs if start fails."""

    _clients: list[Any]

    def servers(self) -> list[RedisServer]:
        raise NotImplementedError

    def _start(self) -> None:
        raise NotImplementedError

    def start(self: _S) -> _S:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        """Close the clients made here, kill every process, remove their directories."""
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        for server in self.servers():
            server.close()

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# -- cluster ---------------------------------------------------------------


class NodeView(NamedTuple):
    """One line of CLUSTER NODES."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str  # "-" for a master
    slots: tuple[tuple[int, int], ...]

    @property
    def ok(self) -> bool:
        return not self.flags & {"fail", "fail?", "handshake", "noaddr"}

    @classmethod
    def parse(cls, line: str) -> NodeView:
        fields = line.split()
        node_id, addr, flags, master = fields[:4]
        ranges = [part.partition("-") for part in fields[8:] if not part.startswith("[")]
        slots = tuple((int(low), int(high or low)) for low, _, high in ranges)
        port = int(addr.split("@")[0].rsplit(":", 1)[1])
        return cls(node_id, port, frozenset(flags.split(",")), master, slots)


class ClusterNodeServer(RedisServer):
    """A ``redis-server`` in cluster mode; its bus port, too, is kept across restarts."""

    def __init__(self, node_timeout_ms: int = 1000, **kwargs: Any) -> None:
        super().__init__(_FAST_SYNC, **kwargs)
        self.node_timeout_ms = node_timeout_ms
        self.bus_port: int | None = None
        self._bus_pinned = False

    def start(self) -> ClusterNodeServer:
        super().start()
        self._bus_pinned = True  # the first start that worked fixes both ports
        return self

    def _command(self) -> list[str]:
        if not self._bus_pinned:  # a first start, or its retry on a taken port
            self.bus_port = free_port()
        return [
            *super()._command(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",  # in self.dir, the cwd
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            "--cluster-port",
            str(self.bus_port),
        ]


class RedisClusterServers(_Topology):
    """A 3-primary, 3-replica Redis Cluster on loopback, owned by a test."""

    def __init__(self, *, node_timeout_ms: int = 1000, start_timeout: float = 20.0) -> None:
        self.nodes: list[RedisServer] = [ClusterNodeServer(node_timeout_ms) for _ in range(6)]
        self.start_timeout = start_timeout
        self.create_output = ""
        self._before_kill: dict[int | None, list[NodeView]] = {}
        self._clients: list[RedisCluster] = []

    def servers(self) -> list[RedisServer]:
        return self.nodes

    def _start(self) -> None:
        """Start the nodes, create the cluster, wait until it is whole."""
        for node in self.nodes:
            node.start()
        cli = os.environ.get("REDIS_CLI_BIN") or shutil.which("redis-cli") or "redis-cli"
        cmd = [
            cli,
            "--cluster",
            "create",
            *(f"{LOOPBACK}:{n.port}" for n in self.nodes),
            "--cluster-replicas",
            "1",
            "--cluster-yes",
        ]
        try:
            done = subprocess.run(
                cmd,
                capture_output=True,
                timeout=self.start_timeout,
                stdin=subprocess.DEVNULL,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            done = subprocess.CompletedProcess(cmd, "timed out", exc.stdout, exc.stderr)
        output = (done.stdout or b"") + (done.stderr or b"")
        self.create_output = f"$ {' '.join(cmd)}\n{output.decode(errors='replace')}"
        if done.returncode != 0:
            raise TopologyError(f"create failed ({done.returncode}):\n{self._diagnose()}")
        self._wait_whole(self.start_timeout, "cluster formed")

    @property
    def startup_url(self) -> str:
        return self.nodes[0].url

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def live_nodes(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.is_running and not n.is_paused]

    def view(self, via: RedisServer | None = None) -> list[NodeView]:
        """CLUSTER NODES as ``via`` (default: the first live node that answers) sees it."""
        errors = []
        for node in [via] if via else self.live_nodes():
            try:
                return [
                    NodeView.parse(line)
                    for line in _ask(node, "CLUSTER", "NODES").split("\n")
                    if line
                ]
            except redis.RedisError as exc:
                errors.append(f":{node.port}: {exc!r}")
        raise TopologyError(f"no live cluster node answered CLUSTER NODES: {errors}")

    def _server(self, port: int) -> RedisServer:
        return next(n for n in self.nodes if n.port == port)

    def primaries(self) -> list[RedisServer]:
        """The servers that own slots now, in slot order."""
        owners = sorted((v.slots[0], v.port) for v in self.view() if v.slots and v.ok)
        return [self._server(port) for _, port in owners]

    def replicas(self) -> list[RedisServer]:
        return [self._server(v.port) for v in self.view() if "slave" in v.flags and v.ok]

    def primary_for(self, key: str) -> RedisServer:
        """The server that owns ``key``'s slot now (hash tags honoured)."""
        slot = key_slot(key.encode())
        for v in self.view():
            if any(low <= slot <= high for low, high in v.slots):
                return self._server(v.port)
        raise TopologyError(f"no primary owns slot {slot} of {key!r}")

    def replica_of(self, primary: RedisServer) -> RedisServer:
        view = self.view()
        primary_id = next(v.node_id for v in view if v.port == primary.port)
        for v in view:
            if v.master_id == primary_id and "slave" in v.flags:
                return self._server(v.port)
        raise TopologyError(f"{primary!r} has no replica")

    def client(self, **kwargs: Any) -> RedisCluster:
        """A ``RedisCluster`` over the live nodes, no retries, 1 s timeouts (closed by close)."""
        kwargs.setdefault("retry", no_retry())
        if _REDIS_PY_MAJOR < 6:  # redis-py 5 counts cluster-level retries apart from `retry`
            kwargs.setdefault("cluster_error_retry_attempts", 0)
        kwargs.setdefault("socket_timeout", 1.0)
        kwargs.setdefault("socket_connect_timeout", 1.0)
        nodes = [ClusterNode(LOOPBACK, n.port) for n in self.live_nodes()]
        client = RedisCluster(startup_nodes=nodes, **kwargs)
        self._clients.append(client)
        return client

    def flush(self) -> None:
        """FLUSHALL on every live primary (servers this object started)."""
        for server in self.primaries():
            _ask(server, "FLUSHALL")

    def kill(self, server: RedisServer) -> None:
        """SIGKILL a node; its replica is remembered for :meth:`wait_for_failover`."""
        with contextlib.suppress(TopologyError):
            self._before_kill[server.port] = self.view()
        server.kill()

    def wait_for_failover(self, old_primary: RedisServer, timeout: float = 15) -> RedisServer:
        """Wait until every live node sees ``old_primary`` failed, its former replica
        owning its slots and ``cluster_state:ok``; return the new primary."""
        before = self._before_kill.get(old_primary.port) or self.view()
        old = next(v for v in before if v.port == old_primary.port)
        heirs = [v.node_id for v in before if v.master_id == old.node_id]
        if not heirs:
            raise TopologyError(f"{old_primary!r} had no replica (kill it with .kill())")

        def promoted() -> RedisServer | None:
            winners = set()
            for node in self.live_nodes():
                view = {v.node_id: v for v in self.view(node)}
                new = [view[h] for h in heirs if set(old.slots) <= set(view[h].slots)]
                if "fail" not in view[old.node_id].flags or not new:
                    return None
                winners.add(new[0].port)
            return self._server(winners.pop()) if len(winners) == 1 and self._all_ok() else None

        return _wait(promoted, timeout, f"failover of {old_primary!r}", self._diagnose)

    def restart(self, server: RedisServer, timeout: float = 15) -> RedisServer:
        """Start a killed node again (same ports, its nodes.conf) and wait until it has
        rejoined; a former primary comes back as a replica of its heir."""
        server.start()
        self._wait_whole(timeout, f"{server!r} rejoined")
        return server

    def _all_ok(self) -> bool:
        """``cluster_state:ok`` and every slot served, on every live node."""
        infos = [_ask(node, "CLUSTER", "INFO") for node in self.live_nodes()]
        return all("cluster_state:ok" in i and "cluster_slots_ok:16384" in i for i in infos)

    def _wait_whole(self, timeout: float, what: str) -> None:
        """Every live node: knows every node, sees live ones healthy, its replication
        link up; with all nodes up, 3 slot owners with one replica each."""

        def whole() -> bool:
            live = {n.port for n in self.live_nodes()}
            for port in live:
                view = self.view(self._server(port))
                owners = sorted(v.node_id for v in view if v.slots)
                followed = sorted(v.master_id for v in view if "slave" in v.flags)
                if len(view) != len(self.nodes) or not all(v.ok for v in view if v.port in live):
                    return False
                if len(live) == len(self.nodes) and (len(owners) != 3 or followed != owners):
                    return False
                info = _ask(self._server(port), "INFO", "replication")
                if info["role"] == "slave" and info.get("master_link_status") != "up":
                    return False
                acked = info["role"] == "slave" or _ask(self._server(port), "WAIT", 1, 100)
                if info["connected_slaves"] and not acked:  # every write reached the replica
                    return False
            return self._all_ok()

        _wait(whole, timeout, what, self._diagnose)

    def _diagnose(self) -> str:
        views = [self.create_output]
        for node in self.live_nodes():
            with contextlib.suppress(redis.RedisError):
                views.append(f"CLUSTER NODES via :{node.port}:\n{_ask(node, 'CLUSTER', 'NODES')}")
        return "\n".join([*views, _logs(self.nodes)])


# -- pytest fixtures ---------------------------------------------------------


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """The session's cluster (shared: call ``.flush()`` or use ``cluster``; never kill)."""
    with RedisClusterServers() as servers:
        yield servers


@pytest.fixture
def cluster(redis_cluster: RedisClusterServers) -> RedisClusterServers:
    """The shared cluster, flushed (FLUSHALL on every primary) for this test."""
    for node in redis_cluster.nodes:  # a test broke it despite the warning: heal it
        if not node.is_running:
            redis_cluster.restart(node)
    redis_cluster.flush()
    return redis_cluster


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterServers]:
    """A private cluster for a test that kills or restarts nodes."""
    with RedisClusterServers() as servers:
        yield servers
