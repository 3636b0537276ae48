"""Resuming as a standard EventSource does, from a viewer that saw no record yet.

The client is ``httpx-sse`` (an EventSource implementation the project did
not write), talking to runserver, gunicorn and uvicorn through a TCP proxy
that cuts the connection. Like a browser it keeps the last event id it was
given, whichever event carried it (``ready`` included), and sends it as
``Last-Event-ID`` when it reconnects. Records are logged with the handler
while the viewer is away; every one of them must arrive, once, in order.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest
from httpx_sse import connect_sse

from redis_logstream import log_context
from redis_logstream.console.tokens import make_stream_token
from support.helpers import fresh_logger
from support.servers import RedisServer
from support.tcp_proxy import TcpProxy
from support.web_servers import KINDS, WebServer

MAX_AGE = 4.0  # stream_settings.STREAM_MAX_AGE: an idle response ends then


@pytest.fixture(scope="module", params=KINDS)
def server(request, redis_server: RedisServer) -> Iterator[WebServer]:
    web = WebServer(request.param, redis_server.url)
    yield web
    web.stop()


@pytest.fixture
def proxy(server: WebServer) -> Iterator[TcpProxy]:
    cut = TcpProxy(server.port)
    yield cut
    cut.close()


class Viewer:
    """An EventSource's state across connections: its URL and last event id."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.last_id = ""  # the spec's "last event ID buffer"
        self.messages: list[str] = []
        self.ready_ids: list[str] = []

    def connect(
        self, *, until_ready: bool = False, cut: Callable[[], object] | None = None, want: int = 0
    ) -> None:
        """One connection: read until ``ready`` (then leave, or ``cut`` the
        connection and read on until it breaks), or until ``want`` records
        arrived or the server ended the response."""
        headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
        timeout = httpx.Timeout(MAX_AGE + 6)
        with (
            httpx.Client(timeout=timeout) as http,
            connect_sse(http, "GET", self.url, headers=headers) as source,
        ):
            assert source.response.status_code == 200
            try:
                for sse in source.iter_sse():
                    if sse.id:
                        self.last_id = sse.id
                    if sse.event == "ready":
                        self.ready_ids.append(sse.id)
                        if cut is not None:
                            cut()
                        elif until_ready:
                            return
                    elif sse.event == "log":
                        self.messages.append(sse.json()["message"])
                        if want and len(self.messages) >= want:
                            return
            except (httpx.ReadError, httpx.RemoteProtocolError):
                return  # cut: an EventSource reconnects


def log(url: str, handlers, context: str, messages: list[str]) -> None:
    handler = handlers(url=url)
    logger = fresh_logger(handler)
    with log_context(context):
        for message in messages:
            logger.info(message)
    assert handler.flush(10)


@pytest.mark.parametrize(
    ("query", "before", "during"),
    [
        ("&history=0", 5, 60),  # history off: the records already there are not shown
        ("", 0, 150),  # empty stream, a burst larger than the history (100)
    ],
)
def test_a_viewer_that_saw_no_record_resumes_from_ready_with_no_gap(
    server, proxy, redis_server, handlers, query, before, during
):
    job = f"job_{uuid.uuid4().hex}"
    token = make_stream_token(job, max_age=600)
    log(redis_server.url, handlers, job, [f"before {i}" for i in range(before)])
    viewer = Viewer(f"{proxy.url}/logs/stream/?token={token}{query}")

    viewer.connect(cut=proxy.drop_all)  # the connection breaks right after ready
    assert viewer.messages == [] and proxy.dropped == 1

    written = [f"during {i}" for i in range(during)]
    log(redis_server.url, handlers, job, written)  # nobody is watching now

    viewer.connect(want=during)  # as EventSource: Last-Event-ID = ready's id
    lost = [m for m in written if m not in viewer.messages]
    assert (len(lost), viewer.messages) == (0, written), f"lost {len(lost)} of {during}"
    assert viewer.ready_ids[0] != ""  # what it resumed from


def test_ready_carries_the_last_id_of_the_history_or_0_0(server, redis_server, handlers):
    job = f"job_{uuid.uuid4().hex}"
    token = make_stream_token(job, max_age=600)
    empty = Viewer(f"{server.url}/logs/stream/?token={token}")
    empty.connect(until_ready=True)
    assert empty.ready_ids == ["0-0"]

    log(redis_server.url, handlers, job, ["one", "two"])
    full = Viewer(f"{server.url}/logs/stream/?token={token}")
    full.connect(until_ready=True)
    assert full.messages == ["one", "two"]
    history_off = Viewer(f"{server.url}/logs/stream/?token={token}&history=0")
    history_off.connect(until_ready=True)
    assert full.ready_ids == history_off.ready_ids != ["0-0"]
