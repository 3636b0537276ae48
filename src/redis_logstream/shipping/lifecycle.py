"""Process-wide events every shipper must follow: exit and fork.

Kept apart from the shipper so that the one place where the library hooks
into the interpreter (``atexit`` and ``os.register_at_fork``) is easy to find.
"""

from __future__ import annotations

import atexit
import logging
import os
import weakref
from typing import TYPE_CHECKING

from redis_logstream.shipping.diagnostics import report

if TYPE_CHECKING:
    from redis_logstream.shipping.shipper import Shipper

__all__ = ["track"]

_live: weakref.WeakSet[Shipper] = weakref.WeakSet()


def track(shipper: Shipper) -> None:
    """Have ``shipper`` flushed at exit and reset in forked children."""
    _live.add(shipper)


def _shutdown_all() -> None:
    """At exit: write what is buffered, all shippers at once, each within its
    own shutdown_timeout; then say what could not be written."""
    shippers = [s for s in list(_live) if s.active]
    for shipper in shippers:
        shipper.begin_shutdown(None)
    lost = 0
    for shipper in shippers:
        shipper.finish_shutdown()
        lost += shipper.pending()
    for shipper in list(_live):
        shipper.finalize()
    if lost:
        report(
            logging.WARNING,
            "redis_logstream: %d records not delivered at exit (last error: %s)",
            lost,
            next((s.last_error for s in shippers if s.last_error), "none"),
        )


def _after_fork_in_child() -> None:
    for shipper in list(_live):
        shipper.after_fork()


atexit.register(_shutdown_all)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
