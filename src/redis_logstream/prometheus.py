"""The handlers' counters as Prometheus metrics (extra ``prometheus``).

``stats()`` answers "is logging healthy?" for one handler in one process;
operators ask it of every process, on a dashboard, with alerts.  This
collector exposes the same counters from every RedisLogHandler of the
process, labelled by handler name (the LOGGING key, e.g. ``redis``)::

    from redis_logstream.prometheus import register
    register()            # once per process, e.g. in AppConfig.ready()

or, with the app installed, ``REDIS_LOGSTREAM = {"PROMETHEUS": True}``.
Then whatever serves the registry (``prometheus_client.start_http_server``,
django-prometheus' ``/metrics``) shows::

    redis_logstream_records_enqueued_total{handler="redis"} 10452
    redis_logstream_records_sent_total{handler="redis"} 10450
    redis_logstream_records_dropped_total{handler="redis"} 0
    redis_logstream_records_failed_total{handler="redis"} 0
    redis_logstream_write_errors_total{handler="redis"} 3
    redis_logstream_write_retries_total{handler="redis"} 3
    redis_logstream_records_pending{handler="redis"} 2

Values are read from ``stats()`` at scrape time: nothing is added to the
logging path.  An alert on ``rate(redis_logstream_records_dropped_total[5m]) > 0``
or a growing ``records_pending`` says Redis is away or too slow.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from redis_logstream.redis.handler import RedisLogHandler
from redis_logstream.shipping.handler import live_handlers

__all__ = ["LogstreamCollector", "register"]

#: (metric name, stats() key, help text); counters get ``_total`` appended.
COUNTERS = (
    ("records_enqueued", "enqueued", "Records accepted into the handler's buffer."),
    ("records_sent", "sent", "Records written to Redis."),
    ("records_dropped", "dropped", "Records given up because the buffer was full."),
    ("records_failed", "failed", "Records Redis refused for good (e.g. a key of the wrong type)."),
    ("write_errors", "errors", "Failed writes to Redis (connection lost, timeout, OOM...)."),
    ("write_retries", "retries", "Writes retried after an error."),
)


class LogstreamCollector(Collector):
    """Collects ``stats()`` of the handlers ``handlers()`` returns (default:
    every live RedisLogHandler of the process) at each scrape."""

    def __init__(self, handlers: Callable[[], Iterable[RedisLogHandler]] = live_handlers) -> None:
        self.handlers = handlers

    def collect(self) -> Iterator[Metric]:
        counters = {
            name: CounterMetricFamily(f"redis_logstream_{name}", text, labels=["handler"])
            for name, _key, text in COUNTERS
        }
        pending = GaugeMetricFamily(
            "redis_logstream_records_pending",
            "Records waiting in the handler's buffer to be written.",
            labels=["handler"],
        )
        for label, handler in _labelled(self.handlers()):
            stats = handler.stats()
            for name, key, _text in COUNTERS:
                counters[name].add_metric([label], stats[key])
            pending.add_metric([label], stats["pending"])
        yield from counters.values()
        yield pending

    def describe(self) -> Iterator[Metric]:
        # Names only, so registering checks for clashes without a scrape.
        for name, _key, text in COUNTERS:
            yield CounterMetricFamily(f"redis_logstream_{name}", text, labels=["handler"])
        yield GaugeMetricFamily("redis_logstream_records_pending", "", labels=["handler"])


def _labelled(handlers: Iterable[RedisLogHandler]) -> Iterator[tuple[str, RedisLogHandler]]:
    """A distinct label per handler: its name, else its global stream; a
    second handler of the same name gets ``#2``, and so on."""
    seen: dict[str, int] = {}
    for handler in sorted(handlers, key=id):
        base = handler.name or handler.label
        seen[base] = seen.get(base, 0) + 1
        yield (base if seen[base] == 1 else f"{base}#{seen[base]}"), handler


_registered: dict[int, LogstreamCollector] = {}


def register(registry: CollectorRegistry = REGISTRY) -> LogstreamCollector:
    """Add the collector to ``registry`` (once: a second call returns the first)."""
    if id(registry) not in _registered:
        collector = LogstreamCollector()
        registry.register(collector)
        _registered[id(registry)] = collector
    return _registered[id(registry)]
