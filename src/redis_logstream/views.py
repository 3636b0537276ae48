"""The live console: an SSE stream of one context and the page that shows it.

Mount them with ``path("logs/", include("redis_logstream.urls"))``; who may
watch what is decided in :mod:`.access`, the protocol in :mod:`.sse`.
"""

from __future__ import annotations

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

from . import hubs
from .access import GLOBAL, Grant, grant_for
from .conf import site_setting
from .reader import parse_entry_id
from .sse import RETRY_MS, EventStream

__all__ = ["console", "stream"]


def _history(request: HttpRequest) -> int:
    """``?history=N`` may lower the site's STREAM_HISTORY, never raise it."""
    limit = site_setting("stream_history")
    text = request.GET.get("history")
    if text is None:
        return limit
    if not (text.isascii() and text.isdigit()):
        raise BadRequest("history must be a whole number of records")
    return min(int(text), limit)


def _resume_after(request: HttpRequest) -> str | None:
    """``Last-Event-ID`` (the browser's reconnect), else ``?last_event_id=``
    (a page that had to open a new EventSource)."""
    text = request.headers.get("Last-Event-ID") or request.GET.get("last_event_id")
    if not text:
        return None
    try:
        return parse_entry_id(text)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


@never_cache
@require_GET
@transaction.non_atomic_requests
def stream(request: HttpRequest) -> HttpResponse:
    """``text/event-stream`` of one context: history (or resume), then live."""
    grant = grant_for(request)
    history, resume_after = _history(request), _resume_after(request)
    events = EventStream(
        hubs.get_hub(),
        hubs.get_reader(),
        grant.context,
        history=history,
        resume_after=resume_after,
        heartbeat=site_setting("stream_heartbeat"),
        max_age=site_setting("stream_max_age"),
    )
    try:
        events.open()
    except redis.RedisError:
        response = HttpResponse(
            "The log stream is unavailable (Redis cannot be reached); retry shortly.\n",
            status=503,
            content_type="text/plain; charset=utf-8",
        )
        response["Retry-After"] = str(RETRY_MS // 1000)
        return response
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
        if "token" not in request.GET and not request.user.is_authenticated:
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
