"""The soak's engine: steady logging, a Redis crash in the middle, and the checks.

bench/soak.py runs it for minutes (``make soak``); tests/test_soak.py runs it
for one minute. What it does and what it checks is described there.
"""

from __future__ import annotations

import contextlib
import logging
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redis_logstream import RedisLogHandler, log_context

MiB = 1024 * 1024
_PAGE = os.sysconf("SC_PAGE_SIZE")


class Server(Protocol):
    """A Redis the soak may crash: the tests' RedisServer, or private_server()."""

    @property
    def url(self) -> str: ...

    def kill(self) -> None: ...

    def start(self) -> object: ...


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * _PAGE


def thread_count() -> int:
    """Threads as the kernel counts them, not only Python's."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("Threads:"))


def socket_count() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed since listdir
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


@dataclass(frozen=True)
class Sample:
    t: float
    phase: str
    rss: int
    threads: int
    sockets: int
    redis_clients: int | None  # None while Redis is down; the probe included
    logged: int
    sent: int
    stored: int | None  # in the global stream, both servers together
    dropped: int
    pending: int


@dataclass(frozen=True)
class SoakConfig:
    seconds: float = 60.0
    writers: int = 3
    rate: float = 100.0  # records per second per writer
    contexts: int = 4  # per writer; every (contexts + 1)th record has none
    warmup: float = 10.0
    kill_at: float = 0.5  # fraction of the run
    outage: float = 3.0
    sample_every: float = 1.0
    queue_size: int = 10000
    rss_bound: int = 10 * MiB


@dataclass
class SoakResult:
    config: SoakConfig
    samples: list[Sample] = field(default_factory=list)
    logged: dict[str, int] = field(default_factory=dict)  # stream key -> records logged
    stored: dict[str, int] = field(default_factory=dict)  # stream key -> entries added
    counted_before_kill: bool = False
    before: Sample | None = None  # before the writers started
    after: Sample | None = None  # after close()
    killed_at: float = 0.0
    restarted_at: float = 0.0
    recovered_after: float | None = None
    logged_during_outage: int = 0
    max_pending: int = 0
    slowest_emit: dict[str, float] = field(default_factory=dict)  # phase -> seconds
    flushed: bool = False
    stats: dict[str, Any] = field(default_factory=dict)


class Writer(threading.Thread):
    """Logs at a steady rate, cycling through its contexts and no context."""

    def __init__(self, soak: Soak, index: int, logger: logging.Logger) -> None:
        super().__init__(name=f"soak-writer-{index}", daemon=True)
        self.soak, self.index, self.logger = soak, index, logger
        jobs = [f"job_w{index}_{k}" for k in range(1, soak.config.contexts - 1)]
        # The space, slash and star of the last one are encoded in key names.
        contexts = [f"User.w{index}", *jobs, f"team {index}/ops*"][: soak.config.contexts]
        self.cycle: list[str | None] = [*contexts, None]
        self.counts: dict[str | None, int] = {}
        self.logged = 0
        self.slowest: dict[str, float] = {}  # phase -> the slowest logging call

    def run(self) -> None:
        soak, log, cycle = self.soak, self.logger, self.cycle
        next_at = time.monotonic()
        while not soak.stopping.is_set():
            i, context, phase = self.logged, cycle[self.logged % len(cycle)], soak.phase
            started = time.perf_counter()
            with log_context(context) if context else contextlib.nullcontext():
                log.info("writer %d record %d: GET /api/orders/%d 200", self.index, i, i % 977)
            took = time.perf_counter() - started
            self.slowest[phase] = max(self.slowest.get(phase, 0.0), took)
            self.counts[context] = self.counts.get(context, 0) + 1
            self.logged = i + 1
            next_at += 1.0 / soak.config.rate
            delay = next_at - time.monotonic()
            if delay > 0:
                soak.stopping.wait(delay)
            elif delay < -1.0:  # fell behind (a stalled machine): do not burst
                next_at = time.monotonic()


class Soak:
    """One soak run against ``server``; :meth:`run` returns what it saw."""

    def __init__(
        self,
        server: Server,
        config: SoakConfig,
        *,
        on_sample: Callable[[Sample], object] = lambda sample: None,
        on_event: Callable[[str], object] = lambda text: None,
    ) -> None:
        self.server, self.config = server, config
        self.on_sample, self.on_event = on_sample, on_event
        self.stopping = threading.Event()
        self.phase = "warmup"
        self.result = SoakResult(config)
        self.handler = RedisLogHandler(url=server.url, queue_size=config.queue_size)
        self.logger = logging.getLogger(f"soak.{id(self)}")
        self.writers = [Writer(self, i, self.logger) for i in range(config.writers)]
        names = self.handler.names
        contexts = {c for w in self.writers for c in w.cycle}
        self.keys = sorted({names.stream(c) for c in contexts})  # None: the global stream
        self.probe = redis.Redis.from_url(
            server.url,
            socket_timeout=2,
            socket_connect_timeout=2,
            retry=Retry(NoBackoff(), 0),
            decode_responses=True,
        )
        self._offset: dict[str, int] = {}  # entries added on the crashed server
        self._started = time.monotonic()

    def run(self) -> SoakResult:
        result, handler, logger = self.result, self.handler, self.logger
        logger.handlers[:] = [handler]
        logger.setLevel(logging.INFO)
        logger.propagate = False
        counts: dict[str, int] = {}
        try:
            self._call("ping")  # connected before the first figures
            result.before = self._sample(0.0, redis_side=False)
            self._started = time.monotonic()
            for writer in self.writers:
                writer.start()
            self._drive()
        finally:
            self.stopping.set()
            for writer in self.writers:
                writer.join(10)
            result.flushed = handler.flush(10)
            result.stats = handler.stats()
            self.phase = "flushed"
            result.samples.append(self._sample(self._now()))
            counts = self._entries_added() or {}
            handler.close()
            logger.handlers.clear()
            time.sleep(0.2)  # let the worker's thread and socket go
            result.after = self._sample(self._now(), redis_side=False)
            self.probe.close()
        for writer in self.writers:
            for context, n in writer.counts.items():  # a set: None names the global stream
                for key in {handler.names.global_stream, handler.names.stream(context)}:
                    result.logged[key] = result.logged.get(key, 0) + n
            for phase, took in writer.slowest.items():
                result.slowest_emit[phase] = max(result.slowest_emit.get(phase, 0.0), took)
        result.stored = {key: self._offset.get(key, 0) + counts.get(key, 0) for key in self.keys}
        return result

    def _now(self) -> float:
        return time.monotonic() - self._started

    def _logged(self) -> int:
        return sum(writer.logged for writer in self.writers)

    def _drive(self) -> None:
        cfg, result = self.config, self.result
        kill_time, next_sample, target = cfg.seconds * cfg.kill_at, cfg.sample_every, 0
        while (now := self._now()) < cfg.seconds:
            stats = self.handler.stats()
            result.max_pending = max(result.max_pending, stats["pending"])
            if self.phase == "warmup" and now >= cfg.warmup:
                self.phase = "steady"
            if not result.killed_at and now >= kill_time:
                self._crash()
            elif result.killed_at and not result.restarted_at and now >= kill_time + cfg.outage:
                self.server.start()
                result.restarted_at = self._now()
                result.logged_during_outage = self._logged() - result.logged_during_outage
                target = self.handler.stats()["enqueued"]
                self.phase = "recovery"
                self.on_event(
                    f"{result.restarted_at:6.1f} s  Redis started again on the same "
                    f"port, empty; {result.logged_during_outage} records were logged "
                    "while it was down"
                )
            elif self.phase == "recovery" and stats["sent"] >= target:
                result.recovered_after = now - result.restarted_at
                self.phase = "steady"
                self.on_event(
                    f"{now:6.1f} s  every record logged before the restart is "
                    f"stored, {result.recovered_after:.2f} s after it"
                )
            if now >= next_sample:
                result.samples.append(self._sample(now))
                self.on_sample(result.samples[-1])
                next_sample += cfg.sample_every
            time.sleep(0.02)

    def _crash(self) -> None:
        """Count what the server holds, its writes paused, then SIGKILL it."""
        paused = self._call("execute_command", "CLIENT", "PAUSE", 10000, "WRITE")
        counts = self._entries_added() if paused else None
        self.result.counted_before_kill = counts is not None
        self._offset = counts or {}
        self.server.kill()
        self.result.killed_at = self._now()
        self.result.logged_during_outage = self._logged()
        self.phase = "outage"
        held = self._offset.get(self.handler.names.global_stream, 0)
        self.on_event(
            f"{self.result.killed_at:6.1f} s  Redis killed (SIGKILL) holding {held} records"
        )

    def _call(self, method: str, *args: Any) -> Any:
        return self._retry(lambda: getattr(self.probe, method)(*args))

    @staticmethod
    def _retry(read: Callable[[], Any]) -> Any:
        """What ``read`` returns, or None; tried twice: the probe's first
        command after a restart finds its old connection dead."""
        for _ in range(2):
            with contextlib.suppress(redis.RedisError):
                return read()
        return None

    def _entries_added(self) -> dict[str, int] | None:
        """Entries ever added to each stream (0 for one that does not exist)."""

        def read() -> list[Any]:
            pipe = self.probe.pipeline(transaction=False)
            for key in self.keys:
                pipe.xinfo_stream(key)
            return pipe.execute(raise_on_error=False)

        replies = self._retry(read)
        if replies is None:
            return None
        counts = {}
        for key, reply in zip(self.keys, replies, strict=True):
            if isinstance(reply, Exception) and "no such key" not in str(reply):
                return None
            counts[key] = 0 if isinstance(reply, Exception) else int(reply["entries-added"])
        return counts

    def _sample(self, now: float, *, redis_side: bool = True) -> Sample:
        stats = self.handler.stats()  # before the stored count, which can only be higher
        # Then Redis: the probe's socket, once it reconnected, is always counted.
        info = self._call("info", "clients") if redis_side else None
        counts = self._entries_added() if info else None
        rss, threads, sockets = rss_bytes(), thread_count(), socket_count()
        key = self.handler.names.global_stream
        stored = None if counts is None else self._offset.get(key, 0) + counts[key]
        return Sample(
            round(now, 1),
            self.phase,
            rss,
            threads,
            sockets,
            int(info["connected_clients"]) if info else None,
            self._logged(),
            stats["sent"],
            stored,
            stats["dropped"],
            stats["pending"],
        )


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str  # a figure for docs/guarantees.md


def check(result: SoakResult) -> list[Check]:
    """What must hold after a soak (see the module doc), each with its figures."""
    cfg, stats, samples = result.config, result.stats, result.samples
    total = max(result.logged.values(), default=0)
    stored = max(result.stored.values(), default=0)
    wrong = {
        key: (n, result.stored.get(key, 0))
        for key, n in result.logged.items()
        if result.stored.get(key, 0) != n
    }
    recovery = -1.0 if result.recovered_after is None else result.recovered_after
    checks = [
        Check(
            "every record logged is stored exactly once",
            bool(total and not wrong),
            f"{samples[-1].t if samples else 0:.0f} s, {cfg.writers} threads, {total} records "
            f"logged under {len(result.logged) - 1} contexts and none, {stored} stored"
            + (f"; (logged, stored) differ: {wrong}" if wrong else ""),
        ),
        Check(
            "the crash happened and every earlier record was stored after it",
            bool(
                result.killed_at
                and result.restarted_at
                and recovery >= 0
                and result.counted_before_kill
            ),
            f"Redis SIGKILLed at {result.killed_at:.1f} s, back {cfg.outage:.0f} s later "
            f"(counted before the kill: {result.counted_before_kill}), all earlier records "
            f"stored {recovery:.2f} s after the restart",
        ),
        Check(
            "nothing dropped or refused",
            stats.get("dropped") == stats.get("failed") == 0,
            f"{result.logged_during_outage} records logged during the outage, max pending "
            f"{result.max_pending} (queue_size {cfg.queue_size}), dropped "
            f"{stats.get('dropped')}, failed {stats.get('failed')}",
        ),
        Check(
            "flush() after the soak succeeded",
            result.flushed,
            f"flush() at the end: {result.flushed}, stats {stats}",
        ),
    ]
    # Samples after the warm-up and before the crash; once the handler writes again.
    steady = [s for s in samples if s.phase == "steady" and s.t < result.killed_at]
    recovered = [s for s in samples if s.phase == "steady" and s.t > result.restarted_at]
    if not steady or not recovered:
        return [
            *checks,
            Check(
                "samples before and after the crash",
                False,
                f"{len(steady)} and {len(recovered)}: run longer",
            ),
        ]
    rss = [s.rss / MiB for s in samples if s.t >= steady[0].t]
    growth = max(rss) - rss[0]
    checks.append(
        Check(
            f"resident memory grows less than {cfg.rss_bound / MiB:.0f} MiB after the warm-up",
            growth < cfg.rss_bound / MiB,
            f"resident memory {rss[0]:.1f} MiB after the {cfg.warmup:.0f} s warm-up, "
            f"max {max(rss):.1f}, end {rss[-1]:.1f} (+{growth:.2f} MiB)",
        )
    )
    for what in ("threads", "sockets", "redis_clients"):
        normal = statistics.median_low(getattr(s, what) or 0 for s in steady)
        seen = [getattr(s, what) for s in samples if getattr(s, what) is not None]
        after = sorted({getattr(s, what) for s in recovered}, key=str)
        ok = (
            after == [normal]
            if what != "redis_clients"
            else all(c is not None and c <= normal for c in after)
        )  # the server's count may lag
        checks.append(
            Check(
                f"{what.replace('_', ' ')} back to their steady value once writing again",
                ok,
                f"{what.replace('_', ' ')}: steady {normal}, "
                f"over the run {min(seen)}..{max(seen)}, once writing again {after}",
            )
        )
    pairs = [(s.threads, s.sockets) if s else None for s in (result.before, result.after)]
    checks.append(
        Check(
            "close() leaves the threads and sockets the soak found",
            pairs[0] is not None and pairs[0] == pairs[1],
            f"(threads, sockets) before the soak {pairs[0]}, after close() {pairs[1]}",
        )
    )
    return checks


def figures(result: SoakResult, label: str = "soak") -> list[str]:
    """The run in lines starting with FIGURE (for docs/guarantees.md)."""
    slowest = ", ".join(
        f"{phase} {took * 1000:.2f} ms" for phase, took in sorted(result.slowest_emit.items())
    )
    return [
        f"FIGURE {label}: {line}"
        for line in [*(c.detail for c in check(result)), f"slowest logging call: {slowest}"]
    ]


HEADER = (
    f"{'t (s)':>7} {'phase':<9} {'RSS MiB':>8} {'threads':>7} {'sockets':>7} "
    f"{'clients':>7} {'logged':>8} {'sent':>8} {'stored':>8} {'dropped':>7} {'pending':>7}"
)


def row(s: Sample) -> str:
    clients, stored = ("-" if v is None else str(v) for v in (s.redis_clients, s.stored))
    return (
        f"{s.t:7.1f} {s.phase:<9} {s.rss / MiB:8.1f} {s.threads:7d} {s.sockets:7d} "
        f"{clients:>7} {s.logged:8d} {s.sent:8d} {stored:>8} {s.dropped:7d} {s.pending:7d}"
    )
