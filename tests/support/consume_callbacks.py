"""Callbacks the consumer tests run in ``redis-logstream consume`` processes.

Each writes what it handled to the file named by $CONSUMED (one
``<stream> <id> <message>`` line per record, flushed at once, so a process
killed with SIGKILL leaves an exact account), and behaves as its name says.
"""

from __future__ import annotations

import os
import time

from redis_logstream.consumers import HaltConsumer, LogEntry


def _write(entry: LogEntry, path: str | None = None) -> None:
    with open(path or os.environ["CONSUMED"], "a", encoding="utf-8") as out:
        out.write(f"{entry.stream} {entry.id} {entry.message}\n")


def record(entry: LogEntry) -> None:
    _write(entry)


def slowly(entry: LogEntry) -> None:
    """About 100 records a second: slow enough to be caught mid-batch."""
    time.sleep(0.01)
    _write(entry)


def crash_on_boom(entry: LogEntry) -> None:
    """Raises on "boom" records; notes each delivery in $HANDED when set."""
    if os.environ.get("HANDED"):
        with open(os.environ["HANDED"], "a", encoding="utf-8") as out:
            out.write(f"{entry.deliveries} {entry.message}\n")
    if "boom" in entry.message:
        raise RuntimeError(f"cannot handle {entry.message!r}")
    _write(entry)


def halt_on_stop(entry: LogEntry) -> None:
    """``stop <code>`` halts with that status; anything else is handled."""
    if entry.message.startswith("stop "):
        raise HaltConsumer(int(entry.message.split()[1]), ack=True)
    _write(entry)


class Recorder:
    """A class callback: built once with the [consumer_config] table."""

    instances = 0

    def __init__(self, path: str, prefix: str = "") -> None:
        Recorder.instances += 1
        self.path = path
        self.prefix = prefix
        self.instance = Recorder.instances

    def __call__(self, entry: LogEntry) -> None:
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(f"{self.prefix}{self.instance} {entry.message}\n")
        if entry.message == "enough":
            raise HaltConsumer(0, ack=True)


def hang_on_boom(entry: LogEntry) -> None:
    """Notes each record it is handed in $HANDED (with its delivery number),
    then hangs on "boom" records, for a test to kill the process there."""
    with open(os.environ["HANDED"], "a", encoding="utf-8") as out:
        out.write(f"{entry.deliveries} {entry.message}\n")
    if "boom" in entry.message:
        time.sleep(60)
    _write(entry)
