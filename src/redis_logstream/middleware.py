"""Every record logged while serving a signed-in user's request belongs to
that user's log context.

Add ``"redis_logstream.middleware.LogContextMiddleware"`` to MIDDLEWARE after
``AuthenticationMiddleware``.  Anonymous requests get no context (their
records go to the global stream only).  The context is reset when the
response leaves, when the view raises, and, for a streaming response, it is
set again around each chunk the server pulls, so a streaming view's
generator logs under the same user even though it runs after this
middleware has returned.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponseBase

from redis_logstream.context import get_user_context, user_id_context

__all__ = ["LogContextMiddleware", "request_context"]


def request_context(user: Any) -> str | None:
    """The context for a request's user: None when anonymous or unnamed."""
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    try:
        return get_user_context(user)
    except ValueError:  # no username, or one too long to name a context
        return None


def _in_context(chunks: Iterable[Any], value: str) -> Iterator[Any]:
    iterator = iter(chunks)
    try:
        while True:
            token = user_id_context.set(value)
            try:
                chunk = next(iterator)
            except StopIteration:
                return
            finally:
                user_id_context.reset(token)
            yield chunk
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()


async def _in_context_async(chunks: AsyncIterator[Any], value: str) -> AsyncIterator[Any]:
    iterator = chunks.__aiter__()
    try:
        while True:
            token = user_id_context.set(value)
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
            finally:
                user_id_context.reset(token)
            yield chunk
    finally:
        aclose = getattr(iterator, "aclose", None)
        if aclose is not None:
            await aclose()


def _wrap_streaming(response: HttpResponseBase, value: str) -> None:
    # A FileResponse is sent by the server (sendfile), not by Python code
    # that could log: wrapping it would only cost the server its fast path.
    if not getattr(response, "streaming", False) or getattr(response, "file_to_stream", None):
        return
    content = response.streaming_content  # type: ignore[attr-defined]
    if hasattr(content, "__aiter__"):
        response.streaming_content = _in_context_async(content, value)  # type: ignore[attr-defined]
    else:
        response.streaming_content = _in_context(content, value)  # type: ignore[attr-defined]


class LogContextMiddleware:
    """Set the log context to ``get_user_context(request.user)`` for the request."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self.is_async:
            return self.__acall__(request)
        value = request_context(getattr(request, "user", None))
        if value is None:
            return self.get_response(request)
        token = user_id_context.set(value)
        try:
            response = self.get_response(request)
        finally:
            user_id_context.reset(token)
        _wrap_streaming(response, value)
        return response

    async def __acall__(self, request: HttpRequest) -> HttpResponseBase:
        value = await _arequest_context(request)
        if value is None:
            return await self.get_response(request)
        token = user_id_context.set(value)
        try:
            response = await self.get_response(request)
        finally:
            user_id_context.reset(token)
        _wrap_streaming(response, value)
        return response


async def _arequest_context(request: HttpRequest) -> str | None:
    """Load the user without blocking the event loop (``auser`` on Django 5)."""
    auser = getattr(request, "auser", None)
    if auser is not None:
        return request_context(await auser())
    if not hasattr(request, "user"):
        return None
    return await sync_to_async(request_context)(request.user)
