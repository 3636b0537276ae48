"""A user's log context is theirs alone: deleted and renamed users leave no
history for the next owner of the name, and contexts may be named by
primary key instead.  Real users in the test database, a real Redis.
"""

from __future__ import annotations

import json
import logging

import pytest
import redis
from django.test import Client, RequestFactory

from redis_logstream import get_user_context
from redis_logstream.console import hubs
from redis_logstream.console.access import grant_for
from redis_logstream.context import INTERNAL, user_id_context
from redis_logstream.middleware import request_context
from redis_logstream.naming import Names
from support.servers import free_port
from support.sse_client import parse_events

pytestmark = pytest.mark.django_db

NAMES = Names()


@pytest.fixture(autouse=True)
def _fresh_hub(redis_url: str):
    yield
    hubs.reset()


@pytest.fixture
def commit(django_capture_on_commit_callbacks):
    """Run what waits for the commit of the test's (never committed) transaction."""
    return lambda: django_capture_on_commit_callbacks(execute=True)


def seed(client: redis.Redis, context: str, *messages: str) -> None:
    """Records of ``context`` in its stream, the global one and a dead-letter stream."""
    for message in messages:
        data = json.dumps({"message": message, "level": "ERROR", "levelno": 40, "context": context})
        client.xadd(NAMES.stream(context), {"data": data})
        entry_id = client.xadd(NAMES.global_stream, {"data": data})
        client.xadd(
            NAMES.dead_letter_prefix + "audit",
            {"data": data, "stream": NAMES.global_stream, "id": entry_id, "group": "audit"},
        )


def contexts_in(client: redis.Redis, key: str) -> list[str]:
    return [json.loads(fields[b"data"]).get("context") for _, fields in client.xrange(key)]


def history(user) -> list[str]:
    """The messages ``/logs/stream/`` shows ``user`` first (their own context)."""
    browser = Client()
    browser.force_login(user)
    response = browser.get("/logs/stream/")
    try:
        assert response.status_code == 200
        body = next(iter(response.streaming_content))
        return [event.json["message"] for event in parse_events(body) if event.event == "log"]
    finally:
        response.close()


def test_a_new_user_with_a_deleted_users_name_sees_none_of_the_old_records(
    django_user_model, redis_client: redis.Redis, commit
) -> None:
    carol = django_user_model.objects.create_user("carol", password="x")
    seed(redis_client, "User.carol", "old carol's traceback")
    seed(redis_client, "User.dave", "dave's")
    assert history(carol) == ["old carol's traceback"]

    with commit():
        carol.delete()
    new_carol = django_user_model.objects.create_user("carol", password="y")

    assert history(new_carol) == []
    assert not redis_client.exists("stream:logs:User.carol")
    # Records of other tests' handlers may still land in the global stream.
    left = contexts_in(redis_client, "stream:logs:global")
    assert "User.dave" in left and "User.carol" not in left
    assert contexts_in(redis_client, "stream:logs/dead-letter/audit") == ["User.dave"]
    assert redis_client.xlen("stream:logs:User.dave") == 1


def test_a_rename_deletes_the_old_names_stream(
    django_user_model, redis_client: redis.Redis, commit
) -> None:
    carol = django_user_model.objects.create_user("carol", password="x")
    seed(redis_client, "User.carol", "as carol")
    carol.username = "caroline"
    with commit():
        carol.save()

    assert not redis_client.exists("stream:logs:User.carol")
    assert "User.carol" in contexts_in(redis_client, "stream:logs:global")  # still hers
    assert history(django_user_model.objects.create_user("carol", password="y")) == []


def test_saves_that_cannot_rename_cost_no_query(
    django_user_model, redis_client: redis.Redis, django_assert_num_queries, commit
) -> None:
    carol = django_user_model.objects.create_user("carol", password="x")
    seed(redis_client, "User.carol", "kept")
    with django_assert_num_queries(1), commit():  # the UPDATE alone
        carol.save(update_fields=["last_login"])
    with django_assert_num_queries(2), commit():  # the username read, the UPDATE
        carol.save()
    assert redis_client.xlen("stream:logs:User.carol") == 1


def test_the_site_setting_turns_the_purge_off(
    django_user_model, redis_client: redis.Redis, settings, commit
) -> None:
    settings.REDIS_LOGSTREAM = {**settings.REDIS_LOGSTREAM, "PURGE_USER_CONTEXTS": False}
    carol = django_user_model.objects.create_user("carol", password="x")
    seed(redis_client, "User.carol", "kept")
    carol.username = "caroline"
    with commit():
        carol.save()
        carol.delete()
    assert redis_client.xlen("stream:logs:User.carol") == 1
    assert contexts_in(redis_client, "stream:logs:global").count("User.carol") == 1


def test_a_rolled_back_delete_purges_nothing(
    django_user_model, redis_client: redis.Redis, commit
) -> None:
    from django.db import transaction

    carol = django_user_model.objects.create_user("carol", password="x")
    seed(redis_client, "User.carol", "kept")
    with commit(), pytest.raises(RuntimeError), transaction.atomic():
        carol.delete()
        raise RuntimeError("rolled back")
    assert redis_client.xlen("stream:logs:User.carol") == 1


class ContextSeen(logging.Handler):
    """Keeps each record with the log context current when it was emitted."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[logging.LogRecord, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record, user_id_context.get()))


def test_redis_down_never_fails_the_delete_and_says_the_purge_failed(
    django_user_model, settings, commit
) -> None:
    settings.REDIS_LOGSTREAM = {"URL": f"redis://127.0.0.1:{free_port()}/0"}
    carol = django_user_model.objects.create_user("carol", password="x")
    seen = ContextSeen()
    logger = logging.getLogger("redis_logstream")
    logger.addHandler(seen)
    try:
        with commit():
            carol.delete()
    finally:
        logger.removeHandler(seen)

    assert not django_user_model.objects.filter(username="carol").exists()
    warnings = [(r, c) for r, c in seen.seen if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    record, context = warnings[0]
    assert record.getMessage().startswith(
        "The log records of User.carol were NOT purged after the user was deleted: "
        "cannot reach Redis at 127.0.0.1:"
    )
    assert record.getMessage().endswith("manage.py purge_log_context User.carol")
    assert context is INTERNAL  # every RedisLogHandler drops it: it cannot feed Redis


def test_contexts_named_by_primary_key_agree_everywhere(
    django_user_model, redis_client: redis.Redis, settings, commit
) -> None:
    settings.REDIS_LOGSTREAM = {**settings.REDIS_LOGSTREAM, "USER_CONTEXT_BY_PK": True}
    carol = django_user_model.objects.create_user("carol", password="x")
    own = f"User.{carol.pk}"
    assert get_user_context(carol) == own
    request = RequestFactory().get("/logs/stream/")
    request.user = carol
    assert request_context(carol) == own  # the middleware's context
    assert grant_for(request).context == own  # the console's access rule
    seed(redis_client, own, "by pk")
    assert history(carol) == ["by pk"]

    carol.username = "caroline"  # a rename changes nothing and reads nothing
    carol.save()
    assert history(carol) == ["by pk"]
    with commit():
        carol.delete()
    assert not redis_client.exists(f"stream:logs:{own}")
    assert own not in contexts_in(redis_client, "stream:logs:global")
    with pytest.raises(ValueError, match="no primary key"):
        get_user_context(django_user_model(username="unsaved"))
