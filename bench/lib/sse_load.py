"""The viewers: many Server-Sent-Events clients in one asyncio process.

Two hundred browsers cost a server what two hundred sockets, each reading a
chunked ``text/event-stream``, cost it; they need not cost the benchmark two
hundred interpreters.  One process holds them all, on raw asyncio streams
(HTTP/1.1, chunked transfer encoding and the SSE lines parsed here), so that
the clients stay cheap next to the server they load and their CPU time is
not counted as the server's.

Each viewer keeps every sequence number it was sent and, per record, the
delivery latency: the wall-clock time the bytes were read here less the
record's own ``timestamp`` (the logging call's ``created``).  Client and
logger run on the same machine, so the clocks agree.  A viewer whose stream
ends early reconnects the way EventSource does (after the server's
``retry:``, with ``Last-Event-ID``), and says how often it had to.

The parent drives the process through its stdin and stdout, one JSON
object per line on stdout: ``{"ready": ...}`` once every viewer has seen
``event: ready`` (or failed), then, after the parent wrote ``stop <records
sent> <tail seconds>``, ``{"done": ...}`` once every viewer has the last
record (or the tail is over); the figures go to the ``--result`` file.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import sys
import time
from array import array
from pathlib import Path
from typing import Any

#: Seconds a viewer may take to connect and receive ``event: ready``.
READY_TIMEOUT = 60.0
#: How often the event loop's lag is sampled (it is part of every latency).
LAG_PERIOD = 0.01
#: What the logger logs (viewer_site.py); the number is the sequence number.
MESSAGE = "viewer load record %d"
#: One log event of one of those records, as the server writes it (sse.py).
LOG_EVENTS = re.compile(
    rb'id: ([0-9-]+)\nevent: log\ndata: \{"message":"'
    + re.escape(MESSAGE.encode()).replace(b"%d", rb"(\d+)")
    + rb'"[^\n]*?,"timestamp":([-+.0-9eE]+)[,}][^\n]*\n\n'
)


class Viewer:
    """One SSE client: what it received, and when."""

    def __init__(self, index: int) -> None:
        self.index = index
        self.seqs = array("l")
        self.latencies = array("d")  # seconds
        self.ready = False
        self.failed: str | None = None
        self.connects = 0
        self.heartbeats = 0
        self.status_events = 0
        self.last_id: bytes | None = None
        self.retry_ms = 2000
        self.pending = b""
        self.event_ready = asyncio.Event()

    # -- SSE ---------------------------------------------------------------

    def feed(self, data: bytes, now: float) -> None:
        """Bytes of the event stream, read at ``now`` (wall clock)."""
        text = self.pending + data
        if b"\r" in text:
            text = text.replace(b"\r\n", b"\n")
        end = text.rfind(b"\n\n") + 2
        if end < 2:
            self.pending = text
            return
        complete, self.pending = text[:end], text[end:]
        # The common case, 40 000 times a second: nothing but log events of
        # our records (one C-level scan); anything else takes the long way.
        found = LOG_EVENTS.findall(complete)
        if len(found) == complete.count(b"\n\n"):
            for _, seq, timestamp in found:
                self.seqs.append(int(seq))
                self.latencies.append(now - float(timestamp))
            self.last_id = found[-1][0]
            return
        for block in complete[:-2].split(b"\n\n"):
            self.event(block, now)

    def log(self, data: bytes, now: float) -> None:
        record = json.loads(data)
        self.seqs.append(int(record["message"].rpartition(" ")[2]))
        self.latencies.append(now - record["timestamp"])

    def event(self, block: bytes, now: float) -> None:
        kind = b"message"
        data: list[bytes] = []
        for line in block.split(b"\n"):
            if line.startswith(b":"):
                self.heartbeats += line == b": ping"
                continue
            name, _, value = line.partition(b":")
            if value.startswith(b" "):
                value = value[1:]
            if name == b"data":
                data.append(value)
            elif name == b"event":
                kind = value
            elif name == b"id":
                self.last_id = value
            elif name == b"retry" and value.isdigit():
                self.retry_ms = int(value)
        if kind == b"log":
            self.log(b"\n".join(data), now)
        elif kind == b"ready":
            self.ready = True
            self.event_ready.set()
        elif kind == b"status":
            self.status_events += 1

    # -- HTTP --------------------------------------------------------------

    async def run(self, host: str, port: int, path: str) -> None:
        """Connect, read until the stream ends, reconnect; until cancelled."""
        while True:
            try:
                await self.stream(host, port, path)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                if not self.ready:
                    self.failed = f"{type(exc).__name__}: {exc}"
                    self.event_ready.set()
                    return
            except Exception as exc:  # a bug here: say so rather than lose records silently
                self.failed = f"{type(exc).__name__}: {exc}"
                self.event_ready.set()
                raise
            await asyncio.sleep(self.retry_ms / 1000)

    async def stream(self, host: str, port: int, path: str) -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            self.connects += 1
            self.pending = b""
            resume = f"Last-Event-ID: {self.last_id.decode()}\r\n" if self.last_id else ""
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: text/event-stream\r\n"
                f"Cache-Control: no-cache\r\n{resume}\r\n".encode()
            )
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = status_line.split(" ", 2)
            if len(status) < 2 or status[1] != "200":
                raise ValueError(f"HTTP status {status_line!r}")
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in header_lines if line)
            }
            chunked = headers.get("transfer-encoding", "").lower() == "chunked"
            buffer = bytearray()
            size = -1  # the current chunk's size; -1 until its size line is read
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                now = time.time()
                if not chunked:
                    self.feed(data, now)
                    continue
                buffer += data
                while True:
                    if size < 0:
                        end = buffer.find(b"\r\n")
                        if end < 0:
                            break
                        size = int(bytes(buffer[:end]).split(b";", 1)[0], 16)
                        del buffer[: end + 2]
                        if size == 0:
                            return  # the last chunk: the server ended the response
                    if len(buffer) < size + 2:
                        break
                    self.feed(bytes(buffer[:size]), now)
                    del buffer[: size + 2]
                    size = -1
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    # -- the verdict ---------------------------------------------------------

    def summary(self, expected: int) -> dict[str, Any]:
        """Every record exactly once, in order?  (Records are 0 .. expected-1.)"""
        seqs = self.seqs
        distinct = set(seqs)
        missing = sorted(set(range(expected)) - distinct)
        out_of_order = sum(1 for i in range(1, len(seqs)) if seqs[i] <= seqs[i - 1])
        return {
            "viewer": self.index,
            "received": len(seqs),
            "missing": len(missing),
            "first_missing": missing[:5],
            "duplicates": len(seqs) - len(distinct),
            "unexpected": sum(1 for seq in distinct if not 0 <= seq < expected),
            "out_of_order": out_of_order,
            "latency_max_ms": round(max(self.latencies, default=0.0) * 1000, 2),
            "connects": self.connects,
            "heartbeats": self.heartbeats,
            "status_events": self.status_events,
            "failed": self.failed,
        }


def quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of an ascending list (0.0 when empty)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def latency_summary(values: list[float]) -> dict[str, float]:
    """p50/p90/p99/max (and mean) in milliseconds."""
    ordered = sorted(values)
    mean = sum(ordered) / len(ordered) if ordered else 0.0
    return {
        "count": len(ordered),
        "p50_ms": round(quantile(ordered, 0.50) * 1000, 2),
        "p90_ms": round(quantile(ordered, 0.90) * 1000, 2),
        "p99_ms": round(quantile(ordered, 0.99) * 1000, 2),
        "max_ms": round((ordered[-1] if ordered else 0.0) * 1000, 2),
        "mean_ms": round(mean * 1000, 2),
        "min_ms": round((ordered[0] if ordered else 0.0) * 1000, 2),
    }


async def measure_lag(lags: array[float]) -> None:
    """How late the loop wakes a sleeper: the clients' own share of a latency."""
    loop = asyncio.get_running_loop()
    while True:
        before = loop.time()
        await asyncio.sleep(LAG_PERIOD)
        lags.append(loop.time() - before - LAG_PERIOD)


def say(**message: Any) -> None:
    """One JSON line to the parent."""
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def load(host: str, port: int, path: str, count: int, rate: float, result: Path) -> None:
    viewers = [Viewer(index) for index in range(count)]
    tasks = [asyncio.create_task(viewer.run(host, port, path)) for viewer in viewers]
    lags: array[float] = array("d")
    lag_task = asyncio.create_task(measure_lag(lags))
    started = time.monotonic()
    try:
        await asyncio.wait_for(
            asyncio.gather(*(viewer.event_ready.wait() for viewer in viewers)), READY_TIMEOUT
        )
    except asyncio.TimeoutError:
        for viewer in viewers:
            if not viewer.ready and viewer.failed is None:
                viewer.failed = f"no 'event: ready' within {READY_TIMEOUT:.0f} s"
    failed = [viewer.index for viewer in viewers if not viewer.ready]
    say(ready=count - len(failed), failed=failed, seconds=round(time.monotonic() - started, 2))
    del lags[:]  # only what follows counts: the logging window and the tail

    # ``stop <expected> <tail>``; end of file (the parent is gone) stops too.
    line = await asyncio.to_thread(sys.stdin.readline)
    words = line.split()
    expected = int(words[1]) if len(words) > 1 else 0
    tail = float(words[2]) if len(words) > 2 else 0.0
    window_lags = list(lags)
    tail_started = time.monotonic()
    final = expected - 1
    while time.monotonic() - tail_started < tail:
        if all(viewer.failed or (viewer.seqs and viewer.seqs[-1] >= final) for viewer in viewers):
            break
        await asyncio.sleep(0.02)
    tail_seconds = time.monotonic() - tail_started
    lag_task.cancel()
    for task in tasks:
        task.cancel()
    await asyncio.gather(lag_task, *tasks, return_exceptions=True)

    latencies: list[float] = []
    seconds: list[list[float]] = [[] for _ in range(math.ceil(expected / rate))]
    # Per record, the first and the last viewer to get it: the pipeline
    # (handler, Redis, follower) against the fan-out to every viewer.
    first = [math.inf] * expected
    last = [-math.inf] * expected
    for viewer in viewers:
        latencies.extend(viewer.latencies)
        for seq, latency in zip(viewer.seqs, viewer.latencies, strict=True):
            if 0 <= seq < expected:
                seconds[int(seq // rate)].append(latency)
                first[seq] = min(first[seq], latency)
                last[seq] = max(last[seq], latency)
    seen = [seq for seq in range(expected) if first[seq] != math.inf]
    summaries = [viewer.summary(expected) for viewer in viewers]
    result.write_text(
        json.dumps(
            {
                "expected": expected,
                "tail_seconds": round(tail_seconds, 3),
                "latency": latency_summary(latencies),
                "first_viewer_latency": latency_summary([first[seq] for seq in seen]),
                "fan_out_spread": latency_summary([last[seq] - first[seq] for seq in seen]),
                # By the second of the logging window the record was logged in.
                "latency_by_second": [latency_summary(values) for values in seconds],
                "loop_lag": latency_summary(window_lags),
                "viewers": summaries,
            }
        )
        + "\n"
    )
    say(done=True)


def clients_main(host: str, port: int, path: str, count: int, rate: float, result: Path) -> int:
    """The ``--clients-child`` mode of bench_viewers.py."""
    try:
        asyncio.run(load(host, port, path, count, rate, result))
    except KeyboardInterrupt:
        return 130
    return 0
