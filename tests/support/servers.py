"""Real Redis servers (and fake, broken ones) for the test suite.

Why real servers: the library's promises are about what happens on the wire
and when the network misbehaves (Redis killed, restarted, frozen, answering
nonsense). fakeredis cannot freeze or die, so every such test runs against a
``redis-server`` process of its own, on a free loopback port, that the test
controls by pid. Tests never talk to a Redis they did not start (in particular
not a shared one on 6379), so nothing here has a default port.

- :class:`RedisServer` starts ``redis-server`` with no persistence in a private
  temporary directory, keeps its port across restarts (clients reconnect to
  the same URL, as they would in production), and can kill, stop, restart,
  pause (SIGSTOP: the socket stays open but nothing answers, like a server
  stuck in a long command or a dead host) and resume it.
- :class:`SilentServer` accepts TCP connections and never answers, or answers
  every read with bytes that are not RESP: the two ways a wrong peer fails.

Every server started here is also registered for an ``atexit`` clean-up, so an
interrupted test session does not leave processes behind; the pytest fixtures
in ``conftest.py`` stop them at teardown, whether the test passed or not.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["RedisServer", "RedisServerError", "SilentServer", "free_port", "no_retry"]

LOOPBACK = "127.0.0.1"

# Servers not yet closed; the atexit hook kills whatever a crashed or
# interrupted session left running.
_LIVE: weakref.WeakSet[RedisServer | SilentServer] = weakref.WeakSet()


def free_port() -> int:
    """Return a loopback TCP port that is free right now.

    The kernel picks it (bind to port 0), so parallel test runs do not collide
    the way a fixed port range would. It can still be taken before the server
    binds it; :meth:`RedisServer.start` retries with a new port in that case.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def redis_server_binary() -> str:
    """Path of the ``redis-server`` to run (``REDIS_SERVER_BIN`` overrides PATH).

    A missing binary is an error, not a skip: the suite's guarantees depend on
    these tests running. ``make test`` installs it.
    """
    binary = os.environ.get("REDIS_SERVER_BIN") or shutil.which("redis-server")
    if not binary:
        raise RedisServerError(
            "redis-server not found on PATH: install it (sudo apt-get install redis-server) "
            "or set REDIS_SERVER_BIN; `make test` does this for you."
        )
    return binary


def no_retry() -> Retry:
    """A redis-py retry policy that never retries (errors surface at once)."""
    return Retry(NoBackoff(), 0)


class RedisServerError(RuntimeError):
    """A test Redis server could not be started or did not answer in time."""


class RedisServer:
    """One ``redis-server`` process owned by a test, on a loopback port.

    The port is chosen on the first :meth:`start` and kept for the object's
    life, so :meth:`restart` brings the "same" server back at the same URL.
    Persistence is off (``--save "" --appendonly no``): a restart comes back
    empty, like a Redis that lost its memory, and nothing is written outside
    the private temporary directory.
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        start_timeout: float = 10.0,
        binary: str | None = None,
    ) -> None:
        """Prepare (not start) a server; ``args`` are extra redis-server options."""
        self.args = list(args)
        self.start_timeout = start_timeout
        self.binary = binary or redis_server_binary()
        self.port: int | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="redis-logstream-test-"))
        self.log_path = self.dir / "redis.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False
        self._clients: list[redis.Redis] = []
        _LIVE.add(self)

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING.

        Raises :class:`RedisServerError`, with the server's log, if it exits
        or does not answer within ``start_timeout`` seconds.
        """
        if self.is_running:
            return self
        first_start = self.port is None
        attempts = 5 if first_start else 1
        for attempt in range(attempts):
            if first_start:
                self.port = free_port()
            try:
                self._spawn_and_wait()
                return self
            except RedisServerError:
                # Someone took the free port between our probe and the bind:
                # only then is a new port worth a try.
                if attempt + 1 < attempts and "in use" in self.read_log():
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _command(self) -> list[str]:
        """The redis-server command line (a subclass adds ACLs or TLS)."""
        return [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            LOOPBACK,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            *self.args,
        ]

    def _probe(self) -> redis.Redis:
        """The client whose PING says the server is ready."""
        return redis.Redis(
            host=LOOPBACK,
            port=self.port,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=no_retry(),
        )

    def _spawn_and_wait(self) -> None:
        cmd = self._command()
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- starting: {' '.join(cmd)}\n".encode())
            log.flush()
            # Own session: a Ctrl-C meant for pytest must not take the server
            # down before the fixtures' teardown does it in order.
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                start_new_session=True,
            )
        self._paused = False
        deadline = time.monotonic() + self.start_timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                code = self._proc.returncode
                self._proc = None
                raise RedisServerError(
                    f"redis-server on port {self.port} exited with code {code} at start; "
                    f"log {self.log_path}:\n{self.read_log()}"
                )
            try:
                with self._probe() as probe:
                    if probe.ping():
                        return
            except redis.RedisError as exc:
                last_error = exc
            time.sleep(0.01)
        self.kill()
        raise RedisServerError(
            f"redis-server on port {self.port} did not answer PING within "
            f"{self.start_timeout}s (last error: {last_error!r}); "
            f"log {self.log_path}:\n{self.read_log()}"
        )

    def kill(self) -> None:
        """SIGKILL the server and reap it: a crash, with no chance to clean up."""
        proc, self._proc = self._proc, None
        self._paused = False
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()

    def stop(self, timeout: float = 5.0) -> None:
        """Shut the server down gracefully (SIGTERM), SIGKILL after ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            self._paused = False
            return
        proc.terminate()
        if self._paused:  # a stopped process only sees SIGTERM once continued
            proc.send_signal(signal.SIGCONT)
            self._paused = False
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def restart(self, *, graceful: bool = False) -> RedisServer:
        """Stop (or kill, the default) and start again on the same port, empty."""
        if graceful:
            self.stop()
        else:
            self.kill()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP the server: connections stay open, nothing is answered."""
        proc = self._require_running()
        proc.send_signal(signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused server; it answers what was sent while paused."""
        proc = self._require_running()
        proc.send_signal(signal.SIGCONT)
        self._paused = False

    def close(self) -> None:
        """Kill the server, close the clients made by :meth:`client`, remove the dir."""
        for client in self._clients:
            with contextlib.suppress(Exception):
                client.close()
        self._clients.clear()
        self.kill()  # nothing is persisted, so no need for a graceful shutdown
        shutil.rmtree(self.dir, ignore_errors=True)
        _LIVE.discard(self)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- access --------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        """True while the process exists (paused or not)."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def is_paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return self._paused and self.is_running

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        return self._proc.pid if self.is_running and self._proc else None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``; stable across restarts."""
        if self.port is None:
            raise RedisServerError("the server has no port before its first start()")
        return f"redis://{LOOPBACK}:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A ``redis.Redis`` for this server (closed by :meth:`close`).

        Keyword arguments go to ``redis.Redis.from_url``, e.g.
        ``socket_timeout=0.2`` or ``decode_responses=True``. Unless ``retry``
        is given the client does not retry: redis-py's default retries with
        backoff would turn "the server is down" into seconds of waiting and
        hide what a test wants to see.
        """
        kwargs.setdefault("retry", no_retry())
        client = redis.Redis.from_url(self.url, **kwargs)
        self._clients.append(client)
        return client

    def read_log(self) -> str:
        """The server's output so far (for error messages)."""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"

    def _require_running(self) -> subprocess.Popen[bytes]:
        if not self.is_running or self._proc is None:
            raise RedisServerError(f"redis-server on port {self.port} is not running")
        return self._proc

    def __repr__(self) -> str:
        state = "paused" if self.is_paused else "running" if self.is_running else "stopped"
        return f"<RedisServer port={self.port} pid={self.pid} {state}>"


class SilentServer:
    """A TCP peer on loopback that is not Redis.

    With ``garbage=False`` it accepts connections, reads and discards what it
    is sent, and never answers: a client's reads can only time out (a hung
    server, or a port where something else half-listens). With
    ``garbage=True`` it answers every read with bytes that are not RESP, so a
    client must fail with a protocol error rather than hang or crash.
    Everything runs in one daemon thread; :meth:`close` stops it and closes
    every connection.
    """

    GARBAGE = b"@@ this is not RESP \x00\xff @@\r\n"

    def __init__(self, *, garbage: bool = False) -> None:
        """Bind a free loopback port and start serving in a background thread."""
        self.garbage = garbage
        self.connections = 0  # accepted so far, for tests to check a client tried
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(64)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._closing = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, name=f"SilentServer:{self.port}", daemon=True
        )
        self._thread.start()
        _LIVE.add(self)

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0``, for clients that should fail."""
        return f"redis://{LOOPBACK}:{self.port}/0"

    def _serve(self) -> None:
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ)
        peers: list[socket.socket] = []
        try:
            while not self._closing.is_set():
                for key, _ in selector.select(timeout=0.05):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    if sock is self._listener:
                        with contextlib.suppress(BlockingIOError, InterruptedError):
                            peer, _addr = self._listener.accept()
                            peer.setblocking(False)
                            peers.append(peer)
                            selector.register(peer, selectors.EVENT_READ)
                            self.connections += 1
                        continue
                    try:
                        data = sock.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        selector.unregister(sock)
                        peers.remove(sock)
                        sock.close()
                    elif self.garbage:
                        with contextlib.suppress(OSError):
                            sock.sendall(self.GARBAGE)
        finally:
            for peer in peers:
                with contextlib.suppress(OSError):
                    peer.close()
            selector.close()

    def close(self) -> None:
        """Stop the thread, drop every connection and free the port."""
        self._closing.set()
        self._thread.join(5)
        with contextlib.suppress(OSError):
            self._listener.close()
        _LIVE.discard(self)

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@atexit.register
def _close_leftovers() -> None:
    """Kill servers a crashed or interrupted session did not close."""
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            if isinstance(server, RedisServer):
                server.kill()
            server.close()
