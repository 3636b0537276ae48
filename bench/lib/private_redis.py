"""A redis-server of the benchmark's own, and what the benchmark reads from it.

The benchmark writes hundreds of thousands of entries and flushes the
database between rounds: it must never do that to a server others use, so it
starts one on a free loopback port, without persistence, and stops it by pid.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from subjects import GLOBAL_STREAM


def free_port() -> int:
    """A loopback port the kernel says is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of our own: loopback, free port, no persistence."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found on PATH (make tools installs it)")
        self.dir = Path(tempfile.mkdtemp(prefix="redis-logstream-bench-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        for _ in range(5):  # the port can be taken between the probe and the bind
            self.port = free_port()
            self.proc = subprocess.Popen(
                [
                    binary,
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.dir),
                    "--logfile",
                    str(self.dir / "redis.log"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_ready():
                break
            self._kill()
        else:
            raise RuntimeError(f"could not start redis-server (see {self.dir / 'redis.log'})")
        self.client = redis.Redis(port=self.port, host="127.0.0.1", decode_responses=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _wait_ready(self) -> bool:
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    return False
                with contextlib.suppress(redis.RedisError):
                    if probe.ping():
                        return True
                time.sleep(0.02)
            return False
        finally:
            probe.close()

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

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
        self._kill()
        shutil.rmtree(self.dir, ignore_errors=True)
