"""What a log handler costs the code that logs: RedisLogHandler next to the alternatives.

Run from the repository root::

    .venv/bin/python bench/bench_handler.py [--quick] [--out bench/out]

Four handlers take the same logger call, ``logger.info("user %s did %s in
%.2f ms", "alice", "checkout", 12.5)`` under ``log_context("User.alice")``,
with the same plain Formatter:

- ``format-only``: a handler whose emit() only formats.  Every handler pays at
  least this much, so it is the baseline the others are divided by.
- ``queue``: the standard library's answer to slow handlers, QueueHandler on a
  SimpleQueue with a QueueListener draining into a format-only handler.
- ``naive``: what hand-rolled Redis handlers do, one redis-py pipeline round
  trip (PUBLISH + XADD to the context and to the global channel/stream) per
  record, in the caller's thread.
- ``ours``: RedisLogHandler.

Why these measurements:

A. Instructions per record, counted by valgrind's callgrind in a child process
   per handler and run length.  Wall-clock times on a shared two-core machine
   wander by tens of percent from run to run; instruction counts repeat to a
   fraction of a percent, so they are what the thresholds are checked on.  The
   difference between a long and a short run cancels interpreter start-up,
   imports and warm-up.  The logging (main) thread is what the caller pays;
   all threads summed is what the process pays, shipping included.
B. Emit wall-clock per record outside valgrind: what instructions miss (lock
   and GIL hand-offs, system calls, cache effects), as a median of interleaved
   rounds so that a noisy moment hits every handler alike.
C. A burst of records from one thread, timed until the last one is stored in
   Redis: whether the shipper keeps up without dropping, and what Redis itself
   spends per record.
D. Idle: a handler with nothing to ship must not spin.

Redis: a private ``redis-server`` on a free loopback port, without persistence,
started here and stopped by pid at the end; never a shared server.

The results go to ``<out>/results.json`` (raw figures included), the callgrind
files to ``<out>/callgrind/<handler>-<records>/`` for callgrind_annotate, and
the chart to ``docs/benchmark.png`` (``<out>/benchmark.png`` with --quick, so a
quick run never replaces the published figure).  The exit status is 1 when one
of the thresholds is missed, 2 when the benchmark itself could not run.

This file is the entry point: it parses the arguments, runs the parts in
order, and is also what the callgrind and idle children run (``--child``,
``--idle-child``).  The parts live in bench/lib/: subjects.py (the handlers and
the logging call), private_redis.py, instructions.py (A), timing.py (B, C, D),
report.py (table, thresholds, chart), child_processes.py and
callgrind_files.py (what the parent and its children share).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script, bench/ is sys.path[0]: add the repository (bench.lib) and tests/ (support).
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
sys.path.insert(2, str(Path(__file__).resolve().parents[1] / "tests"))

import redis

from bench.lib.instructions import child_main, measure_instructions, source_fingerprint
from bench.lib.private_redis import PrivateRedis
from bench.lib.report import (
    DOCS_CHART,
    check_thresholds,
    draw_chart,
    machine,
    print_summary,
    render_table,
    source_revision,
)
from bench.lib.subjects import CALL, CONTEXT, FORMAT, HANDLERS, QUEUE_SIZE, STREAM_MAXLEN, Subject
from bench.lib.timing import idle_child_main, measure_burst, measure_idle, measure_wall_clock


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer records and rounds")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "out",
        help="results.json, callgrind files (default: bench/out)",
    )
    parser.add_argument(
        "--chart",
        type=Path,
        default=None,
        help="chart path (default: docs/benchmark.png, <out>/benchmark.png with --quick)",
    )
    parser.add_argument("--skip-callgrind", action="store_true", help=argparse.SUPPRESS)
    # Internal: the processes the benchmark runs as children of itself.
    parser.add_argument("--child", choices=HANDLERS, help=argparse.SUPPRESS)
    parser.add_argument("--idle-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--records", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=200, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--child-result", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """Run A to D against a private Redis; print the table and the checks."""
    quick = args.quick
    config = {
        "quick": quick,
        "callgrind_records": (300, 1500) if quick else (1000, 6000),
        "warmup": 200,
        "wall_records": 5000 if quick else 20000,
        "wall_rounds": 5 if quick else 7,
        "burst_records": 20000 if quick else 100000,
        "burst_naive_records": 2000 if quick else 10000,
        "burst_rounds": 3 if quick else 7,
        "queue_size": QUEUE_SIZE,
        "stream_maxlen": STREAM_MAXLEN,
        "call": CALL,
        "context": CONTEXT,
        "format": FORMAT,
    }
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    chart = args.chart or (out / "benchmark.png" if quick else DOCS_CHART)
    if shutil.which("valgrind") is None and not args.skip_callgrind:
        print("valgrind not found on PATH (make tools installs it)", file=sys.stderr)
        return 2
    started = time.monotonic()
    server = PrivateRedis()
    subjects: dict[str, Subject] = {}
    try:
        results: dict[str, Any] = {
            "machine": machine(),
            "config": config,
            "source": source_revision(),
        }
        results["machine"]["redis_server"] = server.version()
        print(
            f"redis-server {results['machine']['redis_server']} on port {server.port} "
            f"(pid {server.pid or '?'})",
            flush=True,
        )

        print("A. instructions per record (callgrind)", flush=True)
        short, long = config["callgrind_records"]
        if args.skip_callgrind:  # development only: the table needs A
            previous = json.loads((out / "results.json").read_text())
            results["instructions"] = previous["instructions"]
        else:
            results["instructions"] = measure_instructions(
                server, short, long, config["warmup"], out
            )

        subjects = {name: Subject(name, server.url) for name in HANDLERS}
        for subject in subjects.values():
            subject.start()
        print("B. emit wall-clock", flush=True)
        results["wall_clock"] = measure_wall_clock(
            subjects, config["wall_records"], config["wall_rounds"]
        )
        print("C. burst", flush=True)
        results["burst"] = measure_burst(
            subjects,
            server,
            config["burst_records"],
            config["burst_naive_records"],
            config["burst_rounds"],
        )
        results["ours_stats"] = subjects["ours"].stats()
        for subject in subjects.values():
            subject.close()
        subjects = {}
        print("D. idle", flush=True)
        results["idle"] = measure_idle(server)
    finally:
        for subject in subjects.values():
            with contextlib.suppress(Exception):
                subject.close()
        server.stop()

    results["source"]["fingerprint_end"] = source_fingerprint()
    results["source"]["changed_during_run"] = (
        results["source"]["fingerprint_end"] != results["source"]["fingerprint"]
    )
    results["checks"] = check_thresholds(results)
    results["seconds"] = round(time.monotonic() - started, 1)
    results["table"] = render_table(results)
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    draw_chart(results, chart)
    print_summary(results, out, chart)
    return 0 if all(check["ok"] for check in results["checks"]) else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    if args.idle_child:
        return idle_child_main(args)
    try:
        return run(args)
    except (RuntimeError, subprocess.SubprocessError, redis.RedisError) as exc:
        print(f"benchmark could not run: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
