"""The test site served by real web servers, as sites serve it.

The live console must work under runserver, gunicorn's threaded workers
and uvicorn: three servers, three ways of writing a streaming response and
of noticing that a client left. Each runs as a child process on a free
loopback port, with ``stream_settings`` (the test site plus short stream
timings), against the session's Redis; it is stopped by pid.

One more kind, ``gunicorn-preload`` (not in :data:`KINDS`), is how most
production sites run: sync workers forked from a master that built the app,
Django's LOGGING and so the log handler, before the fork (``--preload``).
Its ``workers`` and any ``extra_args`` (``-c hooks.py``) come from the caller.
The whole process group is stopped by pid. ``settings`` names another
settings module (tests/support/stalled_settings.py: the console's limits made short).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from support.servers import LOOPBACK, free_port

__all__ = ["KINDS", "PREFORK_KINDS", "WebServer"]

ROOT = Path(__file__).resolve().parents[2]

KINDS = ("runserver", "gunicorn", "uvicorn")
#: Servers that fork workers from a master that loaded the site first.
PREFORK_KINDS = ("gunicorn-preload",)


def _command(kind: str, port: int, workers: int = 3) -> list[str]:
    bind = f"{LOOPBACK}:{port}"
    if kind == "runserver":
        return [sys.executable, "manage.py", "runserver", bind, "--noreload"]
    if kind == "gunicorn":
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "testproject.wsgi:application",
            "--bind",
            bind,
            "--worker-class",
            "gthread",
            "--workers",
            "1",
            "--threads",
            "32",
            "--log-level",
            "warning",
        ]
    if kind == "uvicorn":
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "testproject.asgi:application",
            "--host",
            LOOPBACK,
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ]
    if kind == "gunicorn-preload":
        return [
            sys.executable,
            "-m",
            "gunicorn",
            "testproject.wsgi:application",
            "--bind",
            bind,
            "--worker-class",
            "sync",
            "--workers",
            str(workers),
            "--preload",
            "--log-level",
            "warning",
        ]
    raise ValueError(kind)


class WebServer:
    """One web server process serving the test site."""

    def __init__(
        self,
        kind: str,
        redis_url: str,
        users: dict[str, str] | None = None,
        *,
        workers: int = 3,
        extra_args: Sequence[str] = (),
        settings: str = "support.stream_settings",
    ) -> None:
        """Start ``kind``; ``workers`` and ``extra_args`` serve the prefork kinds."""
        self.kind = kind
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.data_dir = tempfile.mkdtemp(prefix=f"redis-logstream-{kind}-")
        env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "DJANGO_SETTINGS_MODULE": settings,
            "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT), str(ROOT / "src")]),
            "TESTPROJECT_DATA_DIR": self.data_dir,
            "TESTPROJECT_LOG_CONSOLE": "0",
        }
        self.log = open(Path(self.data_dir) / "server.log", "wb")  # noqa: SIM115
        if users:
            self._prepare_database(env, users)
        self.proc = subprocess.Popen(
            [*_command(kind, self.port, workers), *extra_args],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_until_listening()

    def _prepare_database(self, env: dict[str, str], users: dict[str, str]) -> None:
        """Migrate the server's own SQLite database and create ``users``."""
        manage = [sys.executable, "manage.py"]
        subprocess.run([*manage, "migrate", "-v", "0"], cwd=ROOT, env=env, check=True)
        script = (
            "from django.contrib.auth import get_user_model\n"
            f"for name, password in {users!r}.items():\n"
            "    get_user_model().objects.create_user(name, password=password)\n"
        )
        subprocess.run([*manage, "shell", "-c", script], cwd=ROOT, env=env, check=True)

    def _wait_until_listening(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited at start:\n{self.output()}")
            with socket.socket() as sock:
                if sock.connect_ex((LOOPBACK, self.port)) == 0:
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.kind} did not listen within {timeout}s:\n{self.output()}")

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (Path(self.data_dir) / "server.log").read_text(errors="replace")[-4000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.log.close()
