"""The console's limits, served in-process: what one viewer or one user may cost.

A viewer that falls behind is told so and its response ends; a resume from
before the stream's history replays a bounded number of records; a user
holds a bounded number of streams; odd input is 400, not 500 or 503.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest
import redis
from django.test import Client

from redis_logstream.console import hubs
from redis_logstream.console.access import USER_STREAMS
from redis_logstream.console.fanout import Subscription
from redis_logstream.console.tokens import make_stream_token
from redis_logstream.naming import Names
from support.helpers import wait_for
from support.sse_client import Event, parse_events

pytestmark = pytest.mark.django_db

JOB = "job_limits"
KEY = Names().stream(JOB)
STREAM = "/logs/stream/"


@pytest.fixture(autouse=True)
def _quick_stream(settings, redis_url: str) -> Iterator[None]:
    settings.REDIS_LOGSTREAM = {"URL": redis_url, "STREAM_HEARTBEAT": 0.2, "STREAM_MAX_AGE": 30.0}
    yield
    hubs.reset()


def limit(settings, **values: object) -> None:
    settings.REDIS_LOGSTREAM = {
        **settings.REDIS_LOGSTREAM,
        **{name.upper(): value for name, value in values.items()},
    }


def add(client: redis.Redis, *messages: str) -> list[str]:
    return [
        client.xadd(KEY, {"data": json.dumps({"message": m, "level": "INFO"})}).decode()
        for m in messages
    ]


def token_url(query: str = "") -> str:
    return f"{STREAM}?token={make_stream_token(JOB, max_age=60)}{query}"


def read_all(response, stop=lambda e: False) -> list[Event]:
    """Every event of a response until it ends (or one satisfies ``stop``)."""
    events: list[Event] = []
    for chunk in response.streaming_content:
        events += parse_events(chunk)
        if any(stop(e) for e in events):
            break
    response.close()
    return events


def messages(events: list[Event]) -> list[str]:
    return [e.json["message"] for e in events if e.event == "log"]


# -- a viewer that falls behind ----------------------------------------------


def test_an_inbox_is_capped_in_bytes_and_emptied_when_the_viewer_is_cut_off():
    subscription = Subscription(follower=None, max_bytes=1000)  # type: ignore[arg-type]
    subscription.push([((1, 0), b"x" * 600)])
    assert subscription.size == 600 and not subscription.done
    subscription.push([((1, 1), b"x" * 600)])
    assert subscription.done and subscription.size == 0 and subscription.take() == []


def test_a_viewer_that_keeps_up_takes_a_batch_larger_than_its_inbox():
    subscription = Subscription(follower=None, max_bytes=1000)  # type: ignore[arg-type]
    subscription.push([((1, n), b"x" * 600) for n in range(5)])  # one read: 3,000 bytes
    assert not subscription.done and subscription.size == 3000
    assert len(subscription.take()) == 5
    subscription.push([((2, n), b"x" * 600) for n in range(5)])
    assert not subscription.done
    subscription.push([((3, 0), b"x")])  # while 3,000 bytes wait: cut off
    assert subscription.done and subscription.size == 0


def test_a_viewer_that_falls_behind_is_told_and_its_response_ends(redis_client, settings):
    limit(settings, stream_inbox_bytes=64 * 1024)  # the smallest allowed
    response = Client().get(token_url("&history=0"))
    chunks = iter(response.streaming_content)
    events: list[Event] = []
    while not any(e.event == "ready" for e in events):
        events += parse_events(next(chunks))
    hub = hubs.get_hub()
    (follower,) = hub.followers.values()
    (subscription,) = follower.subscribers
    add(redis_client, *("y" * 30_000 for _ in range(3)))  # 90 KB while the viewer is not reading
    wait_for(lambda: subscription.size > 0 or subscription.overflowed)
    add(redis_client, *("y" * 30_000 for _ in range(3)))  # 90 KB more: over 64 KiB waiting
    wait_for(lambda: subscription.overflowed)
    assert subscription.size == 0  # let go at once, not when the response ends
    rest = [e for chunk in chunks for e in parse_events(chunk)]
    status = [e.json for e in rest if e.event == "status"]
    assert len(status) == 1 and status[0]["behind"] is True
    assert rest[-1].retry == 500  # come back at once (and resume from the last id)
    response.close()


def test_a_stale_viewer_is_dropped_its_inbox_emptied_and_its_response_ended(redis_client):
    hub = hubs.get_hub()
    subscription = hub.subscribe(JOB, stale_after=0.3)
    ended = []
    subscription.on_stale = lambda: ended.append(True)
    subscription.push([((1, 0), b"x" * 100)])
    wait_for(lambda: ended, timeout=5)
    assert subscription.closed and subscription.size == 0 and subscription.take() == []


# -- resume from before the history -------------------------------------------


def test_a_resume_older_than_the_history_replays_a_bounded_number_and_says_so(
    redis_client, settings
):
    limit(settings, stream_replay_max=50)
    ids = add(redis_client, *(f"m{i}" for i in range(300)))
    redis_client.xtrim(KEY, maxlen=200, approximate=False)  # m0..m99 are gone
    events = read_all(
        Client().get(token_url(), HTTP_LAST_EVENT_ID=ids[10]), stop=lambda e: e.event == "ready"
    )
    assert messages(events) == [f"m{i}" for i in range(250, 300)]
    (status,) = [e.json for e in events if e.event == "status"]
    assert status["skipped"] == 150 and "150" in status["message"]
    assert events[-1].event == "ready" and events[-1].id == ids[-1]


def test_a_resume_from_0_0_replays_the_stream_from_its_start(redis_client, settings):
    limit(settings, stream_replay_max=50)
    add(redis_client, *(f"m{i}" for i in range(30)))
    events = read_all(
        Client().get(token_url("&last_event_id=0-0")), stop=lambda e: e.event == "ready"
    )
    assert messages(events) == [f"m{i}" for i in range(30)]
    assert not [e for e in events if e.event == "status"]


def test_a_resume_inside_the_history_still_gets_everything_after_it(redis_client, settings):
    limit(settings, stream_replay_max=50)
    ids = add(redis_client, *(f"m{i}" for i in range(300)))
    events = read_all(
        Client().get(token_url(), HTTP_LAST_EVENT_ID=ids[9]), stop=lambda e: e.event == "ready"
    )
    assert messages(events) == [f"m{i}" for i in range(10, 300)]


# -- streams per user ---------------------------------------------------------


def test_a_user_holds_a_bounded_number_of_streams_then_gets_429(
    redis_client, settings, django_user_model
):
    limit(settings, stream_user_limit=2)
    user = django_user_model.objects.create_user("carol", password="x")
    client = Client()
    client.force_login(user)
    first, second = client.get(STREAM), client.get(STREAM)
    assert (first.status_code, second.status_code) == (200, 200)
    third = client.get(STREAM)
    assert third.status_code == 429
    assert "Too many open log streams" in third.content.decode()
    assert "STREAM_USER_LIMIT" in third.content.decode()
    first.close()  # a closed tab gives its place back
    fourth = client.get(STREAM)
    assert fourth.status_code == 200
    second.close()
    fourth.close()
    assert USER_STREAMS.held(user.pk) == 0


def test_viewers_by_token_are_not_capped(redis_client, settings):
    limit(settings, stream_user_limit=1)
    responses = [Client().get(token_url()) for _ in range(5)]
    try:
        assert [r.status_code for r in responses] == [200] * 5
    finally:
        for response in responses:
            response.close()


def test_a_stream_that_could_not_open_gives_its_place_back(settings, django_user_model):
    limit(settings, stream_user_limit=1, url="redis://127.0.0.1:1/0")
    user = django_user_model.objects.create_user("dave", password="x")
    client = Client()
    client.force_login(user)
    assert client.get(STREAM).status_code == 503
    assert USER_STREAMS.held(user.pk) == 0


# -- odd input ----------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "&history=" + "9" * 5000,
        "&last_event_id=18446744073709551615-18446744073709551615",
    ],
)
def test_odd_numbers_are_400_not_500_or_503(redis_client, query):
    response = Client(raise_request_exception=False).get(token_url(query))
    assert response.status_code == 400


def test_an_empty_token_means_no_token(redis_client, django_user_model):
    user = django_user_model.objects.create_user("erin", password="x")
    signed_in = Client()
    signed_in.force_login(user)
    response = signed_in.get(f"{STREAM}?token=")
    assert response.status_code == 200  # her own stream, as without ?token
    response.close()
    page = Client().get("/logs/?token=")
    assert page.status_code == 302 and "login" in page["Location"]


@pytest.mark.parametrize("max_age", [math.inf, math.nan])
def test_a_token_that_never_expires_is_refused(max_age):
    with pytest.raises(ValueError, match="finite"):
        make_stream_token(JOB, max_age=max_age)


def test_a_reader_without_xlen_still_bounds_the_replay(settings, own_redis):
    """The documented least-privilege reader has no XLEN: the count is then unknown."""
    admin = redis.Redis.from_url(own_redis.url)
    admin.execute_command("ACL", "SETUSER", "viewer", "reset", "on", ">pw", "~*", "+@all", "-xlen")
    ids = [admin.xadd(KEY, {"data": json.dumps({"message": f"m{i}"})}).decode() for i in range(30)]
    admin.xtrim(KEY, maxlen=20, approximate=False)
    url = own_redis.url.replace("redis://", "redis://viewer:pw@", 1)
    limit(settings, url=url, stream_replay_max=5)
    events = read_all(
        Client().get(token_url(), HTTP_LAST_EVENT_ID=ids[0]), stop=lambda e: e.event == "ready"
    )
    assert messages(events) == [f"m{i}" for i in range(25, 30)]
    (status,) = [e.json for e in events if e.event == "status"]
    assert status["skipped"] is None and "Older records" in status["message"]
    admin.close()
