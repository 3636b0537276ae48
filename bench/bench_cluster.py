"""Single node vs a 3-primary Redis Cluster: records/s and delivery latency, several processes.

Run from the repository root::

    .venv/bin/python bench/bench_cluster.py [--quick] [--processes 4] [--records 20000]
                                            [--rate 2000] [--seconds 5] [--rounds 3]
                                            [--out bench/out]

Two topologies in the same run, each of its own: one private ``redis-server``
(bench/lib/private_redis.py) and a private 6-node cluster, 3 primaries and 3
replicas (tests/support/cluster_servers.py, as the tests start it).  The handler is
given ``redis://`` or ``redis+cluster://`` and nothing else but a queue that
never drops (``queue_size`` 100,000) and streams that are never trimmed.
A third row, ``cluster+spub``, is the same cluster with ``sharded_pubsub=True``
(``--no-sharded`` leaves it out): a plain PUBLISH on a cluster is broadcast
over the cluster bus to every node, an SPUBLISH only to its shard's replica,
and the difference is much of what the cluster costs.

``--processes`` logging processes (children of this script, each with one
RedisLogHandler) log round-robin over ``--contexts`` contexts ``User.u<i>``
under ``log_context``; every message is ``t=<time.time() at the call> i=<n>
p=<process>``.  Every round has a fresh database and fresh processes, which
first log one warm-up record per context, so that connections, the slot map
and the script are in place before the clock starts.

- Burst: ``--records`` records per process, as fast as each can, then
  ``flush(60)``.  Records/s = records of all processes / (the time Redis
  stored the last one, from its global-stream entry ID - the first call).
  Nothing reads the stream during the burst; afterwards XRANGE checks that
  every record is there once and gives stored - logged per record (all
  queueing under a flat-out burst: in results.json, not in the table).
- Paced: ``--rate`` records/s per process for ``--seconds``, while this
  process follows the global stream (``stream:logs:global``, on a cluster
  ``stream:logs:{global}``) with XREAD BLOCK: delivery latency = time read -
  time logged, same clock; p50/p99/max over every record.  It includes the
  handler's ``flush_interval`` (50 ms by default), by design.

Rounds are interleaved (single, cluster, single, cluster...: ``--rounds``
each, 1 with ``--quick``) and the table gives medians: on a shared two-core
machine wall-clock figures drift by tens of percent from one moment to the
next, and the cluster's 6 redis-server processes share those 2 cores with
the loggers.  Redis CPU is the sum over every server process of the topology
(replicas and the cluster bus included).

Thresholds (exit status 1 when one is missed), set to catch a clear
regression of the cluster path against the single node in the same run, not
to promise that six servers on two cores keep up with one: the cluster's
median burst records/s (default options, PUBLISH) is at least 0.15x the
single node's (0.23x-0.43x measured here: the machine is saturated and a
PUBLISH is copied to every node), the loggers' CPU per record (handler and
shipper) on the cluster at most 2x the single node's (1.4x measured), and in
every row every record arrived exactly once and none was dropped or failed.
Exit status 2: a server, the cluster or a logging process could not start.
The raw per-round figures go to ``<out>/cluster/results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script, bench/ is sys.path[0]: add the repository (bench.lib) and tests/ (support).
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
sys.path.insert(2, str(Path(__file__).resolve().parents[1] / "tests"))

import redis
from redis.cluster import ClusterNode, RedisCluster

from bench.lib.cluster_load import Child, Follower, child_main, percentiles, scan
from bench.lib.private_redis import PrivateRedis
from bench.lib.report import finish_run, guarded, machine, source_revision
from redis_logstream.naming import Names
from support.cluster_servers import RedisClusterServers

MIN_CLUSTER_RATIO = 0.15
MAX_CLUSTER_CPU_RATIO = 2.0
#: Seconds the follower may take, after the last process flushed, to read the rest.
TAIL_SECONDS = 10.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, default=4, help="logging processes")
    parser.add_argument("--records", type=int, default=20_000, help="burst records per process")
    parser.add_argument("--rate", type=float, default=2000.0, help="paced records/s per process")
    parser.add_argument("--seconds", type=float, default=5.0, help="paced round length")
    parser.add_argument("--contexts", type=int, default=64, help="log contexts, round-robin")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per topology")
    parser.add_argument(
        "--sharded",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the cluster with sharded_pubsub=True (default: yes)",
    )
    parser.add_argument("--quick", action="store_true", help="5,000 records, 2 s, 1 round")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent / "out",
        help="results go to <out>/cluster/results.json (default: bench/out)",
    )
    # Internal: a logging process.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.records, args.seconds, args.rounds = 5_000, 2.0, 1
    if (
        min(args.processes, args.records, args.contexts, args.rounds) < 1
        or args.rate < 0
        or args.seconds <= 0
    ):
        parser.error("--processes, --records, --contexts, --rounds and --seconds must be > 0")
    return args


class Topology:
    """What a round needs of one topology: its URL, a reader, every server's CPU."""

    def __init__(
        self,
        name: str,
        url: str,
        reader: Any,
        nodes: list[redis.Redis],
        flush: Any,
        sharded: bool = False,
    ) -> None:
        self.name, self.url, self.reader, self.nodes, self._flush = name, url, reader, nodes, flush
        self.sharded = sharded
        self.key = Names(hash_tags=name != "single").global_stream

    @classmethod
    def single(cls, server: PrivateRedis) -> Topology:
        client = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=10)
        return cls("single", server.url, client, [client], client.flushall)

    @classmethod
    def cluster(cls, servers: RedisClusterServers, sharded: bool = False) -> Topology:
        ports = [node.port for node in servers.nodes]
        reader = RedisCluster(
            startup_nodes=[ClusterNode("127.0.0.1", p) for p in ports], socket_timeout=10
        )
        nodes = [redis.Redis(host="127.0.0.1", port=p, socket_timeout=10) for p in ports]
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)
        name = "cluster+spub" if sharded else "cluster"
        return cls(name, url, reader, nodes, servers.flush, sharded)

    def flush(self) -> None:
        self._flush()

    def redis_cpu(self) -> float:
        info = [node.info("cpu") for node in self.nodes]
        return sum(float(i["used_cpu_user"]) + float(i["used_cpu_sys"]) for i in info)

    def close(self) -> None:
        for client in [self.reader, *self.nodes]:
            with contextlib.suppress(Exception):
                client.close()


def run_round(topo: Topology, args: argparse.Namespace, paced: bool) -> dict[str, Any]:
    """Fresh database and processes; one burst or one paced window; the raw figures."""
    per_process = round(args.rate * args.seconds) if paced else args.records
    expected = per_process * args.processes
    topo.flush()
    children = [
        Child(topo.url, topo.sharded, k, per_process, args.rate if paced else 0.0, args.contexts)
        for k in range(args.processes)
    ]
    follower = None
    try:
        for child in children:
            ready = child.expect(60)
            if not ready["ready"] or ready["stream"] != topo.key:
                raise RuntimeError(
                    f"{topo.name}: a logging process could not warm up "
                    f"(or logs to {ready['stream']}, not {topo.key})"
                )
        if paced:
            follower = Follower(topo.reader, topo.key, expected)
            follower.start()
        cpu = topo.redis_cpu()
        start = time.time() + 0.3
        for child in children:
            child.go(start)
        limit = (args.seconds if paced else 0) + 120
        done = [child.expect(limit) for child in children]
        cpu = topo.redis_cpu() - cpu
        if follower is not None:
            follower.wait_for_all(TAIL_SECONDS)
    finally:
        for child in children:
            child.stop()
    stored = scan(topo.reader, topo.key)
    first = min(d["first_emit"] for d in done)
    stats = [d["stats"] for d in done]
    round_: dict[str, Any] = {
        "topology": topo.name,
        "kind": "paced" if paced else "burst",
        "processes": args.processes,
        "records": expected,
        "stored": stored["records"],
        "duplicates": stored["duplicates"],
        "missing": expected - stored["records"],
        "seconds": round(stored["last_stored"] - first, 4),
        "records_per_s": round(stored["records"] / max(stored["last_stored"] - first, 1e-3)),
        "stored_latency": percentiles(stored.pop("stored_latency")),
        "redis_cpu_us_per_record": round(cpu / expected * 1e6, 2),
        "logger_cpu_us_per_record": round(sum(d["cpu_s"] for d in done) / expected * 1e6, 2),
        "flushed": all(d["flushed"] for d in done),
        "max_late_ms": max(d["max_late_ms"] for d in done),
        **{
            key: sum(s[key] for s in stats)
            for key in ("dropped", "failed", "errors", "retries", "batches")
        },
        "last_error": next((s["last_error"] for s in stats if s["last_error"]), None),
        "loadavg_1min": round(os.getloadavg()[0], 2),
    }
    if follower is not None:
        round_.update(
            read=len(follower.latencies),
            read_duplicates=follower.duplicates,
            read_error=follower.error,
            latency=percentiles(follower.latencies),
        )
        round_["missing"] = max(round_["missing"], expected - len(follower.latencies))
        round_["duplicates"] += follower.duplicates
    return round_


def summary(rounds: list[dict[str, Any]], name: str) -> dict[str, Any]:
    burst = [r for r in rounds if r["topology"] == name and r["kind"] == "burst"]
    paced = [r for r in rounds if r["topology"] == name and r["kind"] == "paced"]
    both = burst + paced

    def median(values: list[Any]) -> float:
        return statistics.median(v for v in values if v is not None)

    return {
        "burst_records_per_s": median([r["records_per_s"] for r in burst]),
        "burst_rounds": [r["records_per_s"] for r in burst],
        "redis_cpu_us_per_record": median([r["redis_cpu_us_per_record"] for r in burst]),
        "logger_cpu_us_per_record": median([r["logger_cpu_us_per_record"] for r in burst]),
        "burst_stored_p99_ms": median([r["stored_latency"]["p99_ms"] for r in burst]),
        "paced_p50_ms": median([r["latency"]["p50_ms"] for r in paced]),
        "paced_p99_ms": median([r["latency"]["p99_ms"] for r in paced]),
        "paced_max_ms": max(r["latency"]["max_ms"] or 0 for r in paced),
        "dropped": sum(r["dropped"] for r in both),
        "failed": sum(r["failed"] for r in both),
        "errors": sum(r["errors"] for r in both),
        "missing": sum(r["missing"] for r in both),
        "duplicates": sum(r["duplicates"] for r in both),
    }


def render_table(results: dict[str, Any]) -> str:
    header = (
        f"{'topology':<12} {'procs':>5} {'burst rec/s':>11} {'(rounds)':<26} "
        f"{'redis us/rec':>12} {'paced p50 ms':>12} {'p99 ms':>7} {'max ms':>7} "
        f"{'dropped':>7} {'missing':>7} {'errors':>6}"
    )
    lines = [header, "-" * len(header)]
    config = results["config"]
    for name, s in results["summary"].items():
        spread = "/".join(f"{v / 1000:.1f}k" for v in s["burst_rounds"])
        lines.append(
            f"{name:<12} {config['processes']:>5} {s['burst_records_per_s']:>11,.0f} "
            f"{'(' + spread + ')':<26} {s['redis_cpu_us_per_record']:>12.1f} "
            f"{s['paced_p50_ms']:>12.1f} {s['paced_p99_ms']:>7.1f} {s['paced_max_ms']:>7.1f} "
            f"{s['dropped']:>7} {s['missing']:>7} {s['errors']:>6}"
        )
    single = results["summary"]["single"]
    lines += [
        "",
        f"burst: {config['processes']} x {config['records']:,} records over "
        f"{config['contexts']} contexts, until the last is stored; median of "
        f"{config['rounds']} interleaved rounds.",
    ]
    for name, s in results["summary"].items():
        cpu = s["redis_cpu_us_per_record"] + s["logger_cpu_us_per_record"]
        ratios = ", ".join(
            f"{c / b:.2f}" for b, c in zip(single["burst_rounds"], s["burst_rounds"], strict=True)
        )
        lines.append(
            f"  {name}: burst stored - logged p99 (queueing) "
            f"{s['burst_stored_p99_ms']:.0f} ms; x single per round: {ratios}; "
            f"logger CPU {s['logger_cpu_us_per_record']:.1f} us/rec; cores busy "
            f"{s['burst_records_per_s'] * cpu / 1e6:.2f} (rec/s x redis+logger CPU)."
        )
    lines += [
        f"paced: {config['processes']} x {config['rate']:g} records/s for "
        f"{config['seconds']:g} s, read back with XREAD BLOCK; p50/p99 medians of the rounds, "
        "max over all.",
        "redis us/rec: CPU of every redis-server of the topology per burst record "
        "(cluster: 3 primaries + 3 replicas); cluster+spub: the cluster with sharded_pubsub.",
    ]
    return "\n".join(lines)


def check_thresholds(results: dict[str, Any]) -> list[dict[str, Any]]:
    single, cluster = results["summary"]["single"], results["summary"]["cluster"]
    ratio = cluster["burst_records_per_s"] / single["burst_records_per_s"]
    checks = [
        {
            "check": f"cluster burst records/s >= {MIN_CLUSTER_RATIO}x single node "
            "(medians, same run)",
            "value": f"{ratio:.2f}x",
            "ok": ratio >= MIN_CLUSTER_RATIO,
        }
    ]
    cpu = cluster["logger_cpu_us_per_record"] / single["logger_cpu_us_per_record"]
    checks.append(
        {
            "check": f"cluster loggers' CPU per record <= {MAX_CLUSTER_CPU_RATIO}x "
            "single node (medians, same run)",
            "value": f"{cpu:.2f}x",
            "ok": cpu <= MAX_CLUSTER_CPU_RATIO,
        }
    )
    for name, s in results["summary"].items():
        lost = s["missing"] + s["duplicates"] + s["dropped"] + s["failed"]
        checks.append(
            {
                "check": f"{name}: every record arrived once, none dropped or failed",
                "value": f"{s['missing']} missing, {s['duplicates']} duplicates, "
                f"{s['dropped']} dropped, {s['failed']} failed",
                "ok": lost == 0,
            }
        )
    return checks


def run(args: argparse.Namespace) -> int:
    started = time.monotonic()
    out: Path = args.out.resolve() / "cluster"
    out.mkdir(parents=True, exist_ok=True)
    server: PrivateRedis | None = None
    cluster = RedisClusterServers()
    topologies: list[Topology] = []
    rounds: list[dict[str, Any]] = []
    source = source_revision()  # what is measured: read before, compared after
    try:
        server = PrivateRedis()
        cluster.start()
        topologies = [Topology.single(server), Topology.cluster(cluster)]
        if args.sharded:
            topologies.append(Topology.cluster(cluster, sharded=True))
        info = machine()
        info["redis_server"] = server.version()
        print(
            f"redis-server {info['redis_server']}: single on port {server.port}, cluster on "
            f"{', '.join(str(n.port) for n in cluster.nodes)}; {info['nproc']} x "
            f"{info['cpu']}",
            flush=True,
        )
        for number in range(args.rounds):
            for topo in topologies:
                for paced in (False, True):
                    r = run_round(topo, args, paced)
                    rounds.append(r)
                    figure = (
                        f"p50 {r['latency']['p50_ms']} ms, p99 {r['latency']['p99_ms']} ms"
                        if paced
                        else f"{r['records_per_s']:,} records/s"
                    )
                    print(
                        f"round {number + 1} {topo.name:<12} {r['kind']}: {figure}, "
                        f"{r['stored']}/{r['records']} stored, {r['dropped']} dropped",
                        flush=True,
                    )
    finally:
        for topo in topologies:
            topo.close()
        cluster.close()
        if server is not None:
            server.stop()
    results: dict[str, Any] = {
        "machine": info,
        "source": source,
        "config": {
            key: getattr(args, key)
            for key in (
                "processes",
                "records",
                "rate",
                "seconds",
                "contexts",
                "rounds",
                "sharded",
                "quick",
            )
        },
        "rounds": rounds,
    }
    source["changed_during_run"] = source_revision()["fingerprint"] != source["fingerprint"]
    results["summary"] = {topo.name: summary(rounds, topo.name) for topo in topologies}
    results["checks"] = check_thresholds(results)
    results["table"] = render_table(results)
    results["seconds"] = round(time.monotonic() - started, 1)
    versions = f"Python {info['python']}, redis-py {info['redis_py']}"
    return finish_run(results, out, versions)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(
            args.url, args.index, args.records, args.rate, args.contexts, args.sharded
        )
    return guarded(
        lambda: run(args), (RuntimeError, OSError, subprocess.SubprocessError, redis.RedisError)
    )


if __name__ == "__main__":
    sys.exit(main())
