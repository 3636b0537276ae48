"""Signed, expiring tokens that let their holder watch one log context.

A job page is often seen by people who have no right to the job owner's
context (a colleague given the link, a status screen).  The page embeds a
token instead: made with Django's signing (so with ``SECRET_KEY``), good for
exactly one context and for a limited time, and checked by the stream view
without any database lookup.  The token is a bearer credential: whoever
has the URL can watch until it expires, so keep ``max_age`` short.
"""

from __future__ import annotations

import math
import time

from django.core import signing

from redis_logstream.context import validate_context

__all__ = ["InvalidStreamToken", "make_stream_token", "read_stream_token"]

SALT = "redis_logstream.stream-token"


class InvalidStreamToken(ValueError):
    """The token was tampered with, made with another key, or has expired."""


def make_stream_token(context: str | None, max_age: float = 3600) -> str:
    """A URL-safe token for following ``context`` (None: the site-wide stream)
    during the next ``max_age`` seconds.

    >>> token = make_stream_token("job_1b4e28ba2fa1", max_age=600)
    >>> url = reverse("redis_logstream:console") + "?token=" + token
    """
    if context is not None:
        context = validate_context(context)
    if (
        isinstance(max_age, bool)
        or not isinstance(max_age, (int, float))
        or not math.isfinite(max_age)
        or max_age <= 0
    ):
        # inf (or nan) would make a token that never expires, or a broken one.
        raise ValueError(f"max_age must be a finite number of seconds > 0, not {max_age!r}.")
    expires = int(time.time() + max_age + 0.999)
    return signing.dumps({"c": context, "e": expires}, salt=SALT, compress=False)


def read_stream_token(token: str) -> str | None:
    """The context a token grants (None: the site-wide stream).

    Raises :class:`InvalidStreamToken` for a bad signature, a malformed
    payload or an expired token.
    """
    try:
        payload = signing.loads(token, salt=SALT)
    except signing.BadSignature:
        raise InvalidStreamToken("the stream token is invalid") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("e"), int):
        raise InvalidStreamToken("the stream token is malformed")
    if payload["e"] < time.time():
        raise InvalidStreamToken("the stream token has expired")
    context = payload.get("c")
    if context is not None and not isinstance(context, str):
        raise InvalidStreamToken("the stream token is malformed")
    return context
