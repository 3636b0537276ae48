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
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import logging.handlers
import os
import platform
import queue
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis

import redis_logstream
from redis_logstream import RedisLogHandler, get_log_context, log_context

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve()

FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
MESSAGE = "user %s did %s in %.2f ms"
ARGS = ("alice", "checkout", 12.5)
CONTEXT = "User.alice"
LOGGER_NAME = "bench"

HANDLERS = ("format-only", "queue", "naive", "ours")
LABELS = {
    "format-only": "format-only",
    "queue": "QueueHandler",
    "naive": "naive redis-py",
    "ours": "RedisLogHandler",
}
QUEUE_SIZE = 200_000
STREAM_MAXLEN = 200_000
GLOBAL_STREAM = "stream:logs:global"

#: Thresholds (ours / format-only) beyond which the run fails.
MAX_MAIN_RATIO = 1.08
MAX_ALL_RATIO = 1.35
MAX_BURST_RATIO = 1.5
MAX_IDLE_CPU_MS = 50.0
IDLE_SECONDS = 3.0

#: Under callgrind everything runs some 50 times slower: generous limits.
CHILD_TIMEOUT = 3600.0
FLUSH_TIMEOUT = 600.0


# -- the handlers under test ---------------------------------------------------


class FormatOnlyHandler(logging.Handler):
    """The floor: any handler turns the record into text at least once."""

    def emit(self, record: logging.LogRecord) -> None:
        self.format(record)


class NaiveRedisHandler(logging.Handler):
    """A hand-rolled Redis handler: one pipeline round trip per record.

    It writes what RedisLogHandler writes (the same JSON fields, to the
    context's and the global channel and stream), so that the Redis side of
    the comparison is like for like; only the way of getting there differs.
    """

    def __init__(self, url: str) -> None:
        super().__init__()
        self.client = redis.Redis.from_url(url)
        self.pod = os.environ.get("HOSTNAME") or socket.gethostname()
        self.pid = os.getpid()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            context = get_log_context()
            data = json.dumps(
                {
                    "message": self.format(record),
                    "level": record.levelname,
                    "levelno": record.levelno,
                    "timestamp": record.created,
                    "logger": record.name,
                    "context": context,
                    "pod": self.pod,
                    "pid": self.pid,
                }
            )
            pipe = self.client.pipeline(transaction=False)
            if context is not None:
                pipe.publish(f"logs:{context}", data)
                pipe.xadd(
                    f"stream:logs:{context}", {"data": data}, maxlen=STREAM_MAXLEN, approximate=True
                )
            pipe.publish("logs:global", data)
            pipe.xadd(GLOBAL_STREAM, {"data": data}, maxlen=STREAM_MAXLEN, approximate=True)
            pipe.execute()
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        """Give the connections back: the private server is stopped at the end."""
        with contextlib.suppress(Exception):
            self.client.close()
        super().close()


def _formatter() -> logging.Formatter:
    return logging.Formatter(FORMAT)


class Subject:
    """One handler under test, with what it takes to start it, to wait until
    everything emitted so far has reached its destination, and to close it."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.listener: logging.handlers.QueueListener | None = None
        self.handler: logging.Handler
        if name == "format-only":
            self.handler = FormatOnlyHandler()
            self.handler.setFormatter(_formatter())
        elif name == "queue":
            # The documented pattern: the QueueHandler merges the message
            # (prepare() formats with its default "%(message)s"), the
            # listener's handler formats for output.
            records: queue.SimpleQueue[Any] = queue.SimpleQueue()
            target = FormatOnlyHandler()
            target.setFormatter(_formatter())
            self.handler = logging.handlers.QueueHandler(records)
            self.listener = logging.handlers.QueueListener(records, target)
        elif name == "naive":
            self.handler = NaiveRedisHandler(url)
            self.handler.setFormatter(_formatter())
        elif name == "ours":
            self.handler = RedisLogHandler(
                url=url, queue_size=QUEUE_SIZE, stream_maxlen=STREAM_MAXLEN
            )
            self.handler.setFormatter(_formatter())
        else:
            raise ValueError(f"unknown handler {name!r}")

    def start(self) -> None:
        if self.listener is not None:
            self.listener.start()

    def drain(self) -> bool:
        """Wait until all records emitted so far are handled or stored.

        The QueueListener has no flush: stop() waits for its thread to take
        everything in the queue, and the listener is started again after.
        """
        if self.listener is not None:
            self.listener.stop()
            self.listener.start()
            return True
        if isinstance(self.handler, RedisLogHandler):
            return self.handler.flush(timeout=FLUSH_TIMEOUT)
        return True

    def stop(self) -> bool:
        """Drain and stop what runs in the background."""
        if self.listener is not None:
            self.listener.stop()
            return True
        return self.drain()

    def close(self) -> None:
        self.stop()
        self.handler.close()

    def stats(self) -> dict[str, Any]:
        if isinstance(self.handler, RedisLogHandler):
            return self.handler.stats()
        return {}


def bench_logger() -> logging.Logger:
    """The one logger every handler is measured on (handlers are swapped)."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def log_records(logger: logging.Logger, count: int) -> None:
    """The measured call, ``count`` times, in the caller's current context."""
    for _ in range(count):
        logger.info(MESSAGE, "alice", "checkout", 12.5)


@contextlib.contextmanager
def attached(logger: logging.Logger, handler: logging.Handler) -> Iterator[None]:
    logger.handlers = [handler]
    try:
        yield
    finally:
        logger.handlers = []


# -- a private Redis -------------------------------------------------------------


def free_port() -> int:
    """A loopback port the kernel says is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server of our own: loopback, free port, no persistence.

    The benchmark writes hundreds of thousands of entries and flushes the
    database between rounds: it must never do that to a server others use.
    """

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found on PATH (make tools installs it)")
        self.dir = Path(tempfile.mkdtemp(prefix="redis-logstream-bench-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        for _ in range(5):  # the port can be taken between the probe and the bind
            self.port = free_port()
            self.proc = subprocess.Popen(
                [binary, "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(self.dir),
                 "--logfile", str(self.dir / "redis.log")],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            if self._wait_ready():
                break
            self._kill()
        else:
            raise RuntimeError(f"could not start redis-server (see {self.dir / 'redis.log'})")
        self.client = redis.Redis(port=self.port, host="127.0.0.1", decode_responses=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _wait_ready(self) -> bool:
        probe = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 10
        try:
            while time.monotonic() < deadline:
                if self.proc is None or self.proc.poll() is not None:
                    return False
                with contextlib.suppress(redis.RedisError):
                    if probe.ping():
                        return True
                time.sleep(0.02)
            return False
        finally:
            probe.close()

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def version(self) -> str:
        return str(self.client.info("server")["redis_version"])

    def cpu_seconds(self) -> float:
        """Redis's own CPU time so far (user + system, all its threads)."""
        info = self.client.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    def entries_added(self, key: str = GLOBAL_STREAM) -> int:
        """How many entries a stream ever received (0 when it does not exist)."""
        try:
            info = self.client.xinfo_stream(key)
        except redis.ResponseError:
            return 0
        # entries-added is Redis 7; older servers only have the length.
        return int(info.get("entries-added", info["length"]))

    def flushall(self) -> None:
        self.client.flushall()

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            self.client.close()
        self._kill()
        shutil.rmtree(self.dir, ignore_errors=True)


# -- A: instructions per record (callgrind) -----------------------------------------


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
    result = {"handler": args.child, "records": args.records, "warmup": args.warmup,
              "delivered": bool(ok and warm_ok), "stats": subject.stats()}
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


def source_revision() -> dict[str, Any]:
    """Which commit was measured, and whether the package had local changes."""
    def git(*args: str) -> str:
        proc = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True,
                              check=False, timeout=30)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "src_dirty": bool(git("status", "--porcelain", "--", "src")),
        "fingerprint": source_fingerprint(),
    }


def child_env() -> dict[str, str]:
    """The same environment for every child: fixed hash seed, no Django site."""
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = "0"
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("PYTHONMALLOC", None)
    return env


def read_callgrind_totals(rundir: Path) -> dict[int, int]:
    """Instructions per thread from callgrind's per-thread files (cg.<pid>-NN)."""
    totals: dict[int, int] = {}
    for path in sorted(rundir.glob("cg.*-*")):
        thread = int(path.name.rsplit("-", 1)[1])
        value = None
        with path.open("rb") as lines:
            for line in lines:
                if line.startswith((b"summary:", b"totals:")):
                    value = int(line.split()[1])
                    if line.startswith(b"totals:"):
                        break
        if value is None:
            raise RuntimeError(f"no summary/totals line in {path}")
        totals[thread] = value
    if 1 not in totals:
        raise RuntimeError(f"no callgrind file for the main thread in {rundir}")
    return totals


def callgrind_run(name: str, records: int, warmup: int, server: PrivateRedis,
                  out: Path) -> dict[str, Any]:
    """Run one child under callgrind; return its per-thread instruction counts."""
    rundir = out / "callgrind" / f"{name}-{records}"
    shutil.rmtree(rundir, ignore_errors=True)
    rundir.mkdir(parents=True)
    result_path = rundir / "child.json"
    child = [sys.executable, str(SCRIPT), "--child", name, "--warmup", str(warmup),
             "--url", server.url]
    # A dry run outside valgrind first: it leaves the bytecode of everything
    # the child imports cached, so that no measured child compiles a module
    # (source edited since the last import would cost one run, not the other).
    subprocess.run([*child, "--records", "0", "--child-result", str(rundir / "dry.json")],
                   env=child_env(), capture_output=True, timeout=120, check=True)
    server.flushall()
    # --fair-sched=yes: valgrind runs one thread at a time, and its default
    # lock lets a busy thread take it back at once, so a woken shipper can wait
    # for hundreds of records while the logging thread keeps the CPU.  In one
    # run out of three that changed the logging thread's count by 5-10%: the
    # wake-up path taken for each of those records.  A fair hand-over is
    # closer to two threads on two cores, and repeats.
    cmd = [
        "valgrind", "--tool=callgrind", "--separate-threads=yes", "--fair-sched=yes",
        f"--callgrind-out-file={rundir}/cg.%p",
        *child, "--records", str(records), "--child-result", str(result_path),
    ]
    started = time.monotonic()
    proc = subprocess.run(cmd, env=child_env(), capture_output=True, timeout=CHILD_TIMEOUT,
                          check=False)
    elapsed = time.monotonic() - started
    (rundir / "valgrind.log").write_bytes(proc.stderr)
    if proc.returncode != 0 or not result_path.exists():
        tail = proc.stderr.decode(errors="replace")[-2000:]
        raise RuntimeError(f"callgrind child {name}/{records} failed ({proc.returncode}):\n{tail}")
    child = json.loads(result_path.read_text())
    threads = read_callgrind_totals(rundir)
    stored = server.entries_added() if name in ("naive", "ours") else None
    if stored is not None and stored != warmup + records:
        raise RuntimeError(f"{name}/{records}: {stored} records in Redis, not {warmup + records}")
    return {
        "records": records,
        "threads": {str(k): v for k, v in sorted(threads.items())},
        "main": threads[1],
        "all": sum(threads.values()),
        "seconds": round(elapsed, 1),
        "stored_in_redis": stored,
        "child": child,
    }


def measure_instructions(server: PrivateRedis, short: int, long: int, warmup: int,
                         out: Path) -> dict[str, Any]:
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
        print(f"  callgrind {LABELS[name]:<16} main {entry['main']:>10,.0f}  "
              f"all {entry['all']:>10,.0f} instructions/record  "
              f"({runs[0]['seconds']:.0f} s + {runs[1]['seconds']:.0f} s)", flush=True)
    return results


# -- B: emit wall-clock ----------------------------------------------------------------


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
            order = HANDLERS[round_ % len(HANDLERS):] + HANDLERS[: round_ % len(HANDLERS)]
            for name in order:
                with attached(logger, subjects[name].handler):
                    started = time.perf_counter()
                    log_records(logger, count)
                    elapsed = time.perf_counter() - started
                if not subjects[name].drain():
                    raise RuntimeError(f"{name}: records not delivered after a timing round")
                times[name].append(elapsed / count)
    return {name: {"median": statistics.median(values), "rounds": values}
            for name, values in times.items()}


# -- C: burst ----------------------------------------------------------------------------


def timed_burst(logger: logging.Logger, subject: Subject, count: int) -> tuple[float, float]:
    """Seconds from the first emit until the last record is delivered, and the
    CPU seconds this process (all its threads) used meanwhile."""
    with attached(logger, subject.handler):
        cpu_started = time.process_time()
        started = time.perf_counter()
        log_records(logger, count)
        if subject.listener is not None:
            subject.listener.stop()  # returns once the listener took the last record
            ok = True
        elif isinstance(subject.handler, RedisLogHandler):
            ok = subject.handler.flush(timeout=FLUSH_TIMEOUT)
        else:
            ok = True
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
    if subject.listener is not None:
        subject.listener.start()
    if not ok:
        raise RuntimeError(f"{subject.name}: burst not delivered within {FLUSH_TIMEOUT} s")
    return elapsed, cpu


def measure_burst(subjects: dict[str, Subject], server: PrivateRedis, count: int,
                  naive_count: int, rounds: int) -> dict[str, Any]:
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
    redis_cpu: dict[str, list[float]] = {"ours": [], "naive": []}
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


def median_ratio(values: list[float], baseline: list[float]) -> float:
    return statistics.median(values) / statistics.median(baseline)


# -- D: idle -------------------------------------------------------------------------------


def idle_child_main(args: argparse.Namespace) -> int:
    """Log one record, then measure the CPU the process uses while it sleeps.

    In a process of its own, so that nothing else (other handlers' threads,
    the parent's bookkeeping) is counted.
    """
    handler = RedisLogHandler(url=args.url, queue_size=QUEUE_SIZE, stream_maxlen=STREAM_MAXLEN)
    handler.setFormatter(_formatter())
    logger = bench_logger()
    with attached(logger, handler), log_context(CONTEXT):
        logger.info(MESSAGE, *ARGS)
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
    print(json.dumps({"cpu_ms": cpu_ms, "quiet_cpu_ms": quiet_ms, "seconds": IDLE_SECONDS,
                      "delivered": delivered}))
    return 0


def measure_idle(server: PrivateRedis) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--idle-child", "--url", server.url],
        env=child_env(), capture_output=True, timeout=60, check=True,
    )
    return dict(json.loads(proc.stdout))


# -- report -----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    valgrind = subprocess.run(["valgrind", "--version"], capture_output=True, text=True,
                              check=False).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "redis_py": redis.__version__,
        "valgrind": valgrind,
        "platform": platform.platform(),
    }


def render_table(results: dict[str, Any]) -> str:
    """One table, one row per handler, each figure with its ratio to format-only."""
    instr = results["instructions"]
    wall = results["wall_clock"]
    burst = results["burst"]
    base_main = instr["format-only"]["main"]
    base_wall = wall["format-only"]["median"]
    base = burst["format-only"]
    base_time = base["seconds_median"] / base["records"]
    base_cpu = base["process_cpu_us_per_record"]
    header = (f"{'handler':<16} {'instr/rec main':>14} {'x':>5} {'instr/rec all':>13} {'x':>5} "
              f"{'emit us':>7} {'x':>5} {'burst rec/s':>11} {'x':>5} {'cpu us':>6} {'x':>5} "
              f"{'redis us':>8} {'drops':>5}")
    lines = [header, "-" * len(header)]
    for name in HANDLERS:
        i, w, b = instr[name], wall[name], burst[name]
        redis_us = b.get("redis_cpu_us_per_record")
        drops = b.get("dropped")
        cpu_us = b["process_cpu_us_per_record"]
        lines.append(
            f"{LABELS[name]:<16} {i['main']:>14,.0f} {i['main'] / base_main:>5.2f} "
            f"{i['all']:>13,.0f} {i['all'] / base_main:>5.2f} "
            f"{w['median'] * 1e6:>7.1f} {w['median'] / base_wall:>5.2f} "
            f"{b['records_per_s']:>11,.0f} "
            f"{b['seconds_median'] / b['records'] / base_time:>5.2f} "
            f"{cpu_us:>6.1f} {cpu_us / base_cpu:>5.2f} "
            f"{'-' if redis_us is None else f'{redis_us:.1f}':>8} "
            f"{'-' if drops is None else drops:>5}"
        )
    config = results["config"]
    ours = burst["ours"]
    spread = ", ".join(f"{ratio:.2f}" for ratio in ours["round_ratios"])
    load = burst["loadavg_1min"]
    lines += [
        "",
        "instr/rec: callgrind instructions per record, logging thread and all threads "
        f"({config['callgrind_records'][1]:,} - {config['callgrind_records'][0]:,} records).",
        f"emit us: wall-clock of the logging call, median of {config['wall_rounds']} rounds of "
        f"{config['wall_records']:,}.",
        f"burst: {ours['records']:,} records (naive {burst['naive']['records']:,}) until "
        f"delivered, median of {len(ours['rounds'])} rounds; cpu us: this process's CPU per "
        "record (all threads); redis us: redis-server's CPU per record.",
        "x: ratio to format-only (instructions: to its logging thread).",
        f"ours burst/format-only per round: {spread} (1-min load average {load[0]:.2f} before, "
        f"{load[1]:.2f} after).",
    ]
    rpb = instr["ours"].get("records_per_batch")
    if rpb:
        lines.append(f"ours under callgrind: {rpb:.0f} records per batch on average.")
    idle = results["idle"]
    lines.append(f"idle: {idle['cpu_ms']:.1f} ms CPU in the {idle['seconds']:.0f} s after one "
                 f"record (its delivery included), {idle['quiet_cpu_ms']:.1f} ms in the next "
                 f"{idle['seconds']:.0f} s.")
    return "\n".join(lines)


def check_thresholds(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The regressions that fail the run; figures in between are only reported."""
    instr = results["instructions"]
    base = instr["format-only"]["main"]
    main_ratio = instr["ours"]["main"] / base
    all_ratio = instr["ours"]["all"] / base
    burst_ratio = results["burst"]["ours"]["ratio_to_format_only"]
    drops = results["burst"]["ours"]["dropped"]
    idle = results["idle"]["cpu_ms"]
    return [
        {"check": f"ours logging-thread instructions/record <= {MAX_MAIN_RATIO}x format-only",
         "value": f"{main_ratio:.3f}x", "ok": main_ratio <= MAX_MAIN_RATIO},
        {"check": f"ours all-threads instructions/record <= {MAX_ALL_RATIO}x format-only",
         "value": f"{all_ratio:.3f}x", "ok": all_ratio <= MAX_ALL_RATIO},
        {"check": f"ours burst time <= {MAX_BURST_RATIO}x format-only loop time",
         "value": f"{burst_ratio:.3f}x", "ok": burst_ratio <= MAX_BURST_RATIO},
        {"check": "ours burst drops == 0", "value": str(drops), "ok": drops == 0},
        {"check": f"ours idle CPU < {MAX_IDLE_CPU_MS:.0f} ms over {IDLE_SECONDS:.0f} s",
         "value": f"{idle:.1f} ms", "ok": idle < MAX_IDLE_CPU_MS},
    ]


def draw_chart(results: dict[str, Any], path: Path) -> None:
    """Instructions per record (both threads' views) and burst throughput.

    The naive handler costs several times the others; its bars are cut at
    the top of the axis and labelled, so that the 1.08x and 1.35x lines stay
    readable next to the handlers that matter.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    instr = results["instructions"]
    burst = results["burst"]
    base = instr["format-only"]["main"]
    labels = [LABELS[name] for name in HANDLERS]
    mains = [instr[name]["main"] / 1000 for name in HANDLERS]
    alls = [instr[name]["all"] / 1000 for name in HANDLERS]
    top = max(v for name, m, a in zip(HANDLERS, mains, alls, strict=True)
              if name != "naive" for v in (m, a))
    top = max(top, base / 1000 * MAX_ALL_RATIO) * 1.35

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8),
                                      gridspec_kw={"width_ratios": [1.5, 1]})
    xs = range(len(HANDLERS))
    width = 0.38
    for offset, values, label, color in ((-width / 2, mains, "logging thread", "#4c72b0"),
                                         (width / 2, alls, "all threads", "#dd8452")):
        bars = left.bar([x + offset for x in xs], [min(v, top) for v in values], width,
                        label=label, color=color)
        for bar, value in zip(bars, values, strict=True):
            centre = bar.get_x() + bar.get_width() / 2
            if value > top:  # label inside the cut bar, below the axis top
                left.annotate(f"{value:,.0f}k\n(cut)", (centre, top), ha="center", va="top",
                              fontsize=8, color="white", xytext=(0, -4),
                              textcoords="offset points")
            else:
                left.annotate(f"{value:,.0f}k", (centre, value), ha="center", va="bottom",
                              fontsize=8, xytext=(0, 2), textcoords="offset points")
    for ratio, style in ((MAX_MAIN_RATIO, "--"), (MAX_ALL_RATIO, ":")):
        left.axhline(base / 1000 * ratio, color="black", linestyle=style, linewidth=1,
                     label=f"{ratio}x format-only")
    left.set_ylim(0, top)
    left.set_xticks(list(xs), labels)
    left.set_ylabel("thousand instructions per record (callgrind)")
    left.set_title("Instructions per record (callgrind)", fontsize=10)
    left.legend(fontsize=8, loc="upper left")

    rates = [burst[name]["records_per_s"] / 1000 for name in HANDLERS]
    bars = right.bar(list(xs), rates, color=["#8c8c8c", "#55a868", "#c44e52", "#4c72b0"])
    for bar, value in zip(bars, rates, strict=True):
        right.annotate(f"{value:,.0f}k", (bar.get_x() + bar.get_width() / 2, value),
                       ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                       textcoords="offset points")
    right.set_xticks(list(xs), labels, fontsize=8)
    right.set_ylabel("thousand records per second")
    right.set_title(f"Burst of {burst['ours']['records']:,} records, until delivered",
                    fontsize=10)
    fig.text(0.5, 0.005, "format-only: the bare loop; QueueHandler: until the listener took the "
             "last; naive / RedisLogHandler: until the last is stored in Redis "
             f"(naive: {burst['naive']['records']:,} records)", ha="center", fontsize=8)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main -----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer records and rounds")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out",
                        help="results.json, callgrind files (default: bench/out)")
    parser.add_argument("--chart", type=Path, default=None,
                        help="chart path (default: docs/benchmark.png, <out>/benchmark.png "
                             "with --quick)")
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
    """Run A to E against a private Redis; print the table and the checks."""
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
        "call": f'logger.info("{MESSAGE}", "alice", "checkout", 12.5)',
        "context": CONTEXT,
        "format": FORMAT,
    }
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    chart = args.chart or (out / "benchmark.png" if quick else ROOT / "docs" / "benchmark.png")
    if shutil.which("valgrind") is None and not args.skip_callgrind:
        print("valgrind not found on PATH (make tools installs it)", file=sys.stderr)
        return 2
    started = time.monotonic()
    server = PrivateRedis()
    subjects: dict[str, Subject] = {}
    try:
        results: dict[str, Any] = {"machine": machine(), "config": config,
                                   "source": source_revision()}
        results["machine"]["redis_server"] = server.version()
        print(f"redis-server {results['machine']['redis_server']} on port {server.port} "
              f"(pid {server.proc.pid if server.proc else '?'})", flush=True)

        print("A. instructions per record (callgrind)", flush=True)
        short, long = config["callgrind_records"]
        if args.skip_callgrind:  # development only: the table needs A
            previous = json.loads((out / "results.json").read_text())
            results["instructions"] = previous["instructions"]
        else:
            results["instructions"] = measure_instructions(
                server, short, long, config["warmup"], out)

        subjects = {name: Subject(name, server.url) for name in HANDLERS}
        for subject in subjects.values():
            subject.start()
        print("B. emit wall-clock", flush=True)
        results["wall_clock"] = measure_wall_clock(
            subjects, config["wall_records"], config["wall_rounds"])
        print("C. burst", flush=True)
        results["burst"] = measure_burst(
            subjects, server, config["burst_records"], config["burst_naive_records"],
            config["burst_rounds"])
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
    table = render_table(results)
    results["table"] = table
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    draw_chart(results, chart)

    m = results["machine"]
    print()
    print(f"{m['nproc']} x {m['cpu']}, Python {m['python']}, redis-server {m['redis_server']},"
          f" redis-py {m['redis_py']}, {m['valgrind']}")
    src = results["source"]
    print(f"measured: commit {src['commit']}{' + local changes in src' if src['src_dirty'] else ''}"
          f", source {src['fingerprint']}")
    if src["changed_during_run"]:
        print("WARNING: the package's source changed during the run: the figures mix versions")
    print(table)
    print()
    for check in results["checks"]:
        print(f"{'PASS' if check['ok'] else 'FAIL'}  {check['check']}: {check['value']}")
    print(f"\nresults: {out / 'results.json'}  chart: {chart}  ({results['seconds']:.0f} s)")
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
