"""A user's log context stays theirs when the user goes or changes name.

Contexts are named after usernames (``User.carol``), and usernames are
given out again: without this, the next ``carol`` would see the previous
one's records, tracebacks included, on her console.  So, unless the site
setting ``PURGE_USER_CONTEXTS`` is False:

- when a user is deleted, their context is erased as ``purge_log_context``
  erases it: their stream, and their entries in the global and dead-letter
  streams;
- when a user's username changes, the stream of the old name is deleted
  (the records stay in the global stream, under the old name, until they
  expire: they are still this person's).

Both run once the transaction commits, so a rolled-back delete erases
nothing, and neither can make the save or the delete fail: with Redis
down, a warning on the ``redis_logstream`` logger (never into a
RedisLogHandler) says what was not purged and how to purge it later.

Telling a rename costs one ``SELECT`` of the username by primary key per
save of an existing user, and nothing for saves limited to other fields
(``save(update_fields=["last_login"])``, which every login does) or when
contexts are named by primary key (``USER_CONTEXT_BY_PK``), which renames
do not change.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any

from redis_logstream.conf import site_setting
from redis_logstream.context import get_user_context, user_context_name
from redis_logstream.shipping.diagnostics import report

__all__ = ["connect", "purge_user_context"]

#: Where pre_save leaves the old username for post_save.
_OLD_NAME = "_redis_logstream_old_username"
_UID = "redis_logstream.purge_user_contexts"


def connect() -> None:
    """Connect the receivers to the user model (AppConfig.ready).

    A site without a user model (no ``django.contrib.auth``) gets nothing
    connected: a lazy reference to a model that never loads would be a
    system check error.
    """
    from django.contrib.auth import get_user_model
    from django.core.exceptions import ImproperlyConfigured
    from django.db.models.signals import post_delete, post_save, pre_save

    try:
        model = get_user_model()
    except (ImproperlyConfigured, LookupError, RuntimeError):
        return
    pre_save.connect(_remember_username, sender=model, dispatch_uid=_UID, weak=False)
    post_save.connect(_purge_renamed, sender=model, dispatch_uid=_UID, weak=False)
    post_delete.connect(_purge_deleted, sender=model, dispatch_uid=_UID, weak=False)


def _enabled() -> bool:
    return bool(site_setting("purge_user_contexts"))


def _remember_username(
    sender: Any,
    instance: Any,
    raw: bool = False,
    using: str | None = None,
    update_fields: Any = None,
    **_: Any,
) -> None:
    """pre_save: keep the stored username, if this save may change it."""
    if raw or instance._state.adding or instance.pk is None:
        return
    if not _enabled() or site_setting("user_context_by_pk"):
        return
    field = getattr(sender, "USERNAME_FIELD", "username")
    if update_fields is not None and field not in update_fields:
        return
    old = (
        sender._base_manager.using(using)
        .filter(pk=instance.pk)
        .values_list(field, flat=True)
        .first()
    )
    if old is not None and old != getattr(instance, field, None):
        instance.__dict__[_OLD_NAME] = old


def _purge_renamed(sender: Any, instance: Any, using: str | None = None, **_: Any) -> None:
    """post_save: the username changed; the old name's stream goes."""
    old = instance.__dict__.pop(_OLD_NAME, None)
    if old is None:
        return
    try:
        context = user_context_name(type(instance), old)
    except ValueError:  # a username too long to have had a context
        return
    _after_commit(context, "renamed", using, streams_only=True)


def _purge_deleted(sender: Any, instance: Any, using: str | None = None, **_: Any) -> None:
    """post_delete: the user's context is erased everywhere it is kept."""
    if not _enabled():
        return
    try:
        context = get_user_context(instance)
    except ValueError:  # no username, or one that names no context
        return
    _after_commit(context, "deleted", using, streams_only=False)


def _after_commit(context: str, event: str, using: str | None, *, streams_only: bool) -> None:
    from django.db import transaction

    transaction.on_commit(
        lambda: purge_user_context(context, event, streams_only=streams_only), using=using
    )


def purge_user_context(context: str, event: str = "deleted", *, streams_only: bool = False) -> bool:
    """Purge ``context`` from the site's Redis; never raise.

    Returns False (after a warning that says so) when it could not.
    """
    from redis_logstream.cli.cmdline import site_connection
    from redis_logstream.cli.purge import PurgeRequest, purge

    out = io.StringIO()
    client = None
    try:
        client, names = site_connection({})
        request = PurgeRequest(contexts=(context,), streams_only=streams_only)
        purge(client, names, request, out)
    except Exception as exc:  # a user's delete or save must never fail for the logs
        report(
            logging.WARNING,
            "The log records of %s were NOT purged after the user was %s: %s. "
            "Purge them once Redis is back: manage.py purge_log_context %s",
            context,
            event,
            str(exc).splitlines()[0] if str(exc) else type(exc).__name__,
            context,
        )
        return False
    finally:
        close = getattr(client, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):  # a broken client: nothing left to do
                close()
    summary = out.getvalue().splitlines()
    report(
        logging.INFO,
        "Purged the log records of %s after the user was %s: %s",
        context,
        event,
        summary[-1] if summary else "nothing to purge",
    )
    return True
