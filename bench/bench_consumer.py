"""Consumer throughput: records/s through a consumer group, no-op callback, acks included.

Run from the repository root::

    .venv/bin/python bench/bench_consumer.py [--quick] [--records 200000] [--rounds 3]
                                             [--profile] [--out bench/out]

What ``redis_logstream.Consumer`` costs by itself: records/s for one consumer,
then two consumers of one group, with a callback that does nothing
(``lambda entry: None``), every record acknowledged (XACK pipelined with the
next XREADGROUP, as the consumer does).  The issue's goal: at least 20,000
records/s for one consumer on this machine.

A private ``redis-server`` (bench/lib/private_redis.py) is filled once with
``--records`` records in one stream, ``stream:logs:bench.consumer``, by
pipelined XADD (field ``data``) of the wire JSON built by the handler's own
encoder (``redis_logstream.shipping.wire.Encoder``: message, level, levelno,
timestamp, logger, context, pod, pid; messages, loggers and levels vary).
Each round creates a fresh group at ``0`` (``ENTRIESREAD 0``) and starts the
consumers, each in its own process (this script, ``--child``: threads would
share the GIL), with default options but ``block_ms`` 200 (to stop soon once
drained); all start at the same ``go`` time, connected.  This process polls
``XINFO GROUPS`` every 5 ms: the round ends when entries-read = the stream's
length and nothing is pending.  Records/s = records / (end - start).

Configurations: one consumer, batch 100 (the default) and batch 500; two
consumers, batch 100.  ``--rounds`` interleaved rounds of each (1 with
``--quick``); the table gives medians, as wall-clock on a shared two-core
machine drifts by tens of percent.  consumer us/rec: CPU of all consumer
processes (``time.process_time``, start to stop) per record; redis us/rec:
redis-server's (INFO CPU, user + sys, the 5 ms polling included).

Correctness, every round: each child acked all it handled, claimed, refused,
skipped and missed nothing, exited 0; the handled counts add up to the
stream's length; the group has entries-read = length, lag 0, nothing pending,
last-delivered-id = the stream's last id (XREADGROUP ``>`` gives an entry to
one consumer once): every record was delivered exactly once.

Thresholds (exit status 1): the one-consumer batch-100 median >= 20,000
records/s; no record missing or duplicated.  Exit status 2: Redis or a
consumer process could not start, or a group did not drain.  ``--profile``:
one more round of one consumer under cProfile (not in the medians), its top
functions printed.  Raw figures: ``<out>/consumer/results.json``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import logging
import os
import pstats
import selectors
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

# Run as a script, bench/ is sys.path[0]: add the repository (bench.lib) and tests/ (support).
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
sys.path.insert(2, str(Path(__file__).resolve().parents[1] / "tests"))

import redis

from bench.lib.child_processes import child_env
from bench.lib.private_redis import PrivateRedis
from bench.lib.report import finish_run, guarded, machine, source_revision
from redis_logstream.consumers.consumer import Consumer, consumer_client
from redis_logstream.naming import Names
from redis_logstream.shipping.wire import Encoder

CONTEXT = "bench.consumer"
MIN_RECORDS_PER_S = 20_000
#: (label, consumers, batch)
CONFIGS = (("1 consumer", 1, 100), ("1 consumer", 1, 500), ("2 consumers", 2, 100))
POLL_S = 0.005
LOGGERS = ("app.views", "app.orders.api", "celery.worker", "django.request")
LEVELS = (logging.INFO,) * 7 + (logging.DEBUG, logging.WARNING, logging.ERROR)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000, help="records in the stream")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per configuration")
    parser.add_argument(
        "--profile", action="store_true", help="one more round of one consumer under cProfile"
    )
    parser.add_argument("--quick", action="store_true", help="20,000 records, 1 round")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "out",
        help="results go to <out>/consumer/results.json (default: bench/out)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # internal:
    for internal in ("--url", "--group", "--name", "--batch", "--pstats"):  # one consumer
        parser.add_argument(internal, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.rounds = 20_000, 1
    if min(args.records, args.rounds) < 1:
        parser.error("--records and --rounds must be > 0")
    return args


def child_main(args: argparse.Namespace) -> int:
    """One consumer: build it, say ready, start at ``go``, run until ``stop``."""
    client, names = consumer_client(None, args.url, None, 200)
    worker = Consumer(
        lambda entry: None,
        client=client,
        names=names,
        streams=[names.stream(CONTEXT)],
        group=args.group,
        consumer=args.name,
        start="0",
        batch=int(args.batch),
        block_ms=200,
    )
    client.ping()
    print(json.dumps({"ready": True}), flush=True)
    start = float(sys.stdin.readline().split()[1])

    def wait_for_stop() -> None:
        sys.stdin.readline()  # "stop", or EOF when the parent is gone
        worker.stop()

    threading.Thread(target=wait_for_stop, daemon=True).start()
    time.sleep(max(0.0, start - time.time()))
    profile = cProfile.Profile() if args.pstats else None
    cpu = time.process_time()
    status = worker.run() if profile is None else profile.runcall(worker.run)
    cpu = time.process_time() - cpu
    if profile is not None:
        profile.dump_stats(args.pstats)
    print(
        json.dumps({"status": status, "cpu_s": round(cpu, 4), "stats": worker.stats()}), flush=True
    )
    return 0


class Child:
    """One consumer process: JSON lines out, ``go <time>`` and ``stop`` in."""

    def __init__(self, url: str, group: str, name: str, batch: int, profile_to: str) -> None:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--child",
                "--url",
                url,
                "--group",
                group,
                "--name",
                name,
                "--batch",
                str(batch),
                "--pstats",
                profile_to,
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env(),
            text=True,
        )

    def expect(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise RuntimeError(f"consumer process {self.proc.pid}: no answer in {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"consumer process {self.proc.pid} exited ({self.proc.wait()})")
        return dict(json.loads(line))

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()  # "go <time>", then "stop"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def fill(client: redis.Redis, key: str, records: int) -> int:
    """XADD ``records`` wire-format records to ``key``, pipelined; their mean size."""
    encode, size, now = Encoder(), 0, time.time()
    pipe = client.pipeline(transaction=False)
    for i in range(records):
        message = f"GET /api/orders/{i} 200 in {i % 997 * 0.37:.2f} ms user=u{i % 89}"
        _route, data = encode(
            (
                message,
                LEVELS[i % len(LEVELS)],
                now - (records - i) * 1e-4,
                LOGGERS[i % len(LOGGERS)],
                CONTEXT,
            )
        )
        size += len(data)
        pipe.xadd(key, {"data": data})
        if len(pipe) >= 2_000:
            pipe.execute()
    pipe.execute()
    return round(size / records)


def group_info(client: redis.Redis, key: str, group: str) -> dict[str, Any]:
    return next((g for g in client.xinfo_groups(key) if g["name"] == group), {})


def run_round(
    server: PrivateRedis,
    key: str,
    label: str,
    consumers: int,
    batch: int,
    number: int,
    profile_to: str = "",
) -> dict[str, Any]:
    """A fresh group over the filled stream; the consumers drain it; the raw figures."""
    client, records = server.client, server.client.xlen(key)
    group = f"bench-{number}-{consumers}x{batch}"
    client.xgroup_create(key, group, id="0", entries_read=0)
    children = [Child(server.url, group, f"c{k}", batch, profile_to) for k in range(consumers)]
    try:
        for child in children:
            child.expect(60)
        cpu, start = server.cpu_seconds(), time.time() + 0.3
        for child in children:
            child.send(f"go {start!r}")
        while True:
            time.sleep(POLL_S)
            info = group_info(client, key, group)
            if info.get("entries-read") == records and info.get("pending") == 0:
                end = time.time()
                break
            if time.time() > start + 600 or any(c.proc.poll() is not None for c in children):
                raise RuntimeError(f"{label} batch {batch}: the group did not drain ({info})")
        cpu = server.cpu_seconds() - cpu
        for child in children:
            child.send("stop")
        done = [child.expect(30) for child in children]
    finally:
        for child in children:
            child.kill()
    info = group_info(client, key, group)
    last = client.xinfo_stream(key)["last-generated-id"]
    client.xgroup_destroy(key, group)
    stats = [d["stats"] for d in done]
    handled = [s["handled"] for s in stats]
    faults = sum(
        s[k]
        for s in stats
        for k in ("nacked", "dropped", "claimed", "missed", "skipped", "dead_lettered")
    )
    faults += sum(d["status"] != 0 for d in done) + sum(s["acked"] != s["handled"] for s in stats)
    seconds = end - start
    return {
        "config": f"{label} batch {batch}",
        "consumers": consumers,
        "batch": batch,
        "records": records,
        "seconds": round(seconds, 4),
        "records_per_s": round(records / seconds),
        "handled": handled,
        "missing": max(0, records - sum(handled)),
        "duplicates": max(0, sum(handled) - records),
        "faults": faults,
        "group_ok": (
            info.get("entries-read") == records
            and info.get("lag") == 0
            and info.get("pending") == 0
            and info.get("last-delivered-id") == last
        ),
        "consumer_cpu_us_per_record": round(sum(d["cpu_s"] for d in done) / records * 1e6, 2),
        "redis_cpu_us_per_record": round(cpu / records * 1e6, 2),
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }


def summary(rounds: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for label, consumers, batch in CONFIGS:
        mine = [r for r in rounds if r["consumers"] == consumers and r["batch"] == batch]
        found[f"{label} batch {batch}"] = {
            "consumers": consumers,
            "batch": batch,
            "records_per_s": statistics.median(r["records_per_s"] for r in mine),
            "rounds": [r["records_per_s"] for r in mine],
            **{
                k: statistics.median(r[k] for r in mine)
                for k in ("consumer_cpu_us_per_record", "redis_cpu_us_per_record")
            },
            "split": "/".join(f"{h / r['records']:.0%}" for r in mine[:1] for h in r["handled"]),
            "missing": sum(r["missing"] for r in mine),
            "duplicates": sum(r["duplicates"] for r in mine),
            "faults": sum(r["faults"] for r in mine),
            "group_ok": all(r["group_ok"] for r in mine),
        }
    return found


def render_table(results: dict[str, Any]) -> str:
    header = (
        f"{'configuration':<24} {'rec/s':>8} {'(rounds)':<22} {'consumer us/rec':>15} "
        f"{'redis us/rec':>12} {'cores':>5} {'split':>9} {'missing':>7} {'dup':>4}"
    )
    lines = [header, "-" * len(header)]
    for name, s in results["summary"].items():
        spread = "/".join(f"{v / 1000:.1f}k" for v in s["rounds"])
        cores = (
            s["records_per_s"]
            * (s["consumer_cpu_us_per_record"] + s["redis_cpu_us_per_record"])
            / 1e6
        )
        lines.append(
            f"{name:<24} {s['records_per_s']:>8,.0f} {'(' + spread + ')':<22} "
            f"{s['consumer_cpu_us_per_record']:>15.1f} "
            f"{s['redis_cpu_us_per_record']:>12.1f} {cores:>5.2f} {s['split']:>9} "
            f"{s['missing']:>7} {s['duplicates']:>4}"
        )
    config = results["config"]
    lines += [
        "",
        f"{config['records']:,} records ({config['record_bytes']} bytes of JSON "
        f"each) in one stream, a fresh group per round, no-op callback, acks pipelined "
        f"with the next read; median of {config['rounds']} interleaved rounds.",
        "consumer us/rec: CPU of all consumer processes per record; cores: rec/s x "
        "(consumer + redis CPU); split: each consumer's share (first round).",
    ]
    return "\n".join(lines)


def check_thresholds(results: dict[str, Any]) -> list[dict[str, Any]]:
    one = results["summary"]["1 consumer batch 100"]["records_per_s"]
    checks = [
        {
            "check": f"one consumer (batch 100) median >= {MIN_RECORDS_PER_S:,} records/s",
            "value": f"{one:,.0f}",
            "ok": one >= MIN_RECORDS_PER_S,
        }
    ]
    for name, s in results["summary"].items():
        bad = s["missing"] + s["duplicates"] + s["faults"]
        checks.append(
            {
                "check": f"{name}: every record delivered and acknowledged once",
                "value": f"{s['missing']} missing, {s['duplicates']} duplicates, "
                f"{s['faults']} faults, group {'ok' if s['group_ok'] else 'NOT'}"
                " drained",
                "ok": bad == 0 and s["group_ok"],
            }
        )
    return checks


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    out: Path = args.out.resolve() / "consumer"
    out.mkdir(parents=True, exist_ok=True)
    key = Names().stream(CONTEXT)
    source = source_revision()
    rounds: list[dict[str, Any]] = []
    server: PrivateRedis | None = None
    try:
        server = PrivateRedis()
        info = machine()
        info["redis_server"] = server.version()
        print(
            f"redis-server {info['redis_server']} on port {server.port}; {info['nproc']} x "
            f"{info['cpu']}",
            flush=True,
        )
        filling = time.monotonic()
        record_bytes = fill(redis.Redis(host="127.0.0.1", port=server.port), key, args.records)
        print(
            f"filled {key} with {args.records:,} records in {time.monotonic() - filling:.1f} s",
            flush=True,
        )
        for number in range(args.rounds):
            for label, consumers, batch in CONFIGS:
                r = run_round(server, key, label, consumers, batch, number)
                rounds.append(r)
                print(
                    f"round {number + 1} {r['config']:<24} {r['records_per_s']:>8,} records/s"
                    f" in {r['seconds']:.2f} s, handled {r['handled']}",
                    flush=True,
                )
        if args.profile:  # one more round, under cProfile, out of the medians
            r = run_round(server, key, "1 consumer", 1, 100, 99, str(out / "profile.pstats"))
            print(
                f"\nunder cProfile: {r['records_per_s']:,} records/s, "
                f"{r['consumer_cpu_us_per_record']} us CPU/record; top functions by own time:"
            )
            pstats.Stats(str(out / "profile.pstats")).sort_stats("tottime").print_stats(18)
    finally:
        if server is not None:
            server.stop()
    source["changed_during_run"] = source_revision()["fingerprint"] != source["fingerprint"]
    results: dict[str, Any] = {
        "machine": info,
        "source": source,
        "config": {
            "records": args.records,
            "rounds": args.rounds,
            "quick": args.quick,
            "record_bytes": record_bytes,
            "block_ms": 200,
            "stream": key,
        },
        "rounds": rounds,
    }
    results["summary"] = summary(rounds)
    results["checks"] = check_thresholds(results)
    results["table"] = render_table(results)
    results["seconds"] = round(time.monotonic() - started, 1)
    versions = (
        f"Python {info['python']}, redis-py {info['redis_py']}, {info['nproc']} x {info['cpu']}"
    )
    return finish_run(results, out, versions)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    return guarded(
        lambda: run(args), (RuntimeError, OSError, subprocess.SubprocessError, redis.RedisError)
    )


if __name__ == "__main__":
    sys.exit(main())
