"""Celery integration: a task's records go to the stream of whoever sent it.

Why: the person who clicked "export" watches ``stream:logs:User.alice``; the
export runs minutes later in a worker on another machine, where no request
and no user exist. The log context therefore travels with the task message
and is set around the task, and a task sent with no context still gets a
stream of its own that anyone holding the task id can name.

Three Celery signals, connected by :func:`install_if_available` (the Django
app does it in ``ready()`` unless ``REDIS_LOGSTREAM = {"CELERY": False}``):

- ``before_task_publish``: the sender's context goes into the message header
  :data:`CONTEXT_HEADER` (a header the sender set itself is kept).
- ``task_prerun``: the task runs under the header's context; without one,
  under :func:`task_context` of its id, except an eager task (``apply()``,
  ``task_always_eager``), which runs in its caller's thread and so keeps the
  caller's context when there is one.
- ``task_postrun``: the previous context comes back. Celery sends it from a
  ``finally`` block, so this also happens when the task raised.

Celery is imported only by :func:`install_if_available`, so this module (and
:func:`task_context`, which a view may need) works where Celery is absent.
See docs/celery.md.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import logging
import threading
import uuid
from collections.abc import Mapping
from typing import Any

from redis_logstream.context import (
    MAX_CONTEXT_LENGTH,
    get_log_context,
    reset_log_context,
    set_log_context,
    validate_context,
)

__all__ = [
    "CONTEXT_HEADER",
    "TASK_CONTEXT_PREFIX",
    "install_if_available",
    "is_installed",
    "task_context",
    "uninstall",
]

#: Message header that carries the sender's log context to the worker.
CONTEXT_HEADER = "redis_logstream_context"

#: A task sent with no context runs under ``task_<task id as 32 hex digits>``.
TASK_CONTEXT_PREFIX = "task_"

_DISPATCH_UID = "redis_logstream.celery"
_log = logging.getLogger(__name__)
_lock = threading.Lock()
_installed = False
# Tokens of the contexts set in task_prerun, per task id, reset in task_postrun.
# A list, because an eager task can run a task of the same id inside itself.
_tokens: dict[str, list[contextvars.Token[Any]]] = {}


def task_context(task_id: str) -> str:
    """The log context a task sent with no context runs under.

    Why a pure function of the id: the code that sends the task already has
    the id (``result.id``), so it can tell the user which stream to watch
    without any round trip to the worker. A UUID id (Celery's default) gives
    ``task_`` + its 32 hex digits, the form of ``job_id_factory("task")``;
    any other id gives ``task_`` + the id, or ``task_`` + 32 hex digits of
    its SHA-256 when that would exceed the context length limit.
    """
    if not isinstance(task_id, str) or not task_id:
        raise ValueError(f"A task id is a non-empty str, not {task_id!r}.")
    try:
        suffix = uuid.UUID(task_id).hex
    except ValueError:
        suffix = task_id
    if len(TASK_CONTEXT_PREFIX) + len(suffix) > MAX_CONTEXT_LENGTH:
        suffix = hashlib.sha256(task_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return validate_context(TASK_CONTEXT_PREFIX + suffix)


def install_if_available() -> bool:
    """Connect the three signal receivers; False (and nothing done) without Celery.

    Why it is safe to call more than once (Django's ``ready()``, then a
    worker's own start-up code): every receiver is connected with a fixed
    ``dispatch_uid``, which Celery keeps once.
    """
    global _installed
    try:
        from celery import signals
    except ImportError:
        return False
    with _lock:
        signals.before_task_publish.connect(
            _add_context_header, weak=False, dispatch_uid=_DISPATCH_UID
        )
        signals.task_prerun.connect(_enter_task, weak=False, dispatch_uid=_DISPATCH_UID)
        signals.task_postrun.connect(_leave_task, weak=False, dispatch_uid=_DISPATCH_UID)
        _installed = True
    return True


def uninstall() -> None:
    """Disconnect the receivers (tests, or code that opts out at run time)."""
    global _installed
    try:
        from celery import signals
    except ImportError:
        return
    with _lock:
        for signal in (signals.before_task_publish, signals.task_prerun, signals.task_postrun):
            signal.disconnect(dispatch_uid=_DISPATCH_UID)
        _installed = False


def is_installed() -> bool:
    """True between :func:`install_if_available` (with Celery) and :func:`uninstall`."""
    return _installed


def _add_context_header(headers: dict[str, Any] | None = None, **_: Any) -> None:
    """before_task_publish: put the sender's context in the message."""
    context = get_log_context()
    if context is not None and headers is not None:
        headers.setdefault(CONTEXT_HEADER, context)


def _sent_context(request: Any) -> object:
    """The header's value as the worker sees it, or None.

    Protocol 2 turns custom message headers into request attributes;
    protocol 1 and ``apply(headers=...)`` leave them in ``request.headers``.
    """
    value = getattr(request, CONTEXT_HEADER, None)
    if value is None:
        headers = getattr(request, "headers", None)
        if isinstance(headers, Mapping):
            value = headers.get(CONTEXT_HEADER)
    return value


def _enter_task(task_id: str | None = None, task: Any = None, **_: Any) -> None:
    """task_prerun: set the task's context and keep the token for task_postrun."""
    if not task_id:
        return
    request = getattr(task, "request", None)
    context: str | None = None
    sent = _sent_context(request)
    if sent is not None:
        try:
            context = validate_context(sent)
        except ValueError as exc:
            # A bad header must not fail the task: it runs as if sent without one.
            _log.warning("Task %s: ignoring its %s header: %s", task_id, CONTEXT_HEADER, exc)
    if context is None and getattr(request, "is_eager", False):
        context = get_log_context()
    if context is None:
        context = task_context(task_id)
    token = set_log_context(context)
    with _lock:
        _tokens.setdefault(task_id, []).append(token)


def _leave_task(task_id: str | None = None, **_: Any) -> None:
    """task_postrun: restore the context the task started from."""
    with _lock:
        stack = _tokens.get(task_id) if task_id else None
        if not stack:
            return
        token = stack.pop()
        if not stack:
            del _tokens[task_id]  # type: ignore[arg-type]
    # ValueError: set in another contextvars.Context (a pool that ran prerun
    # and postrun in different threads): there is nothing to restore here.
    with contextlib.suppress(ValueError, RuntimeError):
        reset_log_context(token)
