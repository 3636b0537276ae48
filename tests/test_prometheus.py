"""stats() as Prometheus metrics: what a scrape shows, per handler."""

from __future__ import annotations

import sys

import pytest
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.registry import REGISTRY

from redis_logstream.prometheus import LogstreamCollector, register
from support.helpers import fresh_logger


def scrape(*handlers) -> dict[str, float]:
    """Samples of a registry holding a collector for ``handlers`` only."""
    registry = CollectorRegistry()
    registry.register(LogstreamCollector(lambda: handlers))
    samples = {}
    for metric in registry.collect():
        for sample in metric.samples:
            samples[f"{sample.name}{{{sample.labels['handler']}}}"] = sample.value
    return samples


def test_a_scrape_shows_each_handlers_counters_by_name(handlers, redis_url):
    handler = handlers(url=redis_url)
    handler.name = "redis"
    log = fresh_logger(handler)
    for i in range(5):
        log.info("record %d", i)
    assert handler.flush(5)
    samples = scrape(handler)
    assert samples["redis_logstream_records_enqueued_total{redis}"] == 5
    assert samples["redis_logstream_records_sent_total{redis}"] == 5
    assert samples["redis_logstream_records_dropped_total{redis}"] == 0
    assert samples["redis_logstream_records_pending{redis}"] == 0
    for name in ("records_failed", "write_errors", "write_retries"):
        assert samples[f"redis_logstream_{name}_total{{redis}}"] == 0


def test_drops_and_pending_records_show_while_redis_is_away(handlers, silent_server):
    handler = handlers(url=silent_server.url, queue_size=3, socket_timeout=0.2)
    handler.name = "redis"
    log = fresh_logger(handler)
    for i in range(10):
        log.info("record %d", i)
    samples = scrape(handler)
    assert samples["redis_logstream_records_dropped_total{redis}"] >= 7
    assert samples["redis_logstream_records_pending{redis}"] >= 1
    assert (
        samples["redis_logstream_records_enqueued_total{redis}"]
        + samples["redis_logstream_records_dropped_total{redis}"]
    ) == 10


def test_handlers_without_a_name_or_of_the_same_name_get_distinct_labels(handlers, redis_url):
    named, twin, anonymous = (handlers(url=redis_url) for _ in range(3))
    named.name = twin.name = "redis"
    labels = {key.split("{")[1].rstrip("}") for key in scrape(named, twin, anonymous)}
    assert labels == {"redis", "redis#2", "stream:logs:global"}


def test_the_text_format_is_what_prometheus_reads(handlers, redis_url):
    handler = handlers(url=redis_url)
    handler.name = "redis"
    registry = CollectorRegistry()
    registry.register(LogstreamCollector(lambda: [handler]))
    text = generate_latest(registry).decode()
    assert "# TYPE redis_logstream_records_sent_total counter" in text
    assert 'redis_logstream_records_pending{handler="redis"} 0.0' in text


def test_register_is_idempotent():
    registry = CollectorRegistry()
    assert register(registry) is register(registry)
    assert sum(1 for m in registry.collect() if m.name == "redis_logstream_records_sent") == 1


def test_the_prometheus_setting_registers_the_collector_at_start(settings):
    settings.REDIS_LOGSTREAM = {"CONNECTION": "default", "PROMETHEUS": True}
    apps.get_app_config("redis_logstream").ready()
    assert any(isinstance(c, LogstreamCollector) for c in REGISTRY._collector_to_names)
    apps.get_app_config("redis_logstream").ready()  # again: no duplicate error


def test_the_setting_without_prometheus_client_says_what_to_install(settings, monkeypatch):
    settings.REDIS_LOGSTREAM = {"CONNECTION": "default", "PROMETHEUS": True}
    monkeypatch.setitem(sys.modules, "redis_logstream.prometheus", None)
    with pytest.raises(ImproperlyConfigured, match=r"django-redis-logstream\[prometheus\]"):
        apps.get_app_config("redis_logstream").ready()
