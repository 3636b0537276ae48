"""Part A: instructions per record, counted by valgrind's callgrind.

Wall-clock times on a shared two-core machine wander by tens of percent from
run to run; instruction counts repeat to about a percent, so they are what
the thresholds are checked on.  Each handler runs in a child process under
callgrind, once short and once long: the difference of the two counts is the
measured loop's, with interpreter start-up, imports and warm-up cancelled.
The logging (main) thread is what the caller pays; all threads summed is
what the process pays, shipping included.

Because the children import the package afresh, this module also
fingerprints its source, so that a change during the run is noticed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import redis_logstream
from bench.lib.callgrind_files import CHILD_RESULT, OUT_FILE, thread_totals
from bench.lib.child_processes import child_command, child_env
from bench.lib.private_redis import PrivateRedis
from bench.lib.subjects import (
    CONTEXT,
    HANDLERS,
    LABELS,
    REDIS_HANDLERS,
    Subject,
    attached,
    bench_logger,
    log_records,
)
from redis_logstream import log_context

#: Under callgrind everything runs some 50 times slower: a generous limit.
CHILD_TIMEOUT = 3600.0


def child_main(args: argparse.Namespace) -> int:
    """The process callgrind watches: warm up, log, deliver everything, report.

    Both run lengths do exactly the same work apart from the measured loop,
    so the difference of their counts is the loop's.  The warm-up is drained
    before the loop (our first batch loads the Lua script and connects),
    and everything is drained again before exit so that shipping is counted.
    """
    subject = Subject(args.child, args.url)
    logger = bench_logger()
    subject.start()
    with attached(logger, subject.handler), log_context(CONTEXT):
        log_records(logger, args.warmup)
        warm_ok = subject.drain()
        log_records(logger, args.records)
        ok = subject.stop()
    result = {
        "handler": args.child,
        "records": args.records,
        "warmup": args.warmup,
        "delivered": bool(ok and warm_ok),
        "stats": subject.stats(),
    }
    subject.handler.close()
    Path(args.child_result).write_text(json.dumps(result))
    return 0 if result["delivered"] else 3


def source_fingerprint() -> str:
    """A digest of the package's source: children import it afresh, so a
    change during the run would mix versions (and bytecode compiled inside a
    measured child would count as logging cost)."""
    package = Path(redis_logstream.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        if path.suffix in (".py", ".lua") and "__pycache__" not in path.parts:
            digest.update(str(path.relative_to(package)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def callgrind_run(
    name: str, records: int, warmup: int, server: PrivateRedis, out: Path
) -> dict[str, Any]:
    """Run one child under callgrind; return its per-thread instruction counts."""
    rundir = out / "callgrind" / f"{name}-{records}"
    shutil.rmtree(rundir, ignore_errors=True)
    rundir.mkdir(parents=True)
    result_path = rundir / CHILD_RESULT
    child = child_command("--child", name, "--warmup", str(warmup), "--url", server.url)
    # A dry run outside valgrind first: it leaves the bytecode of everything
    # the child imports cached, so that no measured child compiles a module
    # (source edited since the last import would cost one run, not the other).
    subprocess.run(
        [*child, "--records", "0", "--child-result", str(rundir / "dry.json")],
        env=child_env(),
        capture_output=True,
        timeout=120,
        check=True,
    )
    server.flushall()
    # --fair-sched=yes: valgrind runs one thread at a time, and its default
    # lock lets a busy thread take it back at once, so a woken shipper can wait
    # for hundreds of records while the logging thread keeps the CPU.  A fair
    # hand-over is closer to two threads on two cores, and repeats
    # (docs/benchmarks.md, "Reproducibility of the instruction counts").
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--separate-threads=yes",
        "--fair-sched=yes",
        f"--callgrind-out-file={rundir / OUT_FILE}",
        *child,
        "--records",
        str(records),
        "--child-result",
        str(result_path),
    ]
    started = time.monotonic()
    proc = subprocess.run(
        cmd, env=child_env(), capture_output=True, timeout=CHILD_TIMEOUT, check=False
    )
    elapsed = time.monotonic() - started
    (rundir / "valgrind.log").write_bytes(proc.stderr)
    if proc.returncode != 0 or not result_path.exists():
        tail = proc.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"callgrind child {name}/{records} failed ({proc.returncode}):\n{tail}")
    result = json.loads(result_path.read_text())
    threads = thread_totals(rundir)
    stored = server.entries_added() if name in REDIS_HANDLERS else None
    if stored is not None and stored != warmup + records:
        raise RuntimeError(f"{name}/{records}: {stored} records in Redis, not {warmup + records}")
    return {
        "records": records,
        "threads": {str(k): v for k, v in sorted(threads.items())},
        "main": threads[1],
        "all": sum(threads.values()),
        "seconds": round(elapsed, 1),
        "stored_in_redis": stored,
        "child": result,
    }


def measure_instructions(
    server: PrivateRedis, short: int, long: int, warmup: int, out: Path
) -> dict[str, Any]:
    """(instructions_long - instructions_short) / (long - short), per handler."""
    results: dict[str, Any] = {}
    for name in HANDLERS:
        for _attempt in range(3):
            before = source_fingerprint()
            runs = [callgrind_run(name, n, warmup, server, out) for n in (short, long)]
            after = source_fingerprint()
            if before == after:
                break
            print(f"  {name}: the package's source changed during its runs; again", flush=True)
        else:
            raise RuntimeError("the package's source keeps changing: measure a quiet checkout")
        span = long - short
        entry: dict[str, Any] = {
            "main": (runs[1]["main"] - runs[0]["main"]) / span,
            "all": (runs[1]["all"] - runs[0]["all"]) / span,
            "source": after,
            "runs": runs,
        }
        stats = [run["child"]["stats"] for run in runs]
        if stats[0] and stats[1]:
            batches = stats[1]["batches"] - stats[0]["batches"]
            entry["records_per_batch"] = span / batches if batches else None
        results[name] = entry
        print(
            f"  callgrind {LABELS[name]:<16} main {entry['main']:>10,.0f}  "
            f"all {entry['all']:>10,.0f} instructions/record  "
            f"({runs[0]['seconds']:.0f} s + {runs[1]['seconds']:.0f} s)",
            flush=True,
        )
    return results
