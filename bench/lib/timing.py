"""Parts B, C and D: what instruction counts miss, timed outside valgrind.

B. Emit wall-clock per record: lock and GIL hand-offs, system calls, cache
   effects; a median of interleaved rounds, so that a noisy moment hits every
   handler alike.
C. A burst of records from one thread, timed until the last one is stored:
   whether the shipper keeps up without dropping, and what Redis itself
   spends per record.
D. Idle: a handler with nothing to ship must not spin.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import time
from typing import Any

from bench.lib.child_processes import child_command, child_env
from bench.lib.private_redis import PrivateRedis
from bench.lib.subjects import (
    CONTEXT,
    FLUSH_TIMEOUT,
    HANDLERS,
    REDIS_HANDLERS,
    Subject,
    attached,
    bench_logger,
    log_records,
)
from redis_logstream import log_context

IDLE_SECONDS = 3.0


def median_ratio(values: list[float], baseline: list[float]) -> float:
    return statistics.median(values) / statistics.median(baseline)


# -- B: emit wall-clock -----------------------------------------------------------


def measure_wall_clock(subjects: dict[str, Subject], count: int, rounds: int) -> dict[str, Any]:
    """Median seconds per record of the logging call, rounds interleaved.

    The order of the handlers rotates each round, and each handler is drained
    after its round, so no handler inherits another's backlog.
    """
    logger = bench_logger()
    times: dict[str, list[float]] = {name: [] for name in HANDLERS}
    with log_context(CONTEXT):
        for name in HANDLERS:  # warm-up: connections, the Lua script, caches
            with attached(logger, subjects[name].handler):
                log_records(logger, 200)
            subjects[name].drain()
        for round_ in range(rounds):
            order = HANDLERS[round_ % len(HANDLERS) :] + HANDLERS[: round_ % len(HANDLERS)]
            for name in order:
                with attached(logger, subjects[name].handler):
                    started = time.perf_counter()
                    log_records(logger, count)
                    elapsed = time.perf_counter() - started
                if not subjects[name].drain():
                    raise RuntimeError(f"{name}: records not delivered after a timing round")
                times[name].append(elapsed / count)
    return {
        name: {"median": statistics.median(values), "rounds": values}
        for name, values in times.items()
    }


# -- C: burst -----------------------------------------------------------------------


def timed_burst(logger: logging.Logger, subject: Subject, count: int) -> tuple[float, float]:
    """Seconds from the first emit until the last record is delivered, and the
    CPU seconds this process (all its threads) used meanwhile."""
    with attached(logger, subject.handler):
        cpu_started = time.process_time()
        started = time.perf_counter()
        log_records(logger, count)
        ok = subject.stop()
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    subject.start()
    if not ok:
        raise RuntimeError(f"{subject.name}: burst not delivered within {FLUSH_TIMEOUT} s")
    return elapsed, cpu


def measure_burst(
    subjects: dict[str, Subject], server: PrivateRedis, count: int, naive_count: int, rounds: int
) -> dict[str, Any]:
    """Burst of records from one thread, timed until stored; CPU per record.

    Redis is flushed before each of its rounds so that every round starts
    from empty streams; Redis's own CPU is read around the burst (INFO cpu).
    The process's CPU is kept too: on a machine with a spare core for Redis
    the burst time follows it, on a busy one Redis's CPU adds to the time.
    """
    logger = bench_logger()
    counts = {name: count for name in HANDLERS}
    counts["naive"] = naive_count
    seconds: dict[str, list[float]] = {name: [] for name in HANDLERS}
    cpu: dict[str, list[float]] = {name: [] for name in HANDLERS}
    redis_cpu: dict[str, list[float]] = {name: [] for name in REDIS_HANDLERS}
    ours = subjects["ours"]
    dropped_before = ours.stats()["dropped"]
    load_before = os.getloadavg()[0]
    with log_context(CONTEXT):
        for round_ in range(rounds):
            order = ("format-only", "ours", "queue", "naive")
            for name in order[::-1] if round_ % 2 else order:
                n = counts[name]
                if name in redis_cpu:
                    server.flushall()
                    redis_before = server.cpu_seconds()
                elapsed, used = timed_burst(logger, subjects[name], n)
                seconds[name].append(elapsed)
                cpu[name].append(used)
                if name in redis_cpu:
                    redis_cpu[name].append((server.cpu_seconds() - redis_before) / n)
                    stored = server.entries_added()
                    if stored != n:
                        raise RuntimeError(f"{name} burst: {stored} of {n} records in Redis")
    result: dict[str, Any] = {"loadavg_1min": [load_before, os.getloadavg()[0]]}
    for name in HANDLERS:
        median = statistics.median(seconds[name])
        result[name] = {
            "records": counts[name],
            "seconds_median": median,
            "records_per_s": counts[name] / median,
            "process_cpu_us_per_record": statistics.median(cpu[name]) / counts[name] * 1e6,
            "rounds": seconds[name],
            "cpu_rounds": cpu[name],
        }
        if name in redis_cpu:
            result[name]["redis_cpu_us_per_record"] = statistics.median(redis_cpu[name]) * 1e6
    ours_result = result["ours"]
    ours_result["dropped"] = ours.stats()["dropped"] - dropped_before
    ours_result["ratio_to_format_only"] = median_ratio(seconds["ours"], seconds["format-only"])
    ours_result["cpu_ratio_to_format_only"] = median_ratio(cpu["ours"], cpu["format-only"])
    # Each round's own ratio too: neighbouring runs share the machine's
    # load, so the spread shows how much of the ratio is noise.
    ours_result["round_ratios"] = [
        mine / base for mine, base in zip(seconds["ours"], seconds["format-only"], strict=True)
    ]
    return result


# -- D: idle ------------------------------------------------------------------------


def idle_child_main(args: argparse.Namespace) -> int:
    """Log one record, then measure the CPU the process uses while it sleeps.

    In a process of its own, so that nothing else (other handlers' threads,
    the parent's bookkeeping) is counted.
    """
    handler = Subject("ours", args.url).handler
    logger = bench_logger()
    with attached(logger, handler), log_context(CONTEXT):
        log_records(logger, 1)
        cpu_before = time.process_time()
        time.sleep(IDLE_SECONDS)
        cpu_ms = (time.process_time() - cpu_before) * 1000
        # The window above includes the record's delivery (thread start,
        # connect, first write); a second one shows the idle worker alone.
        cpu_before = time.process_time()
        time.sleep(IDLE_SECONDS)
        quiet_ms = (time.process_time() - cpu_before) * 1000
    delivered = handler.flush(timeout=10) and handler.stats()["sent"] == 1
    handler.close()
    print(
        json.dumps(
            {
                "cpu_ms": cpu_ms,
                "quiet_cpu_ms": quiet_ms,
                "seconds": IDLE_SECONDS,
                "delivered": delivered,
            }
        )
    )
    return 0


def measure_idle(server: PrivateRedis) -> dict[str, Any]:
    proc = subprocess.run(
        child_command("--idle-child", "--url", server.url),
        env=child_env(),
        capture_output=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(proc.stdout))
