"""AmqpLogHandler: the core benchmark's emit cost and burst, into RabbitMQ.

    .venv/bin/python bench/bench_amqp.py [--quick] [--rounds 5] [--profile] [--out bench/out]

bench_handler.py's logger, call and formatter, on the machine's broker, with
an exchange and an exclusive queue bound with ``#`` (``bench-logs-<uuid>``,
deleted at the end).  B: wall-clock per logging call, format-only and ours,
rounds interleaved.  C: one thread logs ``--records`` records, numbered (the
``%.2f`` argument), timed until the queue holds the last (flush(), i.e. the
broker confirmed all, then queue_declare(passive)); format-only: the bare
loop.  Then, untimed, the queue is read: each record once, in order.  CPU
per record: this process's, and beam.smp's (approximate: a shared broker).
``--profile``: one more burst in a child, its shipper thread under cProfile.
No callgrind: instructions.py is tied to the core bench's subjects.  Exit 1:
emit above 2.0x format-only, or a record dropped, missing, duplicated or out
of order; 2: no broker.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import logging
import os
import pstats
import re
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

# Run as a script, bench/ is sys.path[0]: add the repository (bench.lib) and tests/ (support).
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
sys.path.insert(2, str(Path(__file__).resolve().parents[1] / "tests"))

import amqp

from bench.lib.child_processes import child_env
from bench.lib.report import finish_run, guarded, machine, source_revision
from bench.lib.subjects import (
    CALL,
    CONTEXT,
    FORMAT,
    MESSAGE,
    QUEUE_SIZE,
    Subject,
    attached,
    bench_logger,
)
from bench.lib.subjects import log_records as core_records
from bench.lib.timing import median_ratio
from redis_logstream import log_context
from redis_logstream.amqp import DEFAULT_URL, AmqpLogHandler
from redis_logstream.amqp.sink import connection_options

MAX_EMIT_RATIO = 2.0
NUMBER = re.compile(rb' in (\d+)\.00 ms"')
#: Profile rows: label, file, function, and the caller to count it under (None: all).
PARTS = (
    ("shipper thread, all", "shipper.py", "_run", None),
    ("encoder (JSON, routing key)", "amqp/sink.py", "__call__", None),
    ("amqp.Message()", "basic_message.py", "__init__", None),
    ("basic_publish, all", "channel.py", "_basic_publish", None),
    ("  drain_events(0) per publish", "connection.py", "drain_events", "_basic_publish"),
    ("  properties serialisation", "serialization.py", "_serialize_properties", None),
    ("  frame packing + send", "method_framing.py", "_write_frame", None),
    ("    sendall, one per message", "transport.py", "write", None),
    ("confirm wait (drain_events)", "connection.py", "drain_events", "write"),
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20,000 records, 3 rounds")
    parser.add_argument("--records", type=int, default=100_000, help="records per burst")
    parser.add_argument("--rounds", type=int, default=5, help="emit and burst rounds")
    parser.add_argument("--url", default=DEFAULT_URL, help="the broker (%(default)s)")
    parser.add_argument("--profile", action="store_true", help="a burst under cProfile")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "out",
        help="results go to <out>/amqp/results.json (default: bench/out)",
    )
    for internal in ("--child-exchange", "--pstats"):  # the --profile child
        parser.add_argument(internal, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.rounds = 20_000, 3
    return args


def numbered_records(logger: logging.Logger, count: int) -> None:
    """The core bench's call, with the record's number as its ``%.2f`` argument."""
    for i in range(count):
        logger.info(MESSAGE, "alice", "checkout", i)


def amqp_handler(url: str, exchange: str) -> AmqpLogHandler:
    handler = AmqpLogHandler(url=url, exchange=exchange, queue_size=QUEUE_SIZE)
    handler.setFormatter(logging.Formatter(FORMAT))
    return handler


def beam_cpu() -> float | None:
    """CPU seconds of the broker's beam.smp so far (None if not found)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if "(beam.smp)" in (text := stat.read_text()):
                fields = text.rsplit(")", 1)[1].split()
                return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return None


class Broker:
    """This run's exchange and queue, and a connection to watch them."""

    def __init__(self, url: str) -> None:
        self.name, self.options = f"bench-logs-{uuid.uuid4().hex[:12]}", connection_options(url, 10)
        self.conn = amqp.Connection(**self.options)
        self.conn.connect()
        try:
            self.channel = ch = self.conn.channel()  # the exchange as AmqpSink declares it
            ch.exchange_declare(self.name, "topic", durable=False, auto_delete=False)
            ch.queue_declare(self.name, exclusive=True, auto_delete=False)  # not on basic_cancel
            ch.queue_bind(self.name, self.name, "#")
        except BaseException:
            self.delete()
            raise

    def count(self) -> int:
        return int(self.channel.queue_declare(self.name, passive=True)[1])

    def numbers(self) -> list[int]:
        """Consume the queue (no ack): the records' numbers, -1 where none."""
        found: list[int] = []
        count = self.count()
        tag = self.channel.basic_consume(
            self.name,
            no_ack=True,
            callback=lambda message: found.append(
                int(m[1]) if (m := NUMBER.search(message.body)) else -1
            ),
        )
        while len(found) < count:
            self.conn.drain_events(timeout=10)
        self.channel.basic_cancel(tag)
        return found

    def delete(self) -> None:
        """Both (idempotent) deletes, on a fresh channel: the last may have failed."""
        try:
            channel = self.conn.channel()
        except Exception:  # the connection is gone (the exclusive queue with it)
            self.conn = amqp.Connection(**self.options)
            self.conn.connect()
            channel = self.conn.channel()
        channel.queue_delete(self.name)
        channel.exchange_delete(self.name)
        self.conn.close()


def measure_emit(ours: AmqpLogHandler, broker: Broker, count: int, rounds: int) -> dict:
    """Seconds per logging call, rounds interleaved; round 0 warms up (connection)."""
    logger, base = bench_logger(), Subject("format-only", "").handler
    times: dict[str, list[float]] = {"format-only": [], "amqp": []}
    with log_context(CONTEXT):
        for round_ in range(rounds + 1):
            for name, handler in (("format-only", base), ("amqp", ours))[:: 1 - round_ % 2 * 2]:
                with attached(logger, handler):
                    started = time.perf_counter()
                    core_records(logger, count if round_ else 200)
                    elapsed = time.perf_counter() - started
                if not ours.flush(timeout=120):
                    raise RuntimeError(f"emit round: records not confirmed ({ours.stats()})")
                times[name] += [elapsed / count] if round_ else []
            broker.channel.queue_purge(broker.name)
    return {name: {"median": statistics.median(v), "rounds": v} for name, v in times.items()}


def burst_round(ours: AmqpLogHandler, broker: Broker, count: int) -> dict[str, Any]:
    """One burst, timed until the queue holds every record; then the check (untimed)."""
    logger, dropped, beam = bench_logger(), ours.stats()["dropped"], beam_cpu()
    with attached(logger, ours), log_context(CONTEXT):
        cpu, main_cpu, started = time.process_time(), time.thread_time(), time.perf_counter()
        numbered_records(logger, count)
        loop, loop_cpu = time.perf_counter() - started, time.thread_time() - main_cpu
        # The broker confirms a transient message once its queues have it: wait
        # for that in flush() (no polling that takes the GIL), then look.
        expected = count - (ours.stats()["dropped"] - dropped)
        ours.flush(timeout=300)
        for _ in range(5000):
            if broker.count() >= expected:
                break
            time.sleep(0.002)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
        main_cpu = time.thread_time() - main_cpu
    beam = None if beam is None else ((beam_cpu() or 0.0) - beam) / count * 1e6
    numbers = broker.numbers()
    return {
        "seconds": elapsed,
        "loop_seconds": loop,
        "records_per_s": count / elapsed,
        "cpu_us": cpu / count * 1e6,
        "logging_thread_cpu_us": loop_cpu / count * 1e6,
        "shipper_cpu_us": (cpu - main_cpu) / count * 1e6,
        "broker_cpu_us": beam,
        "dropped": ours.stats()["dropped"] - dropped,
        "missing": len(set(range(count)) - set(numbers)),
        "duplicates": len(numbers) - len(set(numbers)),
        "in_order": numbers == sorted(numbers),
    }


def measure_burst(ours: AmqpLogHandler, broker: Broker, count: int, rounds: int) -> dict:
    logger, base_handler = bench_logger(), Subject("format-only", "").handler
    base: list[float] = []
    mine: list[dict[str, Any]] = []
    load = os.getloadavg()[0]
    for round_ in range(rounds):
        for name in ("amqp", "format-only")[:: 1 - round_ % 2 * 2]:
            if name == "amqp":
                mine.append(r := burst_round(ours, broker, count))
                continue
            with attached(logger, base_handler), log_context(CONTEXT):
                started = time.perf_counter()
                numbered_records(logger, count)
                base.append(time.perf_counter() - started)
        print(
            f"  round {round_ + 1}: {r['records_per_s']:,.0f} records/s, {r['dropped']} "
            f"dropped, {r['missing']} missing, {r['duplicates']} duplicates",
            flush=True,
        )
    seconds = [r["seconds"] for r in mine]
    return {
        "records": count,
        "rounds": mine,
        "format_only_seconds": base,
        "loadavg_1min": [load, os.getloadavg()[0]],
        "records_per_s": count / statistics.median(seconds),
        "format_only_records_per_s": count / statistics.median(base),
        "ratio_to_format_only": median_ratio(seconds, base),
        "loop_ratio_to_format_only": median_ratio([r["loop_seconds"] for r in mine], base),
        "round_ratios": [a / b for a, b in zip(seconds, base, strict=True)],
        **{
            key: statistics.median(r[key] for r in mine) if mine[0][key] is not None else None
            for key in ("cpu_us", "logging_thread_cpu_us", "shipper_cpu_us", "broker_cpu_us")
        },
        **{key: sum(r[key] for r in mine) for key in ("dropped", "missing", "duplicates")},
        "in_order": all(r["in_order"] for r in mine),
    }


def profile_child(args: argparse.Namespace) -> int:
    """One burst, the shipper thread under cProfile (its stats to --pstats)."""
    ours, profile, logger = (
        amqp_handler(args.url, args.child_exchange),
        cProfile.Profile(),
        bench_logger(),
    )
    ours.shipper._run = lambda run=ours.shipper._run: profile.runcall(run)  # read at start
    with attached(logger, ours), log_context(CONTEXT):
        started = time.perf_counter()
        numbered_records(logger, args.records)
        ok, seconds = ours.flush(timeout=300), time.perf_counter() - started
    ours.close()  # the worker returns: its profile is complete
    profile.dump_stats(args.pstats)
    print(json.dumps({"ok": ok, "seconds": seconds, "stats": ours.stats()}))
    return 0 if ok else 3


def run_profile(args: argparse.Namespace, broker: Broker, out: Path) -> dict[str, Any]:
    path, records = out / "shipper.pstats", min(args.records, 50_000)
    proc = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child-exchange",
            broker.name,
            "--url",
            args.url,
            "--records",
            str(records),
            "--pstats",
            str(path),
        ],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    child, stats = json.loads(proc.stdout), pstats.Stats(str(path))
    broker.channel.queue_purge(broker.name)
    parts = {
        label: sum(
            ct if caller is None else sum(c[3] for (_f, _l, n), c in callers.items() if n == caller)
            for (file, _l, name), (_cc, _nc, _tt, ct, callers) in stats.stats.items()
            if file.endswith(suffix) and name == func
        )
        / records
        * 1e6
        for label, suffix, func, caller in PARTS
    }
    print(
        f"\nshipper thread under cProfile, {records:,} records "
        f"({records / child['seconds']:,.0f} records/s under the profiler), us/record:"
    )
    print("\n".join(f"  {label:<32} {us:>6.1f}" for label, us in parts.items()))
    stats.sort_stats("tottime").print_stats(12)
    return {"records": records, "child": child, "us_per_record": parts, "pstats": str(path)}


def render_table(results: dict[str, Any]) -> str:
    wall, b, config = results["wall_clock"], results["burst"], results["config"]
    base_us, ours_us = wall["format-only"]["median"] * 1e6, wall["amqp"]["median"] * 1e6
    broker = "-" if b["broker_cpu_us"] is None else f"{b['broker_cpu_us']:.1f}"
    head = (
        f"{'handler':<15} {'emit us':>7} {'x':>5} {'burst rec/s':>11} {'x':>5} "
        f"{'loop x':>6} {'cpu us':>6} {'log thr':>7} {'shipper':>7} {'broker~':>7} "
        f"{'drops':>5} {'missing':>7} {'dup':>3} {'order':>5}"
    )
    return "\n".join(
        [
            head,
            "-" * len(head),
            f"{'format-only':<15} {base_us:>7.1f} {1:>5.2f} "
            f"{b['format_only_records_per_s']:>11,.0f} {1:>5.2f} {1:>6.2f}",
            f"{'AmqpLogHandler':<15} {ours_us:>7.1f} {ours_us / base_us:>5.2f} "
            f"{b['records_per_s']:>11,.0f} {b['ratio_to_format_only']:>5.2f} "
            f"{b['loop_ratio_to_format_only']:>6.2f} {b['cpu_us']:>6.1f} "
            f"{b['logging_thread_cpu_us']:>7.1f} {b['shipper_cpu_us']:>7.1f} {broker:>7} "
            f"{b['dropped']:>5} {b['missing']:>7} {b['duplicates']:>3} "
            f"{'yes' if b['in_order'] else 'NO':>5}",
            "",
            f"emit us: wall-clock of {config['call']}, median of {config['rounds']} rounds of "
            f"{config['emit_records']:,}; x: ratio to format-only.",
            f"burst: {b['records']:,} records from one thread until all are in the bound queue, "
            f"median of {config['rounds']} rounds; x: to the format-only loop; loop x: the "
            "logging loop alone.",
            "cpu us: this process's CPU per record (log thr: the logging "
            "loop's, shipper: the other threads'); broker~: beam.smp's, approximate (shared).",
            "rec/s per round: "
            + ", ".join(f"{r['records_per_s']:,.0f}" for r in b["rounds"])
            + "; x: "
            + ", ".join(f"{x:.2f}" for x in b["round_ratios"])
            + " (1-min load "
            + " -> ".join(f"{load:.2f}" for load in b["loadavg_1min"])
            + ").",
        ]
    )


def check_thresholds(results: dict[str, Any]) -> list[dict[str, Any]]:
    wall, b = results["wall_clock"], results["burst"]
    ratio = wall["amqp"]["median"] / wall["format-only"]["median"]
    bad = b["dropped"] + b["missing"] + b["duplicates"]
    return [
        {
            "check": f"AmqpLogHandler emit wall-clock <= {MAX_EMIT_RATIO}x format-only",
            "value": f"{ratio:.2f}x",
            "ok": ratio <= MAX_EMIT_RATIO,
        },
        {
            "check": "burst: every record in the queue exactly once, in order, none dropped",
            "value": f"{b['dropped']} dropped, {b['missing']} missing, {b['duplicates']} "
            f"duplicates, {'in order' if b['in_order'] else 'OUT OF ORDER'}",
            "ok": bad == 0 and b["in_order"],
        },
    ]


def run(args: argparse.Namespace) -> int:
    started, out = time.monotonic(), args.out.resolve() / "amqp"
    out.mkdir(parents=True, exist_ok=True)
    source, info = source_revision(), machine()
    try:
        broker = Broker(args.url)
    except (OSError, amqp.exceptions.AMQPError) as exc:
        print(f"the broker cannot be reached at {args.url}: {exc!r}", file=sys.stderr)
        return 2
    info.update(rabbitmq=broker.conn.server_properties.get("version"), py_amqp=amqp.__version__)
    print(f"RabbitMQ {info['rabbitmq']}, exchange and queue {broker.name}", flush=True)
    config = {
        "quick": args.quick,
        "records": args.records,
        "rounds": args.rounds,
        "emit_records": 5000 if args.quick else 20000,
        "queue_size": QUEUE_SIZE,
        "call": CALL,
        "context": CONTEXT,
        "format": FORMAT,
        "url": args.url,
    }
    results: dict[str, Any] = {"machine": info, "source": source, "config": config}
    ours = amqp_handler(args.url, broker.name)
    try:
        print("B. emit wall-clock", flush=True)
        results["wall_clock"] = measure_emit(ours, broker, config["emit_records"], args.rounds)
        print("C. burst", flush=True)
        results["burst"] = measure_burst(ours, broker, args.records, args.rounds)
        results["handler_stats"] = ours.stats()
        if args.profile:
            results["profile"] = run_profile(args, broker, out)
    finally:
        try:
            ours.close()  # before the exchange goes: a live sink would declare it again
        finally:
            broker.delete()
    source["changed_during_run"] = source_revision()["fingerprint"] != source["fingerprint"]
    results.update(
        checks=check_thresholds(results),
        table=render_table(results),
        seconds=round(time.monotonic() - started, 1),
    )
    versions = (
        f"Python {info['python']}, py-amqp {info['py_amqp']}, RabbitMQ {info['rabbitmq']}, "
        f"{info['nproc']} x {info['cpu']}"
    )
    return finish_run(results, out, versions)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return guarded(
        lambda: profile_child(args) if args.child_exchange else run(args),
        (RuntimeError, OSError, subprocess.SubprocessError, amqp.exceptions.AMQPError),
    )


if __name__ == "__main__":
    sys.exit(main())
