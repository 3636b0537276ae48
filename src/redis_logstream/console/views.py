"""The live console: an SSE stream of one context and the page that shows it.

Mount them with ``path("logs/", include("redis_logstream.urls"))``; who may
watch what is decided in :mod:`.access`, the protocol in :mod:`.sse`.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable
from urllib.parse import urlencode

import redis
from django.contrib.auth.views import redirect_to_login
from django.core.exceptions import BadRequest, PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.db import connections, transaction
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_safe

from redis_logstream.conf import site_setting
from redis_logstream.console import hubs
from redis_logstream.console.access import GLOBAL, USER_STREAMS, Grant, grant_for
from redis_logstream.console.sse import RETRY_MS, EventStream
from redis_logstream.reading.reader import parse_entry_id

__all__ = ["console", "stream"]

#: The largest stream id: Redis cannot read "after" it.
_LAST_ID = f"{2**64 - 1}-{2**64 - 1}"
#: ``?history=`` longer than this is refused (int() of thousands of digits
#: is slow, then an error); the site's limit caps it anyway.
_HISTORY_DIGITS = 18


def _history(request: HttpRequest) -> int:
    """``?history=N`` may lower the site's STREAM_HISTORY, never raise it."""
    limit = site_setting("stream_history")
    text = request.GET.get("history")
    if text is None:
        return limit
    if not (text.isascii() and text.isdigit()):
        raise BadRequest("history must be a whole number of records")
    if len(text) > _HISTORY_DIGITS:
        raise BadRequest(f"history must have at most {_HISTORY_DIGITS} digits")
    return min(int(text), limit)


def _resume_after(request: HttpRequest) -> str | None:
    """``Last-Event-ID`` (the browser's reconnect), else ``?last_event_id=``
    (a page that had to open a new EventSource)."""
    text = request.headers.get("Last-Event-ID") or request.GET.get("last_event_id")
    if not text:
        return None
    try:
        entry_id = parse_entry_id(text)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None
    if entry_id == _LAST_ID:
        raise BadRequest(f"{entry_id} is the last possible stream id: nothing can follow it")
    return entry_id


def _too_many(limit: int) -> HttpResponse:
    response = HttpResponse(
        f"Too many open log streams: this user already watches {limit} in this server "
        "process (STREAM_USER_LIMIT). Close another console tab or window, then retry.\n",
        status=429,
        content_type="text/plain; charset=utf-8",
    )
    response["Retry-After"] = "10"
    return response


def _socket_closer(request: HttpRequest) -> Callable[[], None] | None:
    """How to end a WSGI response whose writes are stuck: shut its socket
    (gunicorn shows it to the application; other WSGI servers do not)."""
    sock = request.META.get("gunicorn.socket")
    if not isinstance(sock, socket.socket):
        return None

    def shut() -> None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    return shut


@never_cache
@require_GET
@transaction.non_atomic_requests
def stream(request: HttpRequest) -> HttpResponse:
    """``text/event-stream`` of one context: history (or resume), then live."""
    grant = grant_for(request)
    history, resume_after = _history(request), _resume_after(request)
    release = None
    if grant.token is None:  # a signed-in user: capped (viewers by token are not)
        limit = site_setting("stream_user_limit")
        release = USER_STREAMS.take(request.user.pk, limit)
        if release is None:
            return _too_many(limit)
    events = EventStream(
        hubs.get_hub(),
        hubs.get_reader(),
        grant.context,
        history=history,
        resume_after=resume_after,
        heartbeat=site_setting("stream_heartbeat"),
        max_age=site_setting("stream_max_age"),
        inbox_bytes=site_setting("stream_inbox_bytes"),
        write_timeout=site_setting("stream_write_timeout"),
        replay_max=site_setting("stream_replay_max"),
        on_close=release,
        abort=None if isinstance(request, ASGIRequest) else _socket_closer(request),
    )
    try:
        events.open()
    except redis.RedisError:
        events.close()
        response = HttpResponse(
            "The log stream is unavailable (Redis cannot be reached); retry shortly.\n",
            status=503,
            content_type="text/plain; charset=utf-8",
        )
        response["Retry-After"] = str(RETRY_MS // 1000)
        return response
    except BaseException:
        events.close()
        raise
    body = events.async_body() if isinstance(request, ASGIRequest) else events.sync_body()
    response = StreamingHttpResponse(body, content_type="text/event-stream; charset=utf-8")
    # Proxies (nginx) must pass each event on at once, not buffer the body.
    response["X-Accel-Buffering"] = "no"
    # Nor may GZipMiddleware compress it: its compressor never flushes, so
    # events would wait in it.  It only compresses what the client accepts.
    request.META["HTTP_ACCEPT_ENCODING"] = "identity"
    _release_database(request)
    return response


def _release_database(request: HttpRequest) -> None:
    """Give back the database connections the request used (session, user).

    Django closes them when the request ends, which for a stream is when
    the viewer leaves: hundreds of viewers would otherwise hold hundreds of
    connections doing nothing.  Not inside a transaction (ATOMIC_REQUESTS,
    tests): that one is not ours to end.
    """
    for connection in connections.all(initialized_only=True):
        if not connection.in_atomic_block:
            connection.close()


def stream_url(grant: Grant) -> str:
    """The stream view's URL for what ``grant`` allows."""
    if grant.token is not None:
        query = {"token": grant.token}
    else:
        query = {"context": GLOBAL if grant.context is None else grant.context}
    return f"{reverse('redis_logstream:stream')}?{urlencode(query)}"


@never_cache
@require_safe
def console(request: HttpRequest) -> HttpResponse:
    """The console page for the same query as :func:`stream`."""
    try:
        grant = grant_for(request)
    except PermissionDenied:
        if not request.GET.get("token") and not request.user.is_authenticated:
            return redirect_to_login(request.get_full_path())
        raise
    title = "Whole site" if grant.context is None else grant.context
    return render(
        request,
        "redis_logstream/console.html",
        {
            "stream_url": stream_url(grant),
            "title": f"Logs: {title}",
            "firehose": grant.context is None,
            "contexts_form": grant.view_all,
            "log_context": grant.context,
        },
    )
