"""The testproject's demo job: started from a page, it logs under the user."""

from __future__ import annotations

import logging

import pytest
import redis

from redis_logstream import RedisLogHandler
from support.helpers import messages, wait_for
from testproject import jobs

pytestmark = pytest.mark.django_db


def site_handler() -> RedisLogHandler:
    return next(h for h in logging.getLogger().handlers if isinstance(h, RedisLogHandler))


def test_a_signed_in_user_starts_a_job_that_logs_under_their_context(
    client, django_user_model, redis_client: redis.Redis, monkeypatch
) -> None:
    monkeypatch.setattr(jobs, "send_task_if_worker", lambda rows: None)
    started = []
    original = jobs.start_thread
    monkeypatch.setattr(
        jobs, "start_thread", lambda rows: started.append(original(rows, steps=2, pause=0.01))
    )
    client.force_login(django_user_model.objects.create_user("alice", password="x"))
    answer = client.post("/jobs/start/", {"rows": "100"}).json()
    assert answer == {
        "context": "User.alice",
        "celery_task": None,
        "watch": "python manage.py tail_logs User.alice -f",
        "console": "/logs/",
    }
    started[0].join(5)
    assert site_handler().flush(5)
    got = wait_for(lambda: messages(redis_client, "stream:logs:User.alice"))
    assert got[-4:] == [
        "export of 100 rows started",
        "progress  50% (50/100 rows)",
        "progress 100% (100/100 rows)",
        "export of 100 rows finished",
    ]


def test_starting_a_job_needs_a_signed_in_user(client) -> None:
    response = client.post("/jobs/start/")
    assert response.status_code == 302 and "/login" in response["Location"]


def test_the_home_page_tells_a_signed_in_user_how_to_follow_their_jobs(
    client, django_user_model
) -> None:
    client.force_login(django_user_model.objects.create_user("bob", password="x"))
    page = client.get("/").content.decode()
    assert "tail_logs User.bob -f" in page
