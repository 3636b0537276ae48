"""A redis-server of the benchmark's own, and what the benchmark reads from it.

The benchmark writes hundreds of thousands of entries and flushes the
database between rounds: it must never do that to a server others use, so it
starts one with the tests' harness (tests/support/servers.py): a free loopback
port, no persistence, stopped by pid. The soak kills it and starts it again on
the same port (``kill()``, ``start()``).
"""

from __future__ import annotations

import contextlib

import redis

from bench.lib.subjects import GLOBAL_STREAM
from support.servers import LOOPBACK, RedisServer, free_port

__all__ = ["PrivateRedis", "free_port"]


class PrivateRedis:
    """A redis-server of our own, started at once; ``client`` decodes responses."""

    def __init__(self) -> None:
        self.server = RedisServer().start()
        assert self.server.port is not None
        self.port: int = self.server.port
        self.client = redis.Redis(port=self.port, host=LOOPBACK, decode_responses=True)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def pid(self) -> int | None:
        return self.server.pid

    def kill(self) -> None:
        """SIGKILL the server: a crash."""
        self.server.kill()

    def start(self) -> None:
        """Start the server again, empty, on the same port."""
        self.server.start()

    def version(self) -> str:
        return str(self.client.info("server")["redis_version"])

    def cpu_seconds(self) -> float:
        """Redis's own CPU time so far (user + system, all its threads)."""
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def entries_added(self, key: str = GLOBAL_STREAM) -> int:
        """How many entries a stream ever received (0 when it does not exist)."""
        try:
            info = self.client.xinfo_stream(key)
        except redis.ResponseError:
            return 0
        # entries-added is Redis 7; older servers only have the length.
        return int(info.get("entries-added", info["length"]))

    def flushall(self) -> None:
        self.client.flushall()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        self.server.close()
