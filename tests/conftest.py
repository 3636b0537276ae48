"""Shared fixtures: every test talks to Redis servers the test session started.

One ``redis-server`` serves the whole session (starting one costs a few tens
of milliseconds, FLUSHALL between tests costs less); tests that kill, restart
or freeze Redis get a dedicated server from ``own_redis`` so they cannot break
their neighbours.

Ordering matters for Django: pytest-django imports ``testproject.settings``
and runs ``django.setup()`` (which builds the LOGGING handlers) before any
conftest is imported, so the settings were read with whatever ``REDIS_URL``
the shell had, possibly the fallback ``redis://127.0.0.1:6379/0`` of a shared
server. ``pytest_configure`` below therefore starts the session server first,
exports its URL as ``REDIS_URL`` (for subprocesses such as ``manage.py``
commands run by tests), points every django-redis cache at it and rebuilds the
logging handlers, before any test runs and before anything was logged.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator

import pytest
import redis

from support.helpers import Handlers
from support.servers import RedisServer, SilentServer, no_retry

# The Redis Cluster fixtures (redis_cluster, cluster, own_cluster), the
# Sentinel one (sentinel_servers) and the RabbitMQ ones (rabbit_url,
# rabbit_server, ...) live with the servers they start.
pytest_plugins = ["support.cluster_servers", "support.sentinel_servers", "support.rabbit_servers"]

_session_server: RedisServer | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Start the session's Redis and point the environment and Django at it."""
    global _session_server
    if config.option.help or config.option.version:
        return
    if _session_server is None:
        _session_server = RedisServer().start()
    os.environ["REDIS_URL"] = _session_server.url
    _point_django_at(_session_server.url)


def pytest_unconfigure(config: pytest.Config) -> None:
    """Flush the handlers while their Redis is still up, then stop it."""
    global _session_server
    if _session_server is not None:
        logging.shutdown()
        _session_server.close()
        _session_server = None


def _point_django_at(url: str) -> None:
    """Re-aim Django's caches and logging at ``url`` if settings are loaded.

    Without this, settings read before this conftest (see the module doc)
    would keep the URL of whatever Redis the shell named.
    """
    if "django" not in sys.modules:
        return
    from django.conf import settings

    if not settings.configured:
        return
    for cache in settings.CACHES.values():
        if str(cache.get("BACKEND", "")).startswith("django_redis"):
            cache["LOCATION"] = url
    # django.test.signals resets the cache handler when CACHES changes.
    import django.test.signals  # noqa: F401
    from django.test.signals import setting_changed

    setting_changed.send(sender=None, setting="CACHES", value=settings.CACHES, enter=False)
    # Rebuild the handlers (the old ones are flushed and closed by dictConfig)
    # so none keeps a client built from the settings' first reading.
    from django.utils.log import configure_logging

    configure_logging(settings.LOGGING_CONFIG, settings.LOGGING)


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    """The session's RedisServer (shared: do not kill or pause it; use own_redis)."""
    assert _session_server is not None, "pytest_configure did not start the session Redis"
    return _session_server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """URL of the session server, emptied (FLUSHALL) so each test starts clean.

    Only this test-owned server is flushed. A test that broke it despite the
    warning gets it back running, so one failure does not cascade.
    """
    if redis_server.is_paused:
        redis_server.resume()
    if not redis_server.is_running:
        redis_server.restart()
    with redis.Redis.from_url(redis_server.url, socket_timeout=5, retry=no_retry()) as client:
        client.flushall()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A bytes client (decode_responses=False) to the flushed session server."""
    client = redis.Redis.from_url(
        redis_url, decode_responses=False, socket_timeout=5, retry=no_retry()
    )
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A dedicated, started RedisServer for destructive tests; closed at teardown."""
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def silent_server() -> Iterator[SilentServer]:
    """A loopback peer that accepts connections and never answers."""
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def garbage_server() -> Iterator[SilentServer]:
    """A loopback peer that answers every read with bytes that are not RESP."""
    server = SilentServer(garbage=True)
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def handlers() -> Iterator[Handlers]:
    """Builds RedisLogHandlers for a test (fast flush_interval) and closes them after."""
    made = Handlers()
    yield made
    made.close()
