"""Where the handler's Redis client comes from: alias, URL or client."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import redis
from django_redis import get_redis_connection

from redis_logstream import RedisLogHandler
from redis_logstream.redis.connection import ConfigurationError
from support.helpers import Handlers, fresh_logger, messages

ROOT = Path(__file__).resolve().parents[1]


def _pool(handler: RedisLogHandler) -> redis.ConnectionPool:
    return handler.shipper.sink.client.connection_pool


def test_the_cache_alias_gives_a_pool_of_the_handlers_own(
    handlers: Handlers, redis_url: str, redis_client: redis.Redis
) -> None:
    handler = handlers(connection="default", socket_timeout=1.5)
    log = fresh_logger(handler)
    log.info("via the alias")
    assert handler.flush(5)
    assert messages(redis_client, "stream:logs:global") == ["via the alias"]
    cache_pool = get_redis_connection("default").connection_pool
    pool = _pool(handler)
    assert pool is not cache_pool
    assert pool.connection_kwargs["port"] == cache_pool.connection_kwargs["port"]
    # Short timeouts and no client-side retries: the shipper decides.
    assert pool.connection_kwargs["socket_timeout"] == 1.5
    attempts = []

    def fail() -> None:
        attempts.append(1)
        raise redis.ConnectionError("down")

    with pytest.raises(redis.ConnectionError):
        pool.connection_kwargs["retry"].call_with_retry(fail, lambda error: None)
    assert len(attempts) == 1
    assert pool.connection_kwargs["health_check_interval"] == 0


def test_the_testproject_logging_config_ships_site_records(
    redis_url: str, redis_client: redis.Redis
) -> None:
    handler = next(
        h for h in logging.getLogger("testproject").handlers if isinstance(h, RedisLogHandler)
    )
    assert handler.options.connection == "default"
    logging.getLogger("testproject.views").warning("from the site")
    assert handler.flush(5)
    assert "from the site" in messages(redis_client, "stream:logs:global")


def test_an_unknown_alias_fails_when_the_handler_is_built() -> None:
    with pytest.raises(ConfigurationError, match=r"no alias 'nosuch'.*aliases: default"):
        RedisLogHandler(connection="nosuch")


def test_a_cache_that_is_not_redis_is_refused_with_a_hint(settings) -> None:
    settings.CACHES = {
        **settings.CACHES,
        "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    }
    with pytest.raises(ConfigurationError, match="not a redis URL"):
        RedisLogHandler(connection="local")


def test_a_client_callable_is_called_in_the_worker_not_at_configuration(
    handlers: Handlers, redis_url: str, redis_client: redis.Redis
) -> None:
    calls: list[str] = []

    def make_client() -> redis.Redis:
        calls.append(threading.current_thread().name)
        return redis.Redis.from_url(redis_url)

    handler = handlers(client=make_client)
    assert calls == []
    fresh_logger(handler).info("from a client factory")
    assert handler.flush(5)
    assert calls == ["redis-logstream"]
    assert messages(redis_client, "stream:logs:global") == ["from a client factory"]


def test_a_client_can_be_named_by_its_dotted_path(
    handlers: Handlers, redis_url: str, redis_client: redis.Redis
) -> None:
    handler = handlers(client="django_redis.get_redis_connection")
    fresh_logger(handler).info("dotted")
    assert handler.flush(5)
    assert messages(redis_client, "stream:logs:global") == ["dotted"]


def test_a_bad_dotted_client_path_fails_at_configuration() -> None:
    with pytest.raises(ConfigurationError, match=r"cannot import client='nowhere\.factory'"):
        RedisLogHandler(client="nowhere.factory")


def test_url_wins_over_the_alias(
    handlers: Handlers, own_redis, redis_url: str, redis_client: redis.Redis
) -> None:
    handler = handlers(url=own_redis.url, connection="default")
    fresh_logger(handler).info("to the url")
    assert handler.flush(5)
    assert messages(own_redis.client(), "stream:logs:global") == ["to the url"]
    assert redis_client.exists("stream:logs:global") == 0


def test_a_url_that_is_not_a_url_fails_at_configuration() -> None:
    with pytest.raises(ConfigurationError, match=r"not a Redis URL \(redis://\.\.\., rediss"):
        RedisLogHandler(url="127.0.0.1:6379")


def test_without_django_settings_the_handler_asks_for_url_or_client() -> None:
    script = """
        from redis_logstream import RedisLogHandler
        try:
            RedisLogHandler()
        except ValueError as exc:
            print(exc)
    """
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=True,
    ).stdout
    assert "needs url= or client=" in out


def test_a_client_without_a_connection_pool_is_refused_at_configuration() -> None:
    class NotAClient:
        pass

    with pytest.raises(ConfigurationError, match=r"must be a redis\.Redis or redis\.cluster"):
        RedisLogHandler(client=NotAClient())


def test_a_unix_socket_url_works_for_the_handler_and_the_reader(handlers: Handlers) -> None:
    """TCP keepalive does not exist on a Unix socket: redis-py refuses the option there."""
    from redis_logstream.reading.reader import StreamReader, client_for_url
    from support.servers import RedisServer

    server = RedisServer()
    socket_path = server.dir / "redis.sock"
    server.args += ["--unixsocket", str(socket_path), "--unixsocketperm", "700"]
    try:
        server.start()
        url = f"unix://{socket_path}?db=0"
        handler = handlers(url=url)
        fresh_logger(handler).info("over a unix socket")
        assert handler.flush(5), handler.stats()
        reader = StreamReader(client_for_url(url))
        assert [e.message for e in reader.history(None, 10)] == ["over a unix socket"]
    finally:
        server.close()


def test_tls_urls_check_host_names_on_every_redis_py_unless_told_not_to() -> None:
    from redis_logstream.reading.reader import client_for_url
    from redis_logstream.redis.connection import client_from_url

    for make in (lambda u: client_from_url(u, 1.0), client_for_url):
        kwargs = make("rediss://redis.example.com:6380/0").connection_pool.connection_kwargs
        assert kwargs["ssl_check_hostname"] is True
        off = make("rediss://redis.example.com:6380/0?ssl_check_hostname=false")
        assert off.connection_pool.connection_kwargs["ssl_check_hostname"] is False
        # No certificate checking at all: no host name to check (Python refuses both).
        unchecked = make("rediss://redis.example.com:6380/0?ssl_cert_reqs=none")
        assert not unchecked.connection_pool.connection_kwargs.get("ssl_check_hostname")
