"""Views that log, for the middleware tests: sync, async, streaming, failing."""

from __future__ import annotations

import logging

from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.urls import path

from redis_logstream import get_log_context

log = logging.getLogger("tests.views")


def plain(request: HttpRequest) -> HttpResponse:
    log.info("plain view")
    return HttpResponse(get_log_context() or "-")


async def async_view(request: HttpRequest) -> HttpResponse:
    log.info("async view")
    return HttpResponse(get_log_context() or "-")


def streaming(request: HttpRequest) -> StreamingHttpResponse:
    def chunks():
        for i in range(3):
            log.info("chunk %d", i)
            yield f"{get_log_context() or '-'}\n"

    return StreamingHttpResponse(chunks())


def streaming_async(request: HttpRequest) -> StreamingHttpResponse:
    async def chunks():
        for i in range(3):
            log.info("async chunk %d", i)
            yield f"{get_log_context() or '-'}\n"

    return StreamingHttpResponse(chunks())


def failing(request: HttpRequest) -> HttpResponse:
    log.info("about to fail")
    raise RuntimeError("view failed")


urlpatterns = [
    path("plain/", plain),
    path("async/", async_view),
    path("streaming/", streaming),
    path("streaming-async/", streaming_async),
    path("failing/", failing),
]
