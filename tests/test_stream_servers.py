"""The SSE protocol as browsers meet it, under runserver, gunicorn and uvicorn.

Each server runs the test site in a child process (``web_servers``) with a
0.3 s heartbeat and 6 s responses; records are added to the session Redis
the way the handler adds them. Streams are named per test, so the servers
can live for the whole module.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator

import django
import pytest
import redis

from redis_logstream.console.tokens import make_stream_token
from redis_logstream.naming import Names
from support.helpers import wait_for
from support.servers import RedisServer, no_retry
from support.sse_client import SSEClient
from support.web_servers import KINDS, WebServer

MAX_AGE = 4.0  # stream_settings.STREAM_MAX_AGE


@pytest.fixture(scope="module", params=KINDS)
def server(request, redis_server: RedisServer) -> Iterator[WebServer]:
    web = WebServer(request.param, redis_server.url)
    yield web
    web.stop()


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5, retry=no_retry())
    yield client
    client.close()


@pytest.fixture
def job() -> str:
    return f"job_{uuid.uuid4().hex}"


def add(store: redis.Redis, context: str, *messages: str) -> list[str]:
    key = Names().stream(context)
    return [
        store.xadd(key, {"data": json.dumps({"message": m, "level": "INFO"})}).decode()
        for m in messages
    ]


def viewer(server: WebServer, context: str, query: str = "", **headers: str) -> SSEClient:
    token = make_stream_token(context, max_age=600)
    return SSEClient(f"{server.url}/logs/stream/?token={token}{query}", headers=headers)


def logs(events) -> list[str]:
    return [e.json["message"] for e in events if e.event == "log"]


def followers(store: redis.Redis) -> int:
    return sum(1 for c in store.client_list() if c.get("name") == "redis_logstream:follower")


def test_history_then_live(server, store, job):
    add(store, job, *(f"old {i}" for i in range(5)))
    with viewer(server, job, "&history=3") as client:
        assert client.status == 200
        assert client.headers["content-type"] == "text/event-stream; charset=utf-8"
        history = client.wait_for(lambda e: e.event == "ready")
        assert logs(history) == ["old 2", "old 3", "old 4"]
        assert history[-1].json == {"history": 3}
        sent = time.monotonic()
        add(store, job, "new")
        live = client.wait_for(lambda e: e.event == "log", timeout=2)
        assert logs(live) == ["new"]
        assert time.monotonic() - sent < 1.0


def test_a_reconnect_with_last_event_id_resumes_with_no_gap_and_no_duplicate(server, store, job):
    stop = threading.Event()
    written: list[str] = []

    def writer() -> None:  # keeps writing while the viewer comes and goes
        n = 0
        while not stop.is_set():
            written.extend(add(store, job, f"r{n}"))
            n += 1
            time.sleep(0.002)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.2)
        seen: list[str] = []
        last = None
        for _round in range(3):
            headers = {"Last-Event-ID": last} if last else {}
            with viewer(server, job, "&history=0", **headers) as client:
                for event in client.events(0.4):
                    if event.event == "log":
                        seen.append(event.id)
            last = seen[-1]
            time.sleep(0.2)  # records keep coming while nobody watches
    finally:
        stop.set()
        thread.join()
    start = written.index(seen[0])
    assert seen == written[start : start + len(seen)]
    assert len(seen) > 100


def test_an_idle_stream_sends_heartbeats(server, job):
    with viewer(server, job) as client:
        client.wait_for(lambda e: e.event == "ready")
        events = client.events(2.0)  # heartbeat 0.3 s: about 6, at least 2 on a busy machine
        assert sum(1 for e in events if e.comment == "ping") >= 2


def test_many_viewers_share_one_redis_connection_and_all_get_every_record(server, store, job):
    wait_for(lambda: followers(store) == 0, timeout=MAX_AGE + 5)
    clients = [viewer(server, job, "&history=0") for _ in range(20)]
    try:
        for client in clients:
            client.wait_for(lambda e: e.event == "ready")
        add(store, job, *(f"m{i}" for i in range(50)))
        for client in clients:
            got: list[str] = []
            deadline = time.monotonic() + 5
            while len(got) < 50 and time.monotonic() < deadline:
                got += logs(client.events(0.1))
            assert got == [f"m{i}" for i in range(50)]
        assert followers(store) == 1
    finally:
        for client in clients:
            client.close()


def test_a_viewer_that_leaves_frees_the_redis_connection(server, store, job):
    wait_for(lambda: followers(store) == 0, timeout=MAX_AGE + 5)
    client = viewer(server, job)
    client.wait_for(lambda e: e.event == "ready")
    assert followers(store) == 1
    left = time.monotonic()
    client.close()
    # Django 4.2 under ASGI cannot tell that a client left: its response
    # ends at STREAM_MAX_AGE instead (docs/console.md).
    blind = server.kind == "uvicorn" and django.VERSION < (5, 0)
    wait_for(lambda: followers(store) == 0, timeout=MAX_AGE + 3 if blind else 3)
    print(f"{server.kind}: follower gone {time.monotonic() - left:.2f}s after the viewer left")


def test_a_response_ends_after_max_age_and_the_browser_resumes(server, store, job):
    with viewer(server, job, "&history=0") as client:
        client.wait_for(lambda e: e.event == "ready")
        start = time.monotonic()
        last = client.events(MAX_AGE + 3)[-1]
        assert client.ended
        assert last.retry == 500  # come back at once, not after the usual 2 s
        assert MAX_AGE - 0.5 < time.monotonic() - start < MAX_AGE + 3
