"""Private RabbitMQ nodes for fault tests, and fixtures for the machine's broker.

:class:`RabbitServer` is a node (``logstream-test-<port>@localhost``) on free loopback
AMQP and distribution ports kept across restarts, with config, Mnesia data, log and
Erlang cookie (``HOME``) in a private temporary directory: it reads no /etc/rabbitmq
file and only registers its name with the running epmd. It runs the real script, not
the Debian wrapper /usr/sbin/rabbitmq-server (as root that one su's to rabbitmq and
writes /var/log/rabbitmq), with a plugins dir of only what ``rabbit`` needs: it starts
in ~3 s, not ~7. Its processes carry ``LOGSTREAM_RABBIT_NODE=<owner pid>:<dir>``
in their environment; :meth:`RabbitServer.kill` SIGKILLs them all by it (the VM's
helpers have sessions of their own) and waits until they are gone: the plumbing is in
:mod:`rabbit_processes`. An ``atexit`` hook closes what a session left open; ``start()``
kills the nodes of dead sessions.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import amqp
import pytest

from support.rabbit_processes import (
    _PREFIX,
    _TAG,
    RabbitServerError,
    _alive,
    _comm,
    _kill_until_gone,
    _link_minimal_home,
    _reap_orphans,
    _server_script,
    _tagged,
)
from support.servers import LOOPBACK, free_port

__all__ = [
    "SHARED_RABBIT_URL",
    "AmqpCleanup",
    "RabbitServer",
    "RabbitServerError",
    "amqp_connect",
    "ensure_running",
    "unique_name",
]

SHARED_RABBIT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
_DIST_ON_LOOPBACK = "-kernel inet_dist_use_interface {127,0,0,1}"
_LIVE: set[RabbitServer] = set()  # strong references: a dropped object's node still dies


def amqp_connect(url: str, **kwargs: Any) -> amqp.Connection:
    """A connected py-amqp connection for ``amqp://user:pass@host:port/vhost``."""
    parts = urlsplit(url)
    conn = amqp.Connection(
        host=f"{parts.hostname}:{parts.port or 5672}",
        userid=unquote(parts.username or "guest"),
        password=unquote(parts.password or "guest"),
        virtual_host=unquote(parts.path[1:]) or "/",
        **{"connect_timeout": 2, **kwargs},
    )
    conn.connect()
    return conn


def unique_name(prefix: str) -> str:
    """An exchange or queue name no other test, or test session, uses."""
    return f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:10]}"


class RabbitServer:
    """One private RabbitMQ node owned by a test; see the module docstring."""

    def __init__(
        self,
        config: Mapping[str, str] | None = None,
        *,
        start_timeout: float = 60.0,
        minimal_plugins: bool = True,
    ) -> None:
        """Prepare (not start) a node; ``config`` adds or overrides rabbitmq.conf settings."""
        self.config = dict(config or {})
        self.start_timeout = start_timeout
        self.script = _server_script()
        self.port: int | None = None
        self.dist_port: int | None = None
        self.dir = Path(tempfile.mkdtemp(prefix=_PREFIX))
        self.log_path = self.dir / "rabbit.log"
        self._home = self.dir / "home"
        if not (minimal_plugins and _link_minimal_home(self.script.parent.parent, self._home)):
            self._home = self.script.parent.parent
        self._tag = f"{os.getpid()}:{self.dir}"
        self._proc: subprocess.Popen[bytes] | None = None
        self._beam: int | None = None
        self._paused = False
        self._conns: list[amqp.Connection] = []
        _LIVE.add(self)

    @property
    def nodename(self) -> str:
        return f"logstream-test-{self.port}@localhost"

    def _env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("RABBITMQ_", "ERL_")) and k != "NOTIFY_SOCKET"
        }
        d = self.dir
        return {
            **env,
            _TAG: self._tag,
            "HOME": str(d),  # a fresh .erlang.cookie there
            "ERL_EPMD_ADDRESS": LOOPBACK,  # for an epmd the node starts if none runs
            "RABBITMQ_SCRIPTS_DIR": str(self._home / "sbin"),
            "RABBITMQ_PLUGINS_DIR": str(self._home / "plugins"),
            "RABBITMQ_NODENAME": self.nodename,
            "RABBITMQ_NODE_IP_ADDRESS": LOOPBACK,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONF_ENV_FILE": f"{d}/rabbitmq-env.conf",
            "RABBITMQ_CONFIG_FILE": f"{d}/rabbitmq.conf",
            "RABBITMQ_ADVANCED_CONFIG_FILE": f"{d}/advanced.config",
            "RABBITMQ_ENABLED_PLUGINS_FILE": f"{d}/enabled_plugins",
            "RABBITMQ_MNESIA_BASE": f"{d}/mnesia",
            "RABBITMQ_LOG_BASE": f"{d}/log",
            "RABBITMQ_LOGS": "-",  # everything to stdout: our log file
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": _DIST_ON_LOOPBACK,
        }

    def start(self) -> RabbitServer:
        """Start the node; return once an AMQP connection as guest succeeds."""
        if self.is_running:
            return self
        _reap_orphans()
        first_start = self.port is None
        attempts = 5 if first_start else 1
        for attempt in range(attempts):
            if first_start:
                self.port, self.dist_port = free_port(), free_port()
            try:
                self._spawn_and_wait()
                return self
            except RabbitServerError:  # retry only if a free port was taken before the bind
                if attempt + 1 == attempts or "eaddrinuse" not in self.read_log():
                    raise
        return self  # pragma: no cover

    def _spawn_and_wait(self) -> None:
        settings = {
            "listeners.tcp.default": f"{LOOPBACK}:{self.port}",
            "loopback_users": "none",
            "disk_free_limit.absolute": "1MB",
            **self.config,
        }
        for name, text in (
            ("rabbitmq.conf", "".join(f"{k} = {v}\n" for k, v in settings.items())),
            ("enabled_plugins", "[].\n"),
            ("rabbitmq-env.conf", ""),
        ):
            (self.dir / name).write_text(text)
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- starting {self.nodename} (dist port {self.dist_port})\n".encode())
            log.flush()  # own session: a Ctrl-C for pytest must not reach the node
            self._proc = subprocess.Popen(
                [self.script],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.dir,
                env=self._env(),
                start_new_session=True,
            )
        self._paused, self._beam = False, None
        deadline, error = time.monotonic() + self.start_timeout, None
        while time.monotonic() < deadline and self._proc.poll() is None:
            try:
                amqp_connect(self.url, connect_timeout=1).close()
                self._beam = next(p for p in self.node_pids() if _comm(p) == "beam.smp")
                return
            except Exception as exc:  # refused, reset, handshake...: not up yet
                error = exc
            time.sleep(0.05)
        code = self._proc.poll()
        self.kill()
        why = f"exited with code {code}" if code is not None else f"gave no AMQP ({error!r})"
        raise RabbitServerError(
            f"{self.nodename} {why} within {self.start_timeout}s of its "
            f"start; log {self.log_path}:\n{self.read_log(80)}"
        )

    def kill(self) -> None:
        """SIGKILL every process of the node and wait until all are gone: a crash."""
        proc, self._proc, pids = self._proc, None, {self._beam} if self._beam else set()
        self._beam, self._paused = None, False
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        _kill_until_gone(self._tag, pids)

    def stop(self, timeout: float = 20.0) -> None:
        """Shut down gracefully (SIGTERM: the script stops the VM), SIGKILL after ``timeout``."""
        if self.is_running and self._proc:
            self._proc.terminate()
            if self._paused:
                os.killpg(self._proc.pid, signal.SIGCONT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(timeout)
        self.kill()  # reaps the script, waits for the VM's exit, kills what is left

    def restart(self, *, graceful: bool = False) -> RabbitServer:
        """Kill (or stop) and start again: same ports, node name and data (durable state)."""
        if graceful:
            self.stop()
        else:
            self.kill()
        return self.start()

    def pause(self) -> None:
        """SIGSTOP the node: connections stay open, nothing is answered."""
        os.killpg(self._running().pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """SIGCONT a paused node."""
        os.killpg(self._running().pid, signal.SIGCONT)
        self._paused = False

    def close(self) -> None:
        """Drop the connections made by :meth:`connection`, kill the node, remove its dir."""
        for conn in self._conns:
            with contextlib.suppress(Exception):
                conn.collect()  # no close handshake with a node that may be dead
        self._conns.clear()
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)
        _LIVE.discard(self)

    def __enter__(self) -> RabbitServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def is_running(self) -> bool:
        """True while the start script (and so the VM) runs, paused or not."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The node's VM (``beam.smp``) while it runs."""
        return self._beam if self.is_running else None

    @property
    def pgid(self) -> int | None:
        """The process group of the start script and the VM."""
        return self._proc.pid if self._proc and self.is_running else None

    @property
    def url(self) -> str:
        """``amqp://guest:guest@127.0.0.1:<port>/%2F``; stable across restarts."""
        if self.port is None:
            raise RabbitServerError("the node has no port before its first start()")
        return f"amqp://guest:guest@{LOOPBACK}:{self.port}/%2F"

    def node_pids(self) -> list[int]:
        """Every live process of this node: script, VM, erl_child_setup, inet_gethost..."""
        return sorted(p for p, tag in _tagged().items() if tag == self._tag and _alive(p))

    def connection(self, **kwargs: Any) -> amqp.Connection:
        """A connected ``amqp.Connection`` to this node (dropped by :meth:`close`)."""
        self._conns.append(conn := amqp_connect(self.url, **kwargs))
        return conn

    def ctl(self, *args: str, timeout: float = 60.0) -> str:
        """``rabbitmqctl -n <node> *args`` (~0.5 s); e.g. ``ctl("eval", "mnesia:sync_log().")``
        to persist declarations now: a SIGKILL right after a durable declare may lose it."""
        port = str(free_port())  # for the CLI's own node (default 35672-35682, shared)
        env = {**self._env(), "RABBITMQ_CTL_DIST_PORT_MIN": port}
        env.update(RABBITMQ_CTL_DIST_PORT_MAX=port, RABBITMQ_SCRIPTS_DIR=str(self.script.parent))
        done = subprocess.run(
            [self.script.with_name("rabbitmqctl"), "-n", self.nodename, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode:
            raise RabbitServerError(f"rabbitmqctl {' '.join(args)}: {done.stdout}{done.stderr}")
        return done.stdout

    def read_log(self, tail: int | None = None) -> str:
        """The node's output (its whole log: ``RABBITMQ_LOGS=-``), or its last lines."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "<no log>"
        return text if tail is None else "\n".join(text.splitlines()[-tail:])

    def _running(self) -> subprocess.Popen[bytes]:
        if self._proc is None or not self.is_running:
            raise RabbitServerError(f"{self.nodename} is not running")
        return self._proc


def ensure_running(server: RabbitServer) -> RabbitServer:
    """Resume a paused node, restart a dead one (same port): heal a shared node."""
    if server._paused and server.is_running:
        server.resume()
    return server.start()


class AmqpCleanup:
    """Exchange and queue names a test made; :meth:`close` deletes them all."""

    def __init__(self) -> None:
        self.names: list[tuple[str, str, str]] = []  # (url, "exchange" | "queue", name)

    def exchange(self, name: str, url: str = SHARED_RABBIT_URL) -> str:
        self.names.append((url, "exchange", name))
        return name

    def queue(self, name: str, url: str = SHARED_RABBIT_URL) -> str:
        self.names.append((url, "queue", name))
        return name

    def close(self) -> None:
        """Delete everything registered; only the shared broker being down is an error."""
        for url in dict.fromkeys(url for url, _, _ in self.names):
            try:
                conn = amqp_connect(url)
            except Exception:
                if url == SHARED_RABBIT_URL:
                    raise
                continue  # a private node that is down: its names died with it
            with conn:
                for _, kind, name in (n for n in self.names if n[0] == url):
                    with conn.channel() as channel:  # a fresh one: an error closes a channel
                        getattr(channel, f"{kind}_delete")(name)
        self.names.clear()


@atexit.register
def _close_leftovers() -> None:
    """Kill the nodes an interrupted session did not close (not from a forked child)."""
    for server in list(_LIVE):
        with contextlib.suppress(Exception):
            if server._tag.startswith(f"{os.getpid()}:"):
                server.close()


@pytest.fixture
def rabbit_server() -> Iterator[RabbitServer]:
    """A private node for this test alone: kill, pause or restart it (~3 s a start)."""
    with RabbitServer() as server:
        yield server


@pytest.fixture(scope="session")
def shared_private_rabbit() -> Iterator[RabbitServer]:
    """One private node for the session; tests use it through ``private_rabbit``."""
    with RabbitServer() as server:
        yield server


@pytest.fixture
def private_rabbit(shared_private_rabbit: RabbitServer) -> RabbitServer:
    """The session's private node, running (healed if a test left it down or paused)."""
    return ensure_running(shared_private_rabbit)


@pytest.fixture(scope="session")
def rabbit_url() -> str:
    """The machine's broker (127.0.0.1:5672, guest); fails, never skips, if it does not answer."""
    try:
        amqp_connect(SHARED_RABBIT_URL, connect_timeout=3).close()
    except Exception as exc:
        pytest.fail(
            f"no RabbitMQ answers at {SHARED_RABBIT_URL} ({exc!r}); these tests need the "
            "machine's broker: sudo service rabbitmq-server start, or `make test`",
            pytrace=False,
        )
    return SHARED_RABBIT_URL


@pytest.fixture
def amqp_cleanup() -> Iterator[AmqpCleanup]:
    """Register names with ``.exchange(name, url=...)``/``.queue(...)``: deleted at teardown."""
    cleanup = AmqpCleanup()
    yield cleanup
    cleanup.close()
