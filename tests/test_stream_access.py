"""Who may watch what: the authorization matrix of the stream and the console page.

Each cell is a test. The stream answers 403 (never a login redirect: an
EventSource cannot follow one); the page sends anonymous visitors to log in.
"""

from __future__ import annotations

import json
import time

import pytest
import redis
from django.contrib.auth.models import Permission
from django.test import Client

from redis_logstream.console import hubs, tokens
from redis_logstream.console.tokens import make_stream_token, read_stream_token
from redis_logstream.naming import Names
from support.sse_client import parse_events

pytestmark = pytest.mark.django_db

STREAM = "/logs/stream/"
PAGE = "/logs/"


@pytest.fixture(autouse=True)
def _fresh_hub(redis_url: str):
    yield
    hubs.reset()


@pytest.fixture
def seeded(redis_client: redis.Redis) -> redis.Redis:
    """One record in alice's, bob's, a job's and the global stream."""
    names = Names()
    for context in ("User.alice", "User.bob", "job_7", None):
        record = {"message": f"hello from {context or 'global'}", "level": "INFO", "levelno": 20}
        redis_client.xadd(names.stream(context), {"data": json.dumps(record)})
    return redis_client


def _client(django_user_model, username: str | None, **flags) -> Client:
    client = Client()
    if username is not None:
        user = django_user_model.objects.create_user(username, password="x", **flags)
        client.force_login(user)
    return client


@pytest.fixture
def anonymous() -> Client:
    return Client()


@pytest.fixture
def alice(django_user_model) -> Client:
    return _client(django_user_model, "alice")


@pytest.fixture
def staff(django_user_model) -> Client:
    return _client(django_user_model, "sam", is_staff=True)


@pytest.fixture
def oncall(django_user_model) -> Client:
    """Not staff, but holds redis_logstream.view_all_logs."""
    client = Client()
    user = django_user_model.objects.create_user("olga", password="x")
    user.user_permissions.add(Permission.objects.get(codename="view_all_logs"))
    client.force_login(user)
    return client


def opened(client: Client, url: str, **headers: str) -> tuple[int, list[str]]:
    """Status and, for a stream, the messages of its history."""
    response = client.get(url, **headers)
    try:
        if response.status_code != 200 or not response.streaming:
            return response.status_code, []
        body = next(iter(response.streaming_content))
        return 200, [e.json["message"] for e in parse_events(body) if e.event == "log"]
    finally:
        response.close()


# -- anonymous --------------------------------------------------------------


def test_anonymous_gets_403_from_the_stream(anonymous, seeded):
    assert opened(anonymous, STREAM)[0] == 403
    assert opened(anonymous, STREAM + "?context=User.alice")[0] == 403
    assert opened(anonymous, STREAM + "?context=global")[0] == 403


def test_anonymous_is_sent_to_login_by_the_page(anonymous):
    response = anonymous.get(PAGE + "?context=global")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")
    assert response["Location"].endswith("next=/logs/%3Fcontext%3Dglobal")


# -- a signed-in user ---------------------------------------------------------


def test_a_user_watches_their_own_context_by_default(alice, seeded):
    assert opened(alice, STREAM) == (200, ["hello from User.alice"])


def test_a_user_may_name_their_own_context(alice, seeded):
    assert opened(alice, STREAM + "?context=User.alice") == (200, ["hello from User.alice"])


def test_a_user_may_not_watch_another_users_context(alice, seeded):
    assert opened(alice, STREAM + "?context=User.bob")[0] == 403
    assert opened(alice, PAGE + "?context=User.bob")[0] == 403


def test_a_user_may_not_watch_the_whole_site(alice, seeded):
    assert opened(alice, STREAM + "?context=global")[0] == 403
    assert opened(alice, PAGE + "?context=global")[0] == 403


def test_a_user_sees_the_console_page_of_their_context(alice):
    response = alice.get(PAGE)
    assert response.status_code == 200
    html = response.content.decode()
    assert 'data-stream-url="/logs/stream/?context=User.alice"' in html
    assert 'name="context"' not in html  # no context switcher for non-staff


# -- staff and the view_all_logs permission -----------------------------------


def test_staff_watch_any_context_and_the_whole_site(staff, seeded):
    assert opened(staff, STREAM + "?context=User.bob") == (200, ["hello from User.bob"])
    assert opened(staff, STREAM + "?context=global") == (200, ["hello from global"])
    page = staff.get(PAGE + "?context=global")
    assert page.status_code == 200
    assert 'name="context"' in page.content.decode()


def test_the_view_all_logs_permission_works_like_staff(oncall, seeded):
    assert opened(oncall, STREAM + "?context=User.alice") == (200, ["hello from User.alice"])
    assert opened(oncall, STREAM + "?context=global") == (200, ["hello from global"])


def test_an_inactive_staff_member_sees_nothing(django_user_model, seeded):
    user = django_user_model.objects.create_user("gone", password="x", is_staff=True)
    client = Client()
    client.force_login(user)
    user.is_active = False
    user.save()
    assert opened(client, STREAM + "?context=global")[0] == 403


# -- tokens -------------------------------------------------------------------


def test_a_token_lets_anyone_watch_its_context(anonymous, seeded):
    token = make_stream_token("job_7", max_age=60)
    assert opened(anonymous, f"{STREAM}?token={token}") == (200, ["hello from job_7"])
    assert opened(anonymous, f"{PAGE}?token={token}")[0] == 200


def test_a_token_grants_its_context_only(anonymous, alice, seeded):
    token = make_stream_token("job_7", max_age=60)
    assert opened(anonymous, f"{STREAM}?token={token}&context=User.alice")[0] == 403
    assert opened(alice, f"{STREAM}?token={token}&context=global")[0] == 403


def test_a_tampered_token_is_403(anonymous, seeded):
    token = make_stream_token("job_7", max_age=60)
    forged = token.replace(token[5], "A" if token[5] != "A" else "B", 1)
    assert opened(anonymous, f"{STREAM}?token={forged}")[0] == 403
    assert opened(anonymous, f"{PAGE}?token={forged}")[0] == 403


def test_an_expired_token_is_403(anonymous, seeded, monkeypatch):
    token = make_stream_token("job_7", max_age=5)
    later = time.time() + 6
    monkeypatch.setattr(tokens.time, "time", lambda: later)
    assert opened(anonymous, f"{STREAM}?token={token}")[0] == 403


def test_a_token_made_with_another_secret_key_is_403(anonymous, seeded, settings):
    token = make_stream_token("job_7", max_age=60)
    settings.SECRET_KEY = "another-secret-key-of-at-least-fifty-characters-0123456789"
    assert opened(anonymous, f"{STREAM}?token={token}")[0] == 403


def test_tokens_check_their_arguments():
    with pytest.raises(ValueError, match="max_age"):
        make_stream_token("job_7", max_age=0)
    with pytest.raises(ValueError):
        make_stream_token("x" * 500)
    assert read_stream_token(make_stream_token(None)) is None


# -- bad requests ---------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    ["?context=" + "x" * 500, "?history=lots", "?last_event_id=yesterday"],
)
def test_malformed_parameters_are_400(staff, seeded, query):
    assert opened(staff, STREAM + query)[0] == 400


def test_a_malformed_last_event_id_header_is_400(staff, seeded):
    assert opened(staff, STREAM, HTTP_LAST_EVENT_ID="not-an-id")[0] == 400


def test_the_stream_accepts_get_only(staff):
    assert staff.post(STREAM).status_code == 405


def test_an_inactive_user_is_refused_even_by_a_backend_that_lets_them_in(
    django_user_model, seeded, settings
):
    settings.AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.AllowAllUsersModelBackend"]
    user = django_user_model.objects.create_user("dormant", password="x", is_active=False)
    client = Client()
    client.force_login(user)
    assert opened(client, STREAM)[0] == 403


@pytest.mark.django_db(transaction=True)
def test_a_stream_gives_back_its_database_connection(django_user_model, seeded, monkeypatch):
    """Hundreds of viewers must not hold hundreds of idle database connections.

    (The test database is SQLite in memory, whose close() keeps it open; so
    the test sees that the view closes it, not that it is gone.)
    """
    from django.db import connection

    client = _client(django_user_model, "alice")
    closed = []
    monkeypatch.setattr(connection, "close", lambda: closed.append(True))
    response = client.get(STREAM)
    try:
        assert closed  # before the first event is sent
        assert next(iter(response.streaming_content))
    finally:
        response.close()


def test_the_console_page_links_its_stylesheet_once(alice):
    page = alice.get(PAGE).content.decode()
    assert page.count("redis_logstream/console.css") == 1
    assert page.count("redis_logstream/console.js") == 1


def test_the_sign_in_page_wears_the_console_look(anonymous):
    page = anonymous.get("/accounts/login/").content.decode()
    assert "redis_logstream/console.css" in page
    assert 'class="rls-page"' in page and 'class="rls-form"' in page
