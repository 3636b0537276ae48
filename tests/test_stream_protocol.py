"""The SSE view's protocol, served in-process: history, resume, live, errors.

Fast and exact (no sockets): the body is read chunk by chunk from Django's
test client, on the session Redis or a private one the test breaks.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from django.test import Client

from redis_logstream.console import hubs
from redis_logstream.console.fanout import Subscription, id_key, wake
from redis_logstream.console.sse import log_event
from redis_logstream.console.tokens import make_stream_token
from redis_logstream.naming import Names
from redis_logstream.reading.entries import decode_entry
from support.helpers import wait_for
from support.servers import RedisServer
from support.sse_client import Event, parse_events

pytestmark = pytest.mark.django_db  # closing a response closes old DB connections

JOB = "job_protocol"
KEY = Names().stream(JOB)


@pytest.fixture(autouse=True)
def _quick_stream(settings, redis_url: str) -> Iterator[None]:
    settings.REDIS_LOGSTREAM = {"URL": redis_url, "STREAM_HEARTBEAT": 0.2, "STREAM_MAX_AGE": 30.0}
    yield
    hubs.reset()


def add(client: redis.Redis, *messages: str, key: str = KEY) -> list[str]:
    return [
        client.xadd(key, {"data": json.dumps({"message": m, "level": "INFO"})}).decode()
        for m in messages
    ]


class Body:
    """An open stream response, read chunk by chunk."""

    def __init__(self, query: str = "", client: Client | None = None, **headers: str) -> None:
        token = make_stream_token(JOB, max_age=60)
        url = f"/logs/stream/?token={token}{query}"
        self.response = (client or Client()).get(url, **headers)
        self.status = self.response.status_code
        self._chunks = iter(self.response.streaming_content) if self.response.streaming else None
        self._pending: list[Event] = []

    def until(self, predicate, limit: int = 200) -> list[Event]:
        """Events up to and including the first that satisfies ``predicate``."""
        seen: list[Event] = []
        for _ in range(limit):
            if not self._pending:
                self._pending = parse_events(next(self._chunks))
            while self._pending:
                seen.append(self._pending.pop(0))
                if predicate(seen[-1]):
                    return seen
        raise AssertionError(f"no matching event in {limit} chunks: {seen!r}")

    def close(self) -> None:
        self.response.close()


@pytest.fixture
def open_body() -> Iterator:
    bodies: list[Body] = []

    def make(query: str = "", **headers: str) -> Body:
        bodies.append(Body(query, **headers))
        return bodies[-1]

    yield make
    for body in bodies:
        body.close()


def messages(events: list[Event]) -> list[str]:
    return [e.json["message"] for e in events if e.event == "log"]


def is_ready(event: Event) -> bool:
    return event.event == "ready"


def test_a_new_viewer_gets_the_last_100_records_then_ready(redis_client, open_body):
    add(redis_client, *(f"m{i}" for i in range(150)))
    events = open_body().until(is_ready)
    assert messages(events) == [f"m{i}" for i in range(50, 150)]
    assert events[-1].json == {"history": 100}
    assert events[0].comment == "redis-logstream"
    assert next(e.retry for e in events if e.retry) == 2000


def test_history_can_be_lowered_not_raised(redis_client, open_body, settings):
    add(redis_client, *(f"m{i}" for i in range(150)))
    assert messages(open_body("&history=3").until(is_ready)) == ["m147", "m148", "m149"]
    assert len(messages(open_body("&history=500").until(is_ready))) == 100
    settings.REDIS_LOGSTREAM = {**settings.REDIS_LOGSTREAM, "STREAM_HISTORY": 10}
    assert len(messages(open_body().until(is_ready))) == 10


def test_last_event_id_resumes_right_after_it(redis_client, open_body):
    ids = add(redis_client, *(f"m{i}" for i in range(1200)))
    events = open_body(HTTP_LAST_EVENT_ID=ids[99]).until(is_ready, limit=20)
    assert messages(events) == [f"m{i}" for i in range(100, 1200)]  # more than one page
    assert events[-1].json == {"history": 1100}
    assert [e.id for e in events if e.event == "log"] == ids[100:]


def test_the_last_event_id_query_parameter_works_like_the_header(redis_client, open_body):
    ids = add(redis_client, "a", "b", "c")
    assert messages(open_body(f"&last_event_id={ids[0]}").until(is_ready)) == ["b", "c"]


def test_live_records_follow_the_history_without_gap_or_duplicate(redis_client, open_body):
    """Records written while viewers connect: each viewer sees one unbroken run."""
    stop = threading.Event()
    written: list[str] = []

    def writer() -> None:
        n = 0
        while not stop.is_set():
            written.extend(add(redis_client, f"w{n}"))
            n += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        time.sleep(0.05)
        bodies = [open_body("&history=5") for _ in range(5)]
        seen = []
        for body in bodies:
            ids: list[str] = []
            while len(ids) < 300:
                ids += [e.id for e in body.until(lambda e: e.event == "log") if e.event == "log"]
            seen.append(ids)
    finally:
        stop.set()
        thread.join()
    for ids in seen:
        start = written.index(ids[0])
        assert ids == written[start : start + len(ids)]


def test_an_idle_stream_sends_a_heartbeat(open_body):
    body = open_body()
    body.until(is_ready)
    started = time.monotonic()
    assert body.until(lambda e: e.comment == "ping")[-1].comment == "ping"
    assert time.monotonic() - started < 2.0  # heartbeat 0.2 s, with room for a busy machine


def test_redis_down_at_connect_is_a_503_the_browser_retries(settings, own_redis: RedisServer):
    settings.REDIS_LOGSTREAM = {**settings.REDIS_LOGSTREAM, "URL": own_redis.url}
    own_redis.kill()
    token = make_stream_token(JOB, max_age=60)
    response = Client().get(f"/logs/stream/?token={token}")
    assert response.status_code == 503
    assert response["Retry-After"] == "2"


def test_viewers_hear_that_redis_went_away_and_came_back_and_miss_nothing(
    settings, own_redis: RedisServer, open_body
):
    settings.REDIS_LOGSTREAM = {**settings.REDIS_LOGSTREAM, "URL": own_redis.url}
    store = redis.Redis.from_url(own_redis.url)
    body = open_body("&history=0")
    body.until(is_ready)
    own_redis.kill()
    down = body.until(lambda e: e.event == "status")[-1].json
    assert down["redis"] == "down"
    own_redis.restart()
    add(store, "after the restart")
    events = body.until(lambda e: e.event == "log")
    assert [e.json["redis"] for e in events if e.event == "status"] == ["up"]
    assert messages(events) == ["after the restart"]
    store.close()


def test_a_viewer_that_falls_too_far_behind_is_cut_off_to_resume(redis_client):
    hub = hubs.get_hub()
    subscription = hub.subscribe(JOB, limit=3)
    try:
        subscription.push([((1, n), b"x") for n in range(2)])
        assert not subscription.done
        assert subscription.push([((2, n), b"x") for n in range(2)]) is None  # not waiting
        assert subscription.done and subscription.take() == []
    finally:
        subscription.close()
    wait_for(lambda: not hub.followers)


def test_the_last_viewer_leaving_stops_the_follower(redis_client, open_body):
    body = open_body()
    body.until(is_ready)
    hub = hubs.get_hub()
    follower = next(iter(hub.followers.values()))
    body.close()
    follower.join(3)
    assert not follower.is_alive() and not hub.followers


def test_entries_from_other_producers_become_one_line_json_events():
    odd = decode_entry(b"1-0", {b"data": b'{"message":\n "two\\nlines"}'})
    broken = decode_entry(b"2-0", {b"data": b"\xff not json"})
    carriage = decode_entry(b"3-0", {b"data": b'{"message":\r"cr"}'})
    bare_cr = decode_entry(b"4-0", {b"data": b"not\rjson"})
    for entry in (odd, broken, carriage, bare_cr):
        (event,) = parse_events(log_event(entry))
        assert event.data.count("\n") == 0
        assert isinstance(event.json, dict)
    assert parse_events(log_event(odd))[0].json["message"] == "two\nlines"
    assert parse_events(log_event(broken))[0].json["level"] == "?"


def test_stream_ids_order_like_redis():
    assert id_key("1700000000000-10") > id_key("1700000000000-9")
    assert id_key("1700000000001-0") > id_key("1700000000000-99")


def test_a_waiting_viewer_is_woken_by_a_push():
    subscription = Subscription(follower=None)  # type: ignore[arg-type]

    def push() -> None:
        wake([s for s in [subscription] if s.push([((1, 0), b"x")])])

    threading.Timer(0.05, push).start()
    started = time.monotonic()
    assert subscription.wait(5) == [((1, 0), b"x")]
    assert time.monotonic() - started < 1


def test_viewers_of_one_event_loop_are_woken_together():
    import asyncio

    async def main() -> list:
        subscriptions = [Subscription(follower=None) for _ in range(3)]  # type: ignore[arg-type]
        waits = [asyncio.ensure_future(s.wait_async(5)) for s in subscriptions]
        await asyncio.sleep(0.01)  # all three wait now
        pushed = [s.push([((1, 0), b"x")]) for s in subscriptions]
        threading.Thread(target=wake, args=(pushed,)).start()
        return await asyncio.wait_for(asyncio.gather(*waits), 2)

    assert asyncio.run(main()) == [[((1, 0), b"x")]] * 3


def test_a_response_closed_before_it_was_read_frees_the_follower(redis_client):
    """A server may drop a response unread (a client gone while the view ran)."""
    body = Body()
    hub = hubs.get_hub()
    (follower,) = hub.followers.values()
    body.close()
    follower.join(3)
    assert not follower.is_alive() and not hub.followers


def test_a_viewer_that_stops_reading_loses_its_place(redis_client):
    hub = hubs.get_hub()
    subscription = hub.subscribe(JOB, stale_after=0.2)
    (follower,) = hub.followers.values()
    follower.join(3)  # pruned within a read or two, then the follower stops
    assert subscription.closed and not follower.is_alive()


def test_viewers_arriving_together_start_one_follower(redis_client):
    hub = hubs.get_hub()
    names = []
    original = redis.Redis.xrevrange

    def counting(self, *args, **kwargs):
        names.append(args[0])
        time.sleep(0.05)  # a slow first read: the others arrive meanwhile
        return original(self, *args, **kwargs)

    subscriptions = []
    redis.Redis.xrevrange = counting
    try:
        threads = [
            threading.Thread(target=lambda: subscriptions.append(hub.subscribe(JOB)))
            for _ in range(8)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        redis.Redis.xrevrange = original
    assert len(subscriptions) == 8 and len(hub.followers) == 1
    assert names == [KEY]
    for subscription in subscriptions:
        subscription.close()


@pytest.mark.parametrize("query", ["&history=%C2%B2", "&last_event_id=99999999999999999999-0"])
def test_odd_numbers_are_400_not_500(redis_client, query):
    assert Body(query).status == 400


def test_gzip_middleware_leaves_the_stream_alone(redis_client, settings, open_body):
    settings.MIDDLEWARE = ["django.middleware.gzip.GZipMiddleware", *settings.MIDDLEWARE]
    body = open_body(HTTP_ACCEPT_ENCODING="gzip, deflate")
    assert body.status == 200
    assert not body.response.has_header("Content-Encoding")
    assert body.until(is_ready)[-1].json == {"history": 0}
