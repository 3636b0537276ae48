"""A minute of steady logging through a Redis crash: nothing lost, nothing grows.

Three threads log about three hundred records a second, most of them under a
log context, through one RedisLogHandler into a redis-server this test owns.
Half-way through, the server is killed with SIGKILL and started again, empty,
on the same port three seconds later.  The process's resident memory, threads
and sockets and Redis's connected clients are sampled every second.

The soak itself lives in bench/soak.py (``make soak`` runs it for ten minutes);
this test is its CI-sized run.  The figures are printed in lines starting
with ``FIGURE`` (run with ``-s`` to see them) for docs/guarantees.md.
"""

from __future__ import annotations

from bench.lib.soak import HEADER, Sample, Soak, SoakConfig, check, figures, row
from support.servers import RedisServer

GLOBAL = "stream:logs:global"
#: One minute: ten seconds of warm-up, the crash at thirty, three seconds down.
CONFIG = SoakConfig(seconds=60.0, warmup=10.0, outage=3.0, sample_every=1.0)


def test_a_minute_of_logging_through_a_redis_crash_loses_nothing_and_grows_nothing(
    own_redis: RedisServer,
) -> None:
    printed: list[str] = []

    def on_sample(sample: Sample) -> None:
        if sample.t % 10 == 0 or sample.phase in ("outage", "recovery"):
            printed.append(row(sample))

    result = Soak(own_redis, CONFIG, on_sample=on_sample, on_event=printed.append).run()
    print("", HEADER, *printed, row(result.samples[-1]), *figures(result), sep="\n")
    failed = [f"{c.name}: {c.detail}" for c in check(result) if not c.ok]
    assert not failed, "\n".join(failed)
    # What the checks rest on: the crash really interrupted a steady flow.
    assert result.logged_during_outage > 0
    assert result.stats["retries"] > 0 and result.stats["errors"] > 0
    assert result.stored[GLOBAL] == result.stats["sent"] == max(result.logged.values())
