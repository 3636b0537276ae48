"""The two ends of bench_cluster.py: the logging processes, and what reads the global stream.

A logging process (bench_cluster.py ``--child``) owns one RedisLogHandler,
writes one warm-up record per context (so that every node's connection is
open and the script loaded before the clock starts), says ``ready`` and
waits for ``go <start time>`` on stdin.  Then it logs its records, each one
``t=<time.time() at the call> i=<n> p=<process>``, as fast as it can or at
``rate`` per second, flushes, and prints what it did as one JSON line;
:class:`Child` is the parent's handle on one.

The parent reads the global stream two ways: :class:`Follower` (XREAD BLOCK,
during the paced round: latency = time read - time logged) and
:func:`scan` (XRANGE after every round: how many arrived, once each, and when
Redis stored them, from the entry IDs' millisecond clock).
"""

from __future__ import annotations

import json
import logging
import os
import selectors
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from redis_logstream import RedisLogHandler, log_context

#: What the children run (with ``--child``).
ENTRY_POINT = Path(__file__).resolve().parents[1] / "bench_cluster.py"
QUEUE_SIZE = 100_000
STREAM_MAXLEN = 10_000_000
#: Entries per XREAD / XRANGE call.
PAGE = 5_000
#: How a benchmark record's JSON begins (the message comes first).
_RECORD = b'{"message":"t='


def say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def child_main(
    url: str, index: int, records: int, rate: float, contexts: int, sharded: bool
) -> int:
    """One logging process: warm up, wait for ``go``, log, flush, report."""
    handler = RedisLogHandler(
        url=url, queue_size=QUEUE_SIZE, stream_maxlen=STREAM_MAXLEN, sharded_pubsub=sharded
    )
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger(f"bench.cluster.{index}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    scopes = [log_context(f"User.u{i}") for i in range(contexts)]
    for scope in scopes:
        with scope:
            logger.info("warmup p=%d", index)
    say({"ready": handler.flush(30), "stream": handler.names.global_stream})
    start = float(sys.stdin.readline().split()[1])
    time.sleep(max(0.0, start - time.time()))
    cpu = time.process_time()
    first = time.time()
    late = 0.0
    if rate <= 0:
        for i in range(records):
            with scopes[i % contexts]:
                logger.info("t=%.6f i=%d p=%d", time.time(), i, index)
    else:
        interval, due = 1.0 / rate, first
        for i in range(records):
            now = time.time()
            if now < due:
                time.sleep(due - now)
            else:
                late = max(late, now - due)
            with scopes[i % contexts]:
                logger.info("t=%.6f i=%d p=%d", time.time(), i, index)
            due += interval
    last = time.time()
    flushed = handler.flush(60)
    done = time.time()
    say(
        {
            "first_emit": first,
            "last_emit": last,
            "flushed_at": done,
            "flushed": flushed,
            "max_late_ms": round(late * 1000, 1),
            "cpu_s": round(time.process_time() - cpu, 3),
            "stats": handler.stats(),
        }
    )
    handler.close()
    return 0


class Child:
    """One logging process: JSON lines out, ``go <time>`` in."""

    def __init__(
        self, url: str, sharded: bool, index: int, records: int, rate: float, contexts: int
    ) -> None:
        env = dict(os.environ, PYTHONHASHSEED="0")
        env.pop("DJANGO_SETTINGS_MODULE", None)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(ENTRY_POINT),
                "--child",
                "--url",
                url,
                "--index",
                str(index),
                "--records",
                str(records),
                "--rate",
                str(rate),
                "--contexts",
                str(contexts),
                "--sharded" if sharded else "--no-sharded",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def expect(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise RuntimeError(f"logging process {self.proc.pid}: no answer in {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"logging process {self.proc.pid} exited ({self.proc.wait()})")
        return dict(json.loads(line))

    def go(self, start: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"go {start!r}\n".encode())
        self.proc.stdin.flush()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50, p99 and max in ms (nearest rank)."""
    if not values:
        return {"p50_ms": None, "p99_ms": None, "max_ms": None}
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": round(ordered[-1] * 1000, 2)}


def parse(data: bytes) -> tuple[float, int, int] | None:
    """(send time, record, process) of a benchmark record; None for a warm-up."""
    if not data.startswith(_RECORD):
        return None
    t, i, p = data[len(_RECORD) : data.find(b'"', len(_RECORD))].split(b" ")
    return float(t), int(i[2:]), int(p[2:])


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of an XREAD reply (RESP2 list or RESP3 dict), one stream."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return next(iter(reply.values()))[0]
    return reply[0][1]


def id_seconds(entry_id: bytes) -> float:
    return int(entry_id.split(b"-")[0]) / 1000.0


class Follower(threading.Thread):
    """XREAD BLOCK on the global stream; per record, time read - time logged."""

    def __init__(self, client: Any, key: str, expected: int) -> None:
        super().__init__(name="bench-follower", daemon=True)
        self.client, self.key, self.expected = client, key, expected
        self.latencies: list[float] = []
        self.seen: set[tuple[int, int]] = set()
        self.duplicates = 0
        self.stop = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        last = b"0-0"
        try:
            while not self.stop.is_set() and len(self.latencies) < self.expected:
                reply = self.client.xread({self.key: last}, count=PAGE, block=200)
                now = time.time()
                for entry_id, fields in _entries(reply):
                    last = entry_id
                    record = parse(fields[b"data"])
                    if record is None:
                        continue
                    if (record[2], record[1]) in self.seen:
                        self.duplicates += 1
                        continue
                    self.seen.add((record[2], record[1]))
                    self.latencies.append(now - record[0])
        except Exception as exc:  # reported with the round, not raised in a thread
            self.error = f"{type(exc).__name__}: {exc}"

    def wait_for_all(self, timeout: float) -> None:
        self.join(timeout)
        self.stop.set()
        self.join(5)


def scan(client: Any, key: str) -> dict[str, Any]:
    """Every entry of the global stream: records, duplicates, first send and
    last store time, and per record stored - logged (ms resolution)."""
    seen: set[tuple[int, int]] = set()
    stored: list[float] = []
    duplicates = warmups = 0
    first_sent, last_stored = float("inf"), 0.0
    low: bytes | str = "-"
    while True:
        page = client.xrange(key, min=low, max="+", count=PAGE)
        for entry_id, fields in page:
            record = parse(fields[b"data"])
            if record is None:
                warmups += 1
                continue
            if (record[2], record[1]) in seen:
                duplicates += 1
                continue
            seen.add((record[2], record[1]))
            at = id_seconds(entry_id)
            first_sent, last_stored = min(first_sent, record[0]), max(last_stored, at)
            stored.append(at - record[0])
        if len(page) < PAGE:
            break
        low = b"(" + page[-1][0]
    return {
        "records": len(seen),
        "duplicates": duplicates,
        "warmups": warmups,
        "first_sent": first_sent,
        "last_stored": last_stored,
        "stored_latency": stored,
    }
