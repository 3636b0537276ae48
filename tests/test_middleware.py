"""LogContextMiddleware: a signed-in user's requests log under their context."""

from __future__ import annotations

import io
import logging

import pytest
import redis
from asgiref.sync import async_to_sync
from django.http import FileResponse
from django.test import AsyncClient, Client

from redis_logstream import RedisLogHandler, get_log_context
from redis_logstream.middleware import LogContextMiddleware
from support.helpers import messages

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _urls(settings) -> None:
    settings.ROOT_URLCONF = "support.middleware_urls"


@pytest.fixture
def alice(django_user_model):
    return django_user_model.objects.create_user("alice", password="secret")


@pytest.fixture
def alice_client(client: Client, alice) -> Client:
    client.force_login(alice)
    return client


def shipped(redis_client: redis.Redis, key: str) -> list[str]:
    """What the site's own handler (testproject LOGGING) has stored under ``key``."""
    site = next(h for h in logging.getLogger().handlers if isinstance(h, RedisLogHandler))
    assert site.flush(5)
    return messages(redis_client, key)


def test_a_signed_in_users_request_logs_under_their_context(
    alice_client: Client, redis_client: redis.Redis
) -> None:
    response = alice_client.get("/plain/")
    assert response.content == b"User.alice"
    assert shipped(redis_client, "stream:logs:User.alice") == ["plain view"]
    assert get_log_context() is None  # reset once the response left


def test_an_anonymous_request_gets_no_context(client: Client, redis_client: redis.Redis) -> None:
    response = client.get("/plain/")
    assert response.content == b"-"
    assert "plain view" in shipped(redis_client, "stream:logs:global")
    assert redis_client.keys("stream:logs:User.*") == []


def test_the_context_is_reset_when_the_view_raises(
    alice_client: Client, redis_client: redis.Redis
) -> None:
    with pytest.raises(RuntimeError, match="view failed"):
        alice_client.get("/failing/")
    assert get_log_context() is None
    # Django logs the error inside the middleware chain: the user sees it too.
    got = shipped(redis_client, "stream:logs:User.alice")
    assert got[0] == "about to fail"
    assert got[1].startswith("Internal Server Error: /failing/")


def test_a_streaming_views_generator_logs_under_the_users_context(
    alice_client: Client, redis_client: redis.Redis
) -> None:
    response = alice_client.get("/streaming/")
    assert get_log_context() is None  # not leaked while the response waits
    body = b"".join(response.streaming_content)
    assert body == b"User.alice\n" * 3
    assert get_log_context() is None
    assert shipped(redis_client, "stream:logs:User.alice") == ["chunk 0", "chunk 1", "chunk 2"]


def test_an_async_view_served_by_the_sync_stack_gets_the_context(
    alice_client: Client, redis_client: redis.Redis
) -> None:
    assert alice_client.get("/async/").content == b"User.alice"
    assert shipped(redis_client, "stream:logs:User.alice") == ["async view"]


def _async_client(logged_in: Client) -> AsyncClient:
    client = AsyncClient()
    client.cookies = logged_in.cookies
    return client


def test_under_asgi_the_middleware_runs_async_and_sets_the_context(
    alice_client: Client, redis_client: redis.Redis
) -> None:
    client = _async_client(alice_client)
    response = async_to_sync(client.get)("/async/")
    assert response.content == b"User.alice"
    assert shipped(redis_client, "stream:logs:User.alice") == ["async view"]


def test_under_asgi_an_async_streaming_response_keeps_the_context_per_chunk(
    alice_client: Client, redis_client: redis.Redis
) -> None:
    client = _async_client(alice_client)

    async def fetch() -> bytes:
        response = await client.get("/streaming-async/")
        return b"".join([chunk async for chunk in response.streaming_content])

    assert async_to_sync(fetch)() == b"User.alice\n" * 3
    assert shipped(redis_client, "stream:logs:User.alice") == [
        "async chunk 0",
        "async chunk 1",
        "async chunk 2",
    ]


def test_under_asgi_an_anonymous_request_gets_no_context(
    redis_client: redis.Redis,
) -> None:
    response = async_to_sync(AsyncClient().get)("/async/")
    assert response.content == b"-"
    assert redis_client.keys("stream:logs:User.*") == []


def test_a_file_download_keeps_the_servers_fast_path(rf, alice) -> None:
    request = rf.get("/download/")
    request.user = alice
    middleware = LogContextMiddleware(lambda r: FileResponse(io.BytesIO(b"body")))
    response = middleware(request)
    assert response.file_to_stream is not None  # not rewrapped: sendfile stays possible
