"""Who may watch which log context.

The rules (each is a test in tests/test_stream_access.py):

- a signed-in user may watch their own context (``User.alice``);
- staff, and users with the permission ``redis_logstream.view_all_logs``,
  may watch any context and the site-wide stream (``?context=global``);
- a stream token (:mod:`.tokens`) grants exactly the context it names, to
  anyone, until it expires;
- everyone else gets 403 (the console page sends anonymous visitors to the
  login page instead);
- a signed-in user holds at most ``STREAM_USER_LIMIT`` streams open at once
  in one server process (:data:`USER_STREAMS`); viewers by token are not
  counted (many people share one address behind a proxy, and a token is
  not a person).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import BadRequest, PermissionDenied

from redis_logstream.console.tokens import InvalidStreamToken, read_stream_token
from redis_logstream.context import get_user_context, validate_context

__all__ = [
    "GLOBAL",
    "USER_STREAMS",
    "VIEW_ALL_PERMISSION",
    "Grant",
    "StreamSlots",
    "can_view_all",
    "grant_for",
]

#: The value of ``?context=`` that names the site-wide stream.
GLOBAL = "global"
VIEW_ALL_PERMISSION = "redis_logstream.view_all_logs"


@dataclass(frozen=True)
class Grant:
    """What a request may watch: ``context`` (None: the site-wide stream)."""

    context: str | None
    token: str | None = None
    view_all: bool = False


def can_view_all(user: Any) -> bool:
    """Staff, superusers and holders of ``view_all_logs``."""
    if not getattr(user, "is_authenticated", False) or not getattr(user, "is_active", True):
        return False
    return bool(user.is_staff or user.has_perm(VIEW_ALL_PERMISSION))


def grant_for(request: Any) -> Grant:
    """The context ``request`` asks for, if it may watch it.

    Raises PermissionDenied (403) or BadRequest (400, a malformed context).
    """
    token = request.GET.get("token") or None  # ?token= (empty): no token
    asked = request.GET.get("context")
    if token is not None:
        try:
            context = read_stream_token(token)
        except InvalidStreamToken as exc:
            raise PermissionDenied(str(exc)) from None
        if asked not in (None, "", context if context is not None else GLOBAL):
            raise PermissionDenied("a stream token grants one context only")
        return Grant(context, token=token)
    user = request.user
    # is_active too: an authentication backend may let inactive users in.
    if not user.is_authenticated or not getattr(user, "is_active", True):
        raise PermissionDenied("sign in to watch log records")
    view_all = can_view_all(user)
    if asked == GLOBAL:
        if not view_all:
            raise PermissionDenied("only staff may watch the whole site's records")
        return Grant(None, view_all=True)
    try:
        own = get_user_context(user)
    except ValueError:
        own = None
    if not asked:
        if own is None:
            raise PermissionDenied("this user has no log context")
        return Grant(own, view_all=view_all)
    try:
        context = validate_context(asked)
    except ValueError as exc:
        raise BadRequest(f"invalid context: {exc}") from None
    if context != own and not view_all:
        raise PermissionDenied("you may watch your own log context only")
    return Grant(context, view_all=view_all)


class StreamSlots:
    """Streams open per signed-in user, counted in this process.

    Per process on purpose: a slot must be given back however a response
    ends, and a count in Redis would outlive a process that died holding
    slots (it would need leases renewed by every viewer).  A site with N
    worker processes therefore lets a user hold up to N times the limit.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: dict[Any, int] = {}

    def take(self, user_key: Any, limit: int) -> Callable[[], None] | None:
        """A slot for ``user_key`` (limit 0: no cap): the function that gives
        it back (once, however often it is called), or None when all are taken."""
        with self._lock:
            held = self._open.get(user_key, 0)
            if limit and held >= limit:
                return None
            self._open[user_key] = held + 1
        given_back = threading.Event()

        def release() -> None:
            with self._lock:
                if given_back.is_set():
                    return
                given_back.set()
                left = self._open.get(user_key, 1) - 1
                if left > 0:
                    self._open[user_key] = left
                else:
                    self._open.pop(user_key, None)

        return release

    def held(self, user_key: Any) -> int:
        with self._lock:
            return self._open.get(user_key, 0)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._open = {}


#: The process's count of open streams per user (by primary key).
USER_STREAMS = StreamSlots()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=USER_STREAMS._reset)
