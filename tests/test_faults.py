"""Faults against real redis-server processes: killed, paused, not Redis, out of memory.

Each test breaks a server it started and asserts the outcome (what arrives,
in which order, with which timestamp, at what cost to the caller), and
prints its measurements on one ``FIGURE`` line (collect them with
``pytest -s``) for docs/guarantees.md.

Emit cost is the CPU time of the logging thread (``time.thread_time_ns``)
per record, in batches interleaved with a reference, compared by medians:
wall-clock time on a loaded 2-core machine measures the scheduler more than
the handler.
"""

from __future__ import annotations

import logging
import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis

from redis_logstream import RedisLogHandler
from support.helpers import Handlers, entries, fresh_logger, messages, wait_for
from support.servers import RedisServer, SilentServer
from test_lifecycle import run_script

GLOBAL = "stream:logs:global"


def figure(**values: float | int | str) -> None:
    """Print one line of measurements for docs/guarantees.md."""
    print("FIGURE " + " ".join(f"{name}={value}" for name, value in values.items()))


class CostProbe:
    """Logs numbered batches through one logger and keeps each batch's
    per-record CPU cost in this thread, in nanoseconds."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.costs: list[float] = []
        self.logged: list[str] = []

    def batch(self, size: int) -> None:
        tag = f"b{len(self.costs)}"
        info = self.log.info
        start = time.thread_time_ns()
        for i in range(size):
            info("%s %d", tag, i)
        self.costs.append((time.thread_time_ns() - start) / size)
        self.logged.extend(f"{tag} {i}" for i in range(size))

    def median(self, start: int = 0) -> float:
        return statistics.median(self.costs[start:])


def interleave(probes: Sequence[CostProbe], rounds: int, size: int, until: float) -> int:
    """One batch per probe and round, the order flipped every round (so that
    neither side always runs first after the sleep), until ``rounds`` or the
    monotonic time ``until``; returns the rounds done."""
    done = 0
    while done < rounds and time.monotonic() < until:
        for probe in probes if done % 2 == 0 else probes[::-1]:
            probe.batch(size)
        done += 1
        time.sleep(0.02)  # let the workers run between batches, as between requests
    return done


# -- kill -9 and restart -------------------------------------------------------------


class PacedLogger(threading.Thread):
    """Logs "r<i>" at ``rate`` records per second on an absolute schedule
    (record i is due at start + i / rate), keeping each record's created time."""

    def __init__(self, log: logging.Logger, rate: float) -> None:
        super().__init__(name="paced-logger", daemon=True)
        self.log, self.rate = log, rate
        self.created: list[float] = []
        self.max_lag = 0.0  # how far the logging calls fell behind the schedule
        self.stop = threading.Event()
        log.addFilter(self._keep_created)

    def _keep_created(self, record: logging.LogRecord) -> bool:
        self.created.append(record.created)
        return True

    @property
    def count(self) -> int:
        return len(self.created)

    def run(self) -> None:
        info, start, i = self.log.info, time.monotonic(), 0
        while not self.stop.is_set():
            delay = start + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                self.max_lag = max(self.max_lag, -delay)
            info("r%d", i)
            i += 1


def test_records_logged_while_redis_is_killed_arrive_in_order_after_restart(
    handlers: Handlers, own_redis: RedisServer
) -> None:
    rate, outage = 2000.0, 5.0
    handler = handlers(url=own_redis.url, queue_size=20_000, stream_maxlen=30_000)
    paced = PacedLogger(fresh_logger(handler), rate)
    paced.start()
    try:
        time.sleep(0.7)
        killed_at = paced.count  # from here on, nothing reaches the old server
        own_redis.kill()
        time.sleep(outage)
        restart_from = paced.count
        own_redis.restart()
        restarted = time.monotonic()
        probe = own_redis.client(socket_timeout=2)
        while not probe.xlen(GLOBAL):  # the restarted server is empty until a write lands
            assert time.monotonic() - restarted < 10, handler.stats()
            time.sleep(0.002)
        first_delivery = time.monotonic() - restarted
        time.sleep(0.5)  # keep logging at rate while the backlog drains
    finally:
        paced.stop.set()
        paced.join(5)
    assert handler.flush(15)
    stored = entries(own_redis.client(), GLOBAL)
    first = int(stored[0]["message"][1:])
    # The server lost what it held; the batch in flight at the kill and
    # everything after it came back, each once, in order.
    assert first <= killed_at
    assert [e["message"] for e in stored] == [f"r{i}" for i in range(first, paced.count)]
    assert [e["timestamp"] for e in stored] == paced.created[first:]
    stats = handler.stats()
    assert stats["dropped"] == 0 and stats["pending"] == 0 and stats["failed"] == 0
    assert stats["errors"] >= 1 and stats["retries"] >= 1
    figure(
        restart_to_first_delivery_ms=round(first_delivery * 1000),
        outage_records=restart_from - killed_at,
        records=paced.count,
        rate=int(rate),
        max_logging_lag_ms=round(paced.max_lag * 1000, 1),
        retries=stats["retries"],
    )
    # Backoff is capped at 1 s; the rest is room for a loaded 2-core machine.
    assert first_delivery < 1.0, first_delivery  # the goal; retries wait at most 0.5 s
    assert paced.max_lag < 1.0, paced.max_lag  # emit never waited on the dead server


# -- CLIENT PAUSE ---------------------------------------------------------------------


def test_client_pause_costs_the_caller_nothing_and_records_arrive_after_it(
    handlers: Handlers, own_redis: RedisServer, redis_url: str
) -> None:
    size = 300
    paused_handler = handlers(url=own_redis.url, queue_size=100_000, stream_maxlen=100_000)
    healthy_handler = handlers(url=redis_url, queue_size=100_000, stream_maxlen=100_000)
    paused, healthy = (
        CostProbe(fresh_logger(paused_handler)),
        CostProbe(fresh_logger(healthy_handler)),
    )
    interleave([paused, healthy], 6, size, float("inf"))  # warm-up and unpaused reference
    assert paused_handler.flush(5) and healthy_handler.flush(5)
    before = len(paused.costs)
    sent_before = paused_handler.stats()["sent"]
    admin = own_redis.client(socket_timeout=5)
    seconds, micros = admin.time()
    pause_ends_ms = seconds * 1000 + micros // 1000 + 3000  # at the earliest
    admin.execute_command("CLIENT", "PAUSE", "3000", "ALL")
    paused_at = time.monotonic()
    interleave([paused, healthy], 12, size, paused_at + 2.4)
    during = paused_handler.stats()
    waited = time.monotonic() - paused_at
    assert waited < 3.0, waited  # the measurements above ran inside the pause
    assert during["sent"] == sent_before  # nothing got through the pause...
    assert during["pending"] == size * (len(paused.costs) - before)
    assert paused_handler.flush(10)  # ...and all of it once the pause ends
    assert messages(own_redis.client(), GLOBAL) == paused.logged
    ids = [int(entry_id.split(b"-")[0]) for entry_id, _ in admin.xrange(GLOBAL)]
    assert min(ids[sent_before:]) >= pause_ends_ms
    assert paused_handler.stats()["dropped"] == 0

    # The reference is the healthy handler's batches interleaved with the
    # paused ones in the same window: the machine's speed drifts (other jobs,
    # clock changes) more between windows than a paused Redis could add.
    unpaused_cost, paused_cost = healthy.median(before), paused.median(before)
    figure(
        emit_before_pause_ns=round(statistics.median(paused.costs[2:before])),
        emit_unpaused_ns=round(unpaused_cost),
        emit_paused_ns=round(paused_cost),
        paused_over_unpaused=round(paused_cost / unpaused_cost, 2),
        paused_batches=len(paused.costs) - before,
        pause_end_to_delivery_ms=min(ids[sent_before:]) - pause_ends_ms,
    )
    assert paused_cost <= 1.5 * unpaused_cost


# -- peers that are not Redis -------------------------------------------------------------

CHILD = """
import logging, time
from redis_logstream import RedisLogHandler
log = logging.getLogger("app")
log.addHandler(RedisLogHandler(url={url!r}, shutdown_timeout={timeout}))
log.propagate = False
log.warning("first")  # starts the worker, which meets the peer
time.sleep(0.3)
start = time.thread_time_ns()
for i in range(2000):
    log.warning("more %d", i)
cost = (time.thread_time_ns() - start) / 2000
print(f"{{cost:.0f}} {{time.time():.6f}}", flush=True)
"""


@pytest.mark.parametrize("peer", ["silent", "garbage"])
def test_a_peer_that_is_not_redis_costs_emit_nothing_and_exit_stays_bounded(
    peer: str, handlers: Handlers, redis_url: str, request: pytest.FixtureRequest
) -> None:
    server: SilentServer = request.getfixturevalue(f"{peer}_server")
    size, shutdown_timeout = 300, 0.5
    broken_handler = handlers(url=server.url, queue_size=100_000, shutdown_timeout=shutdown_timeout)
    healthy_handler = handlers(url=redis_url, queue_size=100_000, stream_maxlen=100_000)
    broken, healthy = (
        CostProbe(fresh_logger(broken_handler)),
        CostProbe(fresh_logger(healthy_handler)),
    )
    broken.log.info("hello")
    wait_for(lambda: server.connections >= 1)  # the worker is at the peer now
    interleave([broken, healthy], 10, size, float("inf"))
    stats = broken_handler.stats()
    assert stats["sent"] == 0 and stats["dropped"] == 0
    assert stats["pending"] == 1 + size * len(broken.costs)
    if peer == "garbage":  # a protocol error is an error like any other: counted, retried
        wait_for(lambda: broken_handler.stats()["retries"] >= 1)
        assert broken_handler.stats()["errors"] >= 1
    assert healthy_handler.flush(5)

    result = run_script(CHILD.format(url=server.url, timeout=shutdown_timeout), timeout=30)
    exited = time.time()
    assert result.returncode == 0, result.stderr
    child_cost, done = (float(x) for x in result.stdout.split())
    exit_seconds = exited - done  # from the script's last line to the process's end
    broken_cost, healthy_cost = broken.median(2), healthy.median(2)
    figure(
        peer=peer,
        emit_healthy_ns=round(healthy_cost),
        emit_broken_ns=round(broken_cost),
        broken_over_healthy=round(broken_cost / healthy_cost, 2),
        child_emit_ns=round(child_cost),
        child_exit_ms=round(exit_seconds * 1000),
        shutdown_timeout_ms=round(shutdown_timeout * 1000),
    )
    assert broken_cost <= 1.5 * healthy_cost
    assert "2001 records not delivered at exit" in result.stderr, result.stderr
    # Teardown takes ~50 ms: the margin is for a loaded machine.  Waiting
    # shutdown_timeout twice (in the exit hook, then again in the close() of
    # logging.shutdown) takes over 1 s while the worker is stuck in a read.
    assert exit_seconds < shutdown_timeout + 0.5, exit_seconds


TESTS = Path(__file__).resolve().parent
ABANDON = """
import logging, sys
sys.path.insert(0, {tests!r})
from support.helpers import Handlers, fresh_logger
made = Handlers()
log = fresh_logger(made(url={url!r}, shutdown_timeout=0.2))
for i in range(3):
    log.info("never delivered %d", i)
made.close()
"""


def test_handlers_a_test_closes_leave_nothing_to_report_at_exit(
    silent_server: SilentServer,
) -> None:
    result = run_script(ABANDON.format(tests=str(TESTS), url=silent_server.url), timeout=30)
    assert result.returncode == 0, result.stderr
    assert "not delivered at exit" not in result.stderr, result.stderr


# -- maxmemory ------------------------------------------------------------------------------


def test_out_of_memory_is_counted_and_the_kept_records_arrive_once_memory_is_freed(
    handlers: Handlers, capsys: pytest.CaptureFixture[str]
) -> None:
    with RedisServer(["--maxmemory", "2mb", "--maxmemory-policy", "noeviction"]) as server:
        admin: redis.Redis = server.client(socket_timeout=5)
        handler: RedisLogHandler = handlers(url=server.url, queue_size=1000, batch_size=100)
        log = fresh_logger(handler)
        log.info("before")
        assert handler.flush(5)
        # Another client fills the server: a short command (a long one would
        # be refused for its own query buffer) that allocates 3 MB.
        admin.setrange("ballast", 3 * 2**20 - 1, b"x")
        assert admin.info("memory")["used_memory"] > 2 * 2**20
        for i in range(1500):
            log.info("oom %d", i)  # nothing may be raised here
        wait_for(lambda: handler.stats()["retries"] >= 3)
        stats = handler.stats()
        assert stats["sent"] == 1 and stats["pending"] == 1000 and stats["dropped"] == 500
        assert stats["errors"] >= 3 and stats["failed"] == 0
        assert "OutOfMemory" in stats["last_error"] and "maxmemory" in stats["last_error"]
        assert admin.xlen(GLOBAL) == 1

        admin.delete("ballast")
        freed = time.monotonic()
        wait_for(lambda: admin.xlen(GLOBAL) > 1, timeout=10, interval=0.005)
        resumed = time.monotonic() - freed
        assert handler.flush(10)
        # drop-new kept the first queue_size records of the OOM period.
        assert messages(admin, GLOBAL) == ["before"] + [f"oom {i}" for i in range(1000)]
        after = handler.stats()
        assert after["sent"] == 1001 and after["pending"] == 0 and after["failed"] == 0
    assert "Logging error" not in capsys.readouterr().err
    figure(
        oom_errors=stats["errors"],
        oom_retries=stats["retries"],
        kept=1000,
        dropped=stats["dropped"],
        freed_to_delivery_ms=round(resumed * 1000),
    )
    assert resumed < 1.5, resumed  # backoff is capped at 0.5 s
