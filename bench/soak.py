"""Soak: minutes of steady logging, a Redis crash in the middle, and nothing that grows.

Run from the repository root::

    .venv/bin/python bench/soak.py [--minutes N | --quick]

Three threads log a hundred records a second each, mostly under log contexts
(four per thread, one with characters that get encoded), through one
RedisLogHandler.  Half-way through, Redis is killed with SIGKILL and started
again, empty, on the same port a few seconds later.  Resident memory, threads,
open sockets, Redis's connected clients and the handler's counters are
sampled; a row is printed every 30 seconds.  Exit status 1 unless:

- every record logged is stored exactly once: the XINFO ``entries-added`` of
  each stream on the crashed server (read under ``CLIENT PAUSE WRITE`` just
  before the kill, so no batch lands between the count and the crash) plus
  those on the restarted one equal what was logged under that context;
- nothing is dropped: what is logged during the outage fits in queue_size;
- resident memory grows by less than 10 MiB after the warm-up;
- once the handler writes again, threads and sockets are back to their steady
  value and Redis has no more clients than before; after close() the process
  has the threads and sockets it had before the soak.

Exit status 2 when the soak could not run.  Redis is a private redis-server on
a free loopback port, without persistence, stopped by pid; never a shared
server.  tests/test_soak.py runs the same soak for a minute.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# Run as a script, bench/ is sys.path[0]: add the repository (bench.lib) and tests/ (support).
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
sys.path.insert(2, str(Path(__file__).resolve().parents[1] / "tests"))

import redis

from bench.lib.private_redis import PrivateRedis
from bench.lib.soak import HEADER, Sample, Soak, SoakConfig, check, figures, row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length (default 10)")
    parser.add_argument("--quick", action="store_true", help="one minute")
    parser.add_argument("--every", type=float, help="seconds between rows (default 30)")
    args = parser.parse_args(argv)
    seconds = 60.0 if args.quick else args.minutes * 60
    every = args.every or (30.0 if seconds >= 300 else 10.0)
    config = SoakConfig(
        seconds=seconds,
        warmup=min(30.0, seconds / 6),
        outage=5.0 if seconds >= 300 else 3.0,
        sample_every=5.0 if seconds >= 300 else 1.0,
    )
    rows = iter(range(0, 1 << 30, max(1, round(every))))
    next_row = next(rows)

    def on_sample(sample: Sample) -> None:
        nonlocal next_row
        if sample.t >= next_row:
            print(row(sample), flush=True)
            while next_row <= sample.t:
                next_row = next(rows)

    try:
        server = PrivateRedis()  # a private server: it crashes and comes back on its port
    except (RuntimeError, OSError, redis.RedisError) as exc:
        print(f"soak could not run: {exc}", file=sys.stderr)
        return 2
    try:
        print(
            f"soak: {seconds:.0f} s, {config.writers} threads x {config.rate:.0f} records/s, "
            f"Redis killed at {seconds * config.kill_at:.0f} s for {config.outage:.0f} s; "
            f"redis-server {server.version()} on port {server.port}, redis-py "
            f"{redis.__version__}, Python {sys.version.split()[0]}",
            flush=True,
        )
        server.client.connection_pool.disconnect()  # Redis's clients: the soak's only
        print(HEADER, flush=True)
        result = Soak(
            server,
            config,
            on_sample=on_sample,
            on_event=lambda text: print(f"  -- {text}", flush=True),
        ).run()
    except (RuntimeError, OSError, redis.RedisError) as exc:
        print(f"soak could not run: {exc}", file=sys.stderr)
        return 2
    finally:
        server.stop()
    print(row(result.samples[-1]), "", *figures(result), "", sep="\n")
    checks = check(result)
    for item in checks:
        print(f"{'ok  ' if item.ok else 'FAIL'} {item.name}: {item.detail}")
    return 0 if all(item.ok for item in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
