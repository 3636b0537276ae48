"""Process plumbing for the private RabbitMQ nodes of :mod:`rabbit_servers`.

The Erlang VM's helper processes (erl_child_setup, inet_gethost...) leave the start
script's process group, so a node's processes are found, and killed, by a tag in their
environment: ``LOGSTREAM_RABBIT_NODE=<owner pid>:<dir>``. A node whose owner died is an
orphan, killed by the next start. A minimal plugin home (``rabbit`` and its dependencies
only) makes a node start in ~3 s, not ~7.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import time
from pathlib import Path

_TAG, _PREFIX = "LOGSTREAM_RABBIT_NODE", "rabbit-logstream-test-"


class RabbitServerError(RuntimeError):
    """A private RabbitMQ node could not be started, or killed, in time."""


def _comm(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/comm").read_text().strip()
    return ""


def _tagged() -> dict[int, str]:
    """pid -> ``_TAG`` value of the processes we can read, but an epmd a node started:
    epmd is the machine's, shared by every node (killing it would unregister them)."""
    found, key = {}, f"{_TAG}=".encode()
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError, ValueError):
            for var in Path(entry.path, "environ").read_bytes().split(b"\0"):
                if var.startswith(key) and _comm(int(entry.name)) != "epmd":
                    found[int(entry.name)] = var[len(key) :].decode(errors="replace")
    return found


def _alive(pid: int) -> bool:
    """False once ``pid`` has exited (a zombie has: its sockets are closed)."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1][1:2] not in b"ZX"
    except OSError:
        return False


def _kill_until_gone(tag: str, pids: set[int], timeout: float = 30.0) -> None:
    """SIGKILL ``pids`` and every process tagged ``tag`` until none is alive."""
    deadline = time.monotonic() + timeout
    while pids := {p for p in pids | {p for p, t in _tagged().items() if t == tag} if _alive(p)}:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RabbitServerError(f"processes {sorted(pids)} of {tag} survived SIGKILL")
        time.sleep(0.02)


def _reap_orphans() -> None:
    """Kill the nodes, and remove the dirs, of test sessions that died without closing them."""
    for pid, tag in _tagged().items():
        owner, _, path = tag.partition(":")
        if owner.isdigit() and int(owner) != os.getpid() and not _alive(int(owner)):
            _kill_until_gone(tag, {pid})
            if Path(path).name.startswith(_PREFIX):
                shutil.rmtree(path, ignore_errors=True)


def _server_script() -> Path:
    """The real ``rabbitmq-server`` script (``RABBITMQ_SERVER_BIN`` overrides)."""
    script = Path(os.environ.get("RABBITMQ_SERVER_BIN", "/usr/lib/rabbitmq/bin/rabbitmq-server"))
    if (script := script.resolve()).with_name("rabbitmq-env").exists():  # not the su wrapper
        return script
    raise RabbitServerError(
        "rabbitmq-server not found: sudo apt-get install rabbitmq-server "
        "(`make test` does) or set RABBITMQ_SERVER_BIN"
    )


def _link_minimal_home(real_home: Path, home: Path) -> bool:
    """Make ``home`` a RABBITMQ_HOME whose plugins are only ``rabbit`` and its dependencies."""
    apps = {p.name.rsplit("-", 1)[0]: p for p in (real_home / "plugins").glob("*-*") if p.is_dir()}
    needed: set[str] = set()
    todo = ["rabbit", "rabbitmq_prelaunch"]
    while todo:
        if (app := todo.pop()) in apps and app not in needed:
            needed.add(app)
            spec = (apps[app] / "ebin" / f"{app}.app").read_text(errors="replace")
            for key in ("applications", "included_applications"):
                if found := re.search(r"\{\s*" + key + r"\s*,\s*\[([^\]]*)\]", spec):
                    todo += re.findall(r"\w+", found.group(1))
    if "rabbit" not in needed:
        return False
    (home / "plugins").mkdir(parents=True)
    (home / "sbin").mkdir()
    (home / "sbin" / "rabbitmq-defaults").symlink_to(real_home / "sbin" / "rabbitmq-defaults")
    for app in needed:
        (home / "plugins" / apps[app].name).symlink_to(apps[app])
    return True
