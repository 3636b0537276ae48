"""The processes of a viewer round, and what the benchmark reads from outside them.

- :class:`Site`: the test site under uvicorn (one worker), as a child on a
  free loopback port, against the private Redis; stopped by pid.
- :class:`Child`: a run of bench_viewers.py in one of its child modes (the
  viewers, the logger), talking one JSON object per stdout line.
- :func:`logger_main`: the logging side, ``RedisLogHandler(url=...)`` paced
  on an absolute schedule so that a slow moment is caught up, not carried.
- :func:`cpu_seconds`, :func:`threads_and_memory` and
  :func:`redis_connections`: the server's CPU, threads and memory from
  ``/proc``, and the connections Redis sees, grouped by client name;
  :func:`machine`: what the figures were measured on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

import redis

from bench.lib.private_redis import free_port
from bench.lib.report import cpu_model
from bench.lib.sse_load import MESSAGE
from redis_logstream.console.fanout import FOLLOWER_NAME
from redis_logstream.console.hubs import BACKLOG_NAME

ROOT = Path(__file__).resolve().parents[2]
ENTRY_POINT = Path(__file__).resolve().parents[1] / "bench_viewers.py"
LOOPBACK = "127.0.0.1"
#: Client names of the benchmark's own connections (not the server's).
OWN_PREFIX = "bench-"
MONITOR_NAME = "bench-monitor"
LOGGER_NAME = "bench-logger"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process, all its threads (``/proc/<pid>/stat``)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()  # the name may contain spaces
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def machine_busy_seconds() -> float:
    """CPU time the whole machine spent busy so far, all cores (``/proc/stat``)."""
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: idle and iowait are not busy
    return (sum(ticks[:8]) - ticks[3] - ticks[4]) / CLOCK_TICKS


class CpuMeter:
    """CPU seconds so far of the round's processes, Redis and the whole machine."""

    def __init__(self, pids: dict[str, int], monitor: redis.Redis) -> None:
        self.pids = pids
        self.monitor = monitor

    def read(self) -> dict[str, float]:
        now = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        info = self.monitor.info("cpu")
        now["redis"] = float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        now["benchmark"] = time.process_time()
        now["machine"] = machine_busy_seconds()
        return now

    @staticmethod
    def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
        """CPU seconds between two readings; ``others``: the rest of the machine's."""
        spent = {name: after[name] - before[name] for name in before if name != "machine"}
        machine = after["machine"] - before["machine"]
        spent["others"] = max(0.0, machine - sum(spent.values()))
        return spent


def threads_and_memory(pid: int) -> dict[str, float]:
    """Threads and resident memory (MiB) of a live process (``/proc/<pid>/status``)."""
    found = {"threads": 0.0, "rss_mib": 0.0}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == "Threads":
            found["threads"] = float(value)
        elif name == "VmRSS":
            found["rss_mib"] = round(int(value.split()[0]) / 1024, 1)
    return found


def redis_connections(monitor: redis.Redis) -> dict[str, int]:
    """The server's connections to Redis now: all but the benchmark's own, by name."""
    counts = {"total": 0, "followers": 0, "backlog": 0, "other": 0, "benchmark": 0}
    for client in monitor.client_list():
        name = client.get("name") or ""
        if name.startswith(OWN_PREFIX):
            counts["benchmark"] += 1
            continue
        counts["total"] += 1
        key = {FOLLOWER_NAME: "followers", BACKLOG_NAME: "backlog"}.get(name, "other")
        counts[key] += 1
    return counts


def _stop(proc: subprocess.Popen[Any], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL: this process only, by pid."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait(10)


class Site:
    """testproject under ``uvicorn --workers 1`` on a free loopback port."""

    def __init__(self, redis_url: str, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.log_path = data_dir / "uvicorn.log"
        self.env = {
            **os.environ,
            "REDIS_URL": redis_url,
            "DJANGO_SETTINGS_MODULE": "testproject.settings",
            "DJANGO_DEBUG": "0",
            "TESTPROJECT_DATA_DIR": str(data_dir),
            "TESTPROJECT_LOG_CONSOLE": "0",
            "PYTHONPATH": os.pathsep.join(
                [str(ROOT), str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> None:
        for _ in range(3):  # the port can be taken between the probe and the bind
            self.port = free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "uvicorn",
                        "testproject.asgi:application",
                        "--host",
                        LOOPBACK,
                        "--port",
                        str(self.port),
                        "--workers",
                        "1",
                        "--no-access-log",
                        "--log-level",
                        "warning",
                        "--timeout-graceful-shutdown",
                        "5",
                    ],
                    cwd=ROOT,
                    env=self.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            if self._wait_listening():
                return
            self.stop()
        raise RuntimeError(f"uvicorn did not start:\n{self.output()}")

    def _wait_listening(self, timeout: float = 30.0) -> bool:
        """uvicorn binds its port after the application loaded: listening is ready."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            with socket.socket() as sock:
                if sock.connect_ex((LOOPBACK, self.port)) == 0:
                    return True
            time.sleep(0.05)
        return False

    def output(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            _stop(proc)


class Child:
    """bench_viewers.py in a child mode; its stdout lines are JSON messages."""

    def __init__(self, *args: str) -> None:
        env = dict(os.environ)
        env.pop("DJANGO_SETTINGS_MODULE", None)  # the children are not the site
        self.proc = subprocess.Popen(
            [sys.executable, str(ENTRY_POINT), *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._read, args=(self.proc.stdout,), daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.lines.put(line)
        self.lines.put(None)

    def message(self, timeout: float) -> dict[str, Any]:
        """The next JSON line; queue.Empty after ``timeout`` seconds."""
        line = self.lines.get(timeout=timeout)
        if line is None:
            raise RuntimeError(f"child {self.proc.args[2:3]} ended (exit {self.proc.wait()})")
        try:
            message: dict[str, Any] = json.loads(line)
        except ValueError:
            raise RuntimeError(f"child said {line!r}, not JSON") from None
        return message

    def expect(self, key: str, timeout: float) -> dict[str, Any]:
        """Wait for the message that has ``key``; RuntimeError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                message = self.message(max(0.0, left))
            except queue.Empty:
                raise RuntimeError(f"no {key!r} from the child within {timeout:.0f} s") from None
            if key in message:
                return message

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"child {self.proc.args[2:3]} did not exit") from None

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        _stop(self.proc, grace=5.0)


def machine(monitor: redis.Redis) -> dict[str, Any]:
    """What the figures were measured on, and which commit."""
    import django
    import uvicorn

    model = cpu_model()
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "django": django.get_version(),
        "uvicorn": uvicorn.__version__,
        "redis_py": redis.__version__,
        "redis_server": str(monitor.info("server")["redis_version"]),
        "platform": platform.platform(),
        "commit": commit or None,
        "src_dirty": bool(dirty),
    }


def logger_main(url: str, context: str, rate: float, seconds: float, result: Path) -> int:
    """The ``--logger-child`` mode: ``rate`` records/s for ``seconds`` under ``context``.

    Record ``n`` is due at ``start + n / rate``: a late record is followed
    by the next ones at once rather than shifting the whole schedule.  Each
    message ends with its sequence number, which is all a viewer checks.
    """
    from redis_logstream import RedisLogHandler, log_context

    handler = RedisLogHandler(url=f"{url}?client_name={LOGGER_NAME}")
    logger = logging.getLogger("bench.viewers")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        with log_context(f"{context}.warmup"):  # the connection is made before the clock starts
            logger.info("viewer load warm-up 0")
        if not handler.flush(10.0):
            raise RuntimeError(f"the warm-up record was not written: {handler.stats()}")
        total = round(rate * seconds)
        late = 0.0
        print(json.dumps({"started": time.time()}), flush=True)
        cpu_before = time.process_time()
        start = time.perf_counter()
        with log_context(context):
            for seq in range(total):
                due = start + seq / rate
                now = time.perf_counter()
                if due > now:
                    time.sleep(due - now)
                else:
                    late = max(late, now - due)
                logger.info(MESSAGE, seq)
        emitted = time.perf_counter() - start
        flushed = handler.flush(10.0)
        elapsed = time.perf_counter() - start
        cpu = time.process_time() - cpu_before
        stats = handler.stats()
        print(json.dumps({"finished": time.time()}), flush=True)
        sys.stdin.readline()  # alive until the parent has read our CPU time
    except KeyboardInterrupt:
        return 130
    finally:
        logger.removeHandler(handler)
        handler.close()
    result.write_text(
        json.dumps(
            {
                "records": total,
                "emit_seconds": round(emitted, 3),
                "rate_achieved": round(total / emitted, 1) if emitted else 0.0,
                "max_late_ms": round(late * 1000, 2),
                "flushed": flushed,
                "seconds": round(elapsed, 3),
                "cpu_seconds": round(cpu, 3),
                "handler": stats,
            }
        )
        + "\n"
    )
    return 0
