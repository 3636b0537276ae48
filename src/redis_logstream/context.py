"""The log context: which user or job a record belongs to.

A context is a short string such as ``"User.alice"`` or ``"job_1b4e..."``.
It lives in a :class:`contextvars.ContextVar`, so it follows the code that
runs for one request or one task (threads, asyncio tasks) without being
passed around, and the handler reads it once per record.

Values are checked when they are set, not when records are emitted: a bad
value fails loudly in the code that chose it, while ``emit()`` never raises.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from redis_logstream.conf import site_setting

__all__ = [
    "MAX_CONTEXT_LENGTH",
    "RESERVED_CONTEXTS",
    "get_log_context",
    "get_user_context",
    "job_id_factory",
    "log_context",
    "reset_log_context",
    "set_log_context",
    "user_context_name",
    "user_id_context",
    "validate_context",
]

MAX_CONTEXT_LENGTH = 128

#: Names that would collide with the site-wide firehose channel.
RESERVED_CONTEXTS = frozenset({"global"})

#: The raw variable, under the name existing code imports.  Prefer the
#: helpers below: they validate what they set.
user_id_context: contextvars.ContextVar[Any] = contextvars.ContextVar(
    "redis_logstream_context", default=None
)


class _Internal:
    """Marks code run by the library itself (shipping, diagnostics).

    The handler drops records logged while this is the context value, which
    is what keeps redis-py's own log records and our diagnostics from
    re-entering the buffer, at the cost of one identity test per record.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return "<redis_logstream internal>"


INTERNAL = _Internal()


def validate_context(value: object) -> str:
    """Return ``value`` if it can name a log context, else raise ValueError.

    Any str of 1 to 128 characters is accepted except the reserved names;
    characters outside the safe set are encoded in channel names later
    (see :mod:`redis_logstream.naming`), so they are legal here.
    """
    if not isinstance(value, str):
        raise ValueError(
            f"A log context must be a str, not {type(value).__name__} ({value!r}). "
            "To leave a context, reset it with the token set_log_context() returned, "
            "or use log_context() as a context manager."
        )
    if not value:
        raise ValueError("A log context must not be empty.")
    if len(value) > MAX_CONTEXT_LENGTH:
        raise ValueError(
            f"A log context is at most {MAX_CONTEXT_LENGTH} characters; "
            f"got {len(value)} ({value[:40]!r}...)."
        )
    if value in RESERVED_CONTEXTS:
        raise ValueError(
            f"{value!r} is reserved for the site-wide stream and cannot be a log context."
        )
    return value


def set_log_context(value: str) -> contextvars.Token[Any]:
    """Set the current context; keep the token to restore the previous one."""
    return user_id_context.set(validate_context(value))


def reset_log_context(token: contextvars.Token[Any]) -> None:
    """Restore the context that was current before ``set_log_context``."""
    user_id_context.reset(token)


def get_log_context() -> str | None:
    """The current context, or None outside any context."""
    value = user_id_context.get()
    return None if value is INTERNAL else value


F = TypeVar("F", bound=Callable[..., Any])


class log_context:
    """Run a block or a function under a log context.

    ``with log_context("User.alice"): ...`` or ``@log_context("nightly-import")``.
    The value is validated at once, so a bad name fails where it was written.
    Decorated coroutine functions keep their context across awaits.
    """

    __slots__ = ("_tokens", "value")

    def __init__(self, value: str) -> None:
        self.value = validate_context(value)
        self._tokens: list[contextvars.Token[Any]] = []

    def __enter__(self) -> str:
        self._tokens.append(user_id_context.set(self.value))
        return self.value

    def __exit__(self, *exc_info: object) -> None:
        user_id_context.reset(self._tokens.pop())

    def __call__(self, func: F) -> F:
        value = self.value
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                token = user_id_context.set(value)
                try:
                    return await func(*args, **kwargs)
                finally:
                    user_id_context.reset(token)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            token = user_id_context.set(value)
            try:
                return func(*args, **kwargs)
            finally:
                user_id_context.reset(token)

        return wrapper  # type: ignore[return-value]


@contextmanager
def internal_context() -> Iterator[None]:
    """Mark the block as the library's own work (see :data:`INTERNAL`)."""
    token = user_id_context.set(INTERNAL)
    try:
        yield
    finally:
        user_id_context.reset(token)


def get_user_context(user: Any) -> str:
    """Name the context of a user: model class name, a dot, the username
    (or the primary key, with the site setting ``USER_CONTEXT_BY_PK``).

    Works with custom user models (``USERNAME_FIELD``) and with
    ``request.user``'s lazy wrapper, whose class is not the model's.  The
    middleware, the console's access rules and the purge on deletion all
    name a user's context through here, so they always agree.
    """
    # Reading an attribute makes a lazy wrapper load the user it wraps.
    if getattr(user, "is_anonymous", False):
        raise ValueError("An anonymous user has no log context.")
    if hasattr(user, "_setup") and hasattr(user, "_wrapped"):
        user = user._wrapped
    if site_setting("user_context_by_pk"):
        key = getattr(user, "pk", None)
        if key is None:
            raise ValueError(f"{user!r} has no primary key (not saved) to name a log context.")
        return user_context_name(type(user), key)
    get_username = getattr(user, "get_username", None)
    username = get_username() if callable(get_username) else getattr(user, "username", None)
    if username is None or username == "":
        raise ValueError(f"{user!r} has no username to name a log context.")
    return user_context_name(type(user), username)


def user_context_name(user_class: type, key: object) -> str:
    """The context of the user of ``user_class`` named ``key`` (a username,
    or a primary key): what :func:`get_user_context` says of that user,
    also once the user is gone or renamed."""
    return validate_context(f"{user_class.__name__}.{key}")


def job_id_factory(prefix: str = "job") -> str:
    """A fresh job context such as ``job_1b4e28ba2fa1...``: give it to the job
    and to whoever wants to watch it."""
    return validate_context(f"{prefix}_{uuid.uuid4().hex}")
