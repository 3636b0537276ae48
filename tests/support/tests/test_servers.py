"""The test helpers themselves: if these lie, every failure test means nothing."""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import redis

from support.secure_servers import TLS_HOST, SecureRedisServer, make_certificates
from support.servers import LOOPBACK, RedisServer, RedisServerError, SilentServer, no_retry


def test_session_server_is_exported_as_redis_url(redis_server: RedisServer) -> None:
    # Subprocesses (manage.py commands) and the testproject settings read it.
    assert os.environ["REDIS_URL"] == redis_server.url
    assert redis_server.url.startswith("redis://127.0.0.1:")
    assert not redis_server.url.endswith(":6379/0")


def test_redis_url_starts_empty(redis_url: str, redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0
    redis_client.set(b"k", b"\xffbytes")
    assert redis_client.get(b"k") == b"\xffbytes"  # decode_responses=False


def test_django_cache_uses_session_server(redis_url: str) -> None:
    from django.conf import settings

    assert settings.CACHES["default"]["LOCATION"] == redis_url


def test_kill_then_restart_answers_on_same_port(own_redis: RedisServer) -> None:
    port, url = own_redis.port, own_redis.url
    client = own_redis.client(socket_timeout=1)
    client.set("before", "1")
    old_pid = own_redis.pid

    own_redis.kill()
    assert not own_redis.is_running
    with pytest.raises(redis.ConnectionError):
        own_redis.client(socket_timeout=0.5, socket_connect_timeout=0.5).ping()

    own_redis.restart()
    assert own_redis.is_running
    assert (own_redis.port, own_redis.url) == (port, url)
    assert own_redis.pid != old_pid
    assert client.ping()  # the old client reconnects to the same URL
    assert client.get("before") is None  # no persistence: it came back empty


def test_graceful_stop_and_restart(own_redis: RedisServer) -> None:
    own_redis.stop()
    assert not own_redis.is_running
    own_redis.restart(graceful=True)
    assert own_redis.client().ping()


def test_paused_server_times_out_then_resumes(own_redis: RedisServer) -> None:
    client = own_redis.client(socket_timeout=0.2)
    assert client.ping()
    own_redis.pause()
    assert own_redis.is_paused
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    assert time.monotonic() - started < 2
    own_redis.resume()
    assert not own_redis.is_paused
    fresh = own_redis.client(socket_timeout=1)
    assert fresh.ping()


def test_stop_while_paused_does_not_hang(own_redis: RedisServer) -> None:
    own_redis.pause()
    started = time.monotonic()
    own_redis.stop(timeout=5)
    assert not own_redis.is_running
    assert time.monotonic() - started < 5


def test_silent_server_never_answers(silent_server: SilentServer) -> None:
    client = redis.Redis.from_url(
        silent_server.url, socket_timeout=0.2, socket_connect_timeout=0.2, retry=no_retry()
    )
    started = time.monotonic()
    with pytest.raises(redis.TimeoutError):
        client.ping()
    assert time.monotonic() - started < 2
    assert silent_server.connections >= 1
    client.close()


def test_garbage_server_answers_non_resp(garbage_server: SilentServer) -> None:
    client = redis.Redis.from_url(
        garbage_server.url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=no_retry()
    )
    with pytest.raises(redis.RedisError) as excinfo:
        client.ping()
    assert not isinstance(excinfo.value, redis.TimeoutError)
    client.close()
    with socket.create_connection(("127.0.0.1", garbage_server.port), timeout=1) as sock:
        sock.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert sock.recv(100).startswith(b"@@")


def test_silent_server_close_frees_port() -> None:
    server = SilentServer()
    port = server.port
    server.close()
    with socket.socket() as sock:  # would fail with EADDRINUSE if still listening
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))


def test_start_failure_reports_server_log() -> None:
    server = RedisServer(args=["--no-such-directive", "1"], start_timeout=5)
    try:
        with pytest.raises(RedisServerError) as excinfo:
            server.start()
    finally:
        server.close()
    message = str(excinfo.value)
    assert "exited" in message
    assert "no-such-directive" in message  # the server's own complaint is in it


def test_site_logging_reaches_session_server(redis_client: redis.Redis) -> None:
    # conftest re-aims the LOGGING handlers that pytest-django built before the
    # session server existed; a record logged by the site must land here.
    from redis_logstream import RedisLogHandler, log_context

    with log_context("User.wiring"):
        logging.getLogger("testproject.wiring").info("wiring marker %d", 42)
    handlers = [
        h for h in logging.getLogger("testproject").handlers if isinstance(h, RedisLogHandler)
    ]
    assert len(handlers) == 1
    assert handlers[0].flush(timeout=5)
    records = [
        json.loads(fields[b"data"]) for _, fields in redis_client.xrange("stream:logs:global")
    ]
    assert any(
        r["message"] == "wiring marker 42" and r["context"] == "User.wiring" for r in records
    ), records


def test_the_test_certificates_pass_strict_x509_checking_as_python_3_13_does_by_default(
    tmp_path: Path,
) -> None:
    # Python 3.13 turns on VERIFY_X509_STRICT in every default context (so in
    # redis-py's): a CA without keyUsage made every TLS test fail there with
    # "certificate unknown".  Asked for here, every Python checks the same.
    certs = make_certificates(tmp_path / "tls")
    context = ssl.create_default_context(cafile=str(certs.ca))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    context.load_cert_chain(certs.client_cert, certs.client_key)
    with (
        SecureRedisServer(certificates=certs, client_certificates=True) as server,
        socket.create_connection((LOOPBACK, server.port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=TLS_HOST) as tls,
    ):
        tls.sendall(b"*1\r\n$4\r\nPING\r\n")
        assert tls.recv(100).startswith(b"-NOAUTH")  # TLS done: Redis answers
    # redis-server checks the client's certificate leniently; OpenSSL's strict mode:
    for purpose, cert in (("sslserver", certs.server_cert), ("sslclient", certs.client_cert)):
        done = subprocess.run(
            [
                "openssl",
                "verify",
                "-x509_strict",
                "-purpose",
                purpose,
                "-CAfile",
                str(certs.ca),
                str(cert),
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
        assert done.returncode == 0, done.stdout + done.stderr
