"""Streams per signed-in user, on real servers: threads (gunicorn, runserver)
and coroutines (uvicorn) share one count per process.

A user signs in through the login form, opens STREAM_USER_LIMIT streams at
once (8 by default), is refused the next with a 429 that says why, and gets
a place again once one of them is closed.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import django
import httpx
import pytest

from support.servers import RedisServer
from support.sse_client import SSEClient
from support.web_servers import KINDS, WebServer

LIMIT = 8  # the default STREAM_USER_LIMIT
MAX_AGE = 4.0  # stream_settings.STREAM_MAX_AGE


@pytest.fixture(scope="module", params=KINDS)
def server(request, redis_server: RedisServer) -> Iterator[WebServer]:
    web = WebServer(request.param, redis_server.url, users={"frank": "secret"})
    yield web
    web.stop()


def session_cookie(server: WebServer) -> str:
    with httpx.Client(base_url=server.url, timeout=10) as http:
        form = http.get("/accounts/login/")
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text).group(1)
        answer = http.post(
            "/accounts/login/",
            data={"username": "frank", "password": "secret", "csrfmiddlewaretoken": token},
        )
        assert answer.status_code == 302, answer.text
        return "; ".join(f"{name}={value}" for name, value in http.cookies.items())


def test_a_user_holds_at_most_the_limit_of_streams_per_process(server):
    cookie = session_cookie(server)
    url = f"{server.url}/logs/stream/?history=0"
    open_ones = [SSEClient(url, headers={"Cookie": cookie}) for _ in range(LIMIT)]
    try:
        for client in open_ones:
            assert client.status == 200
            client.wait_for(lambda e: e.event == "ready")
        with SSEClient(url, headers={"Cookie": cookie}) as refused:
            assert refused.status == 429
            refused.events(1.0)
            assert b"Too many open log streams" in refused.body
        open_ones.pop().close()
        # The place comes back when the server sees the client go (Django
        # 4.2 under ASGI cannot: at the end of the response's age instead).
        blind = server.kind == "uvicorn" and django.VERSION < (5, 0)
        deadline = time.monotonic() + (MAX_AGE + 3 if blind else 3)
        while True:
            with SSEClient(url, headers={"Cookie": cookie}) as again:
                if again.status == 200 or time.monotonic() > deadline:
                    assert again.status == 200
                    break
            time.sleep(0.2)
    finally:
        for client in open_ones:
            client.close()
