"""The process's live-console plumbing, built from the site's settings.

The console reads the streams the site's handler writes, so it takes its
Redis and its names from the same place (``settings.REDIS_LOGSTREAM``, then
the django-redis cache alias).  Two kinds of connection, both independent
of how many people watch: a small, bounded pool for the short backlog reads
of viewers that (re)connect, and one connection per followed stream
(:mod:`.fanout`).  Both are rebuilt when the settings change (tests) and
after a fork (prefork servers build their own).
"""

from __future__ import annotations

import os
import threading
from typing import Any

import redis
from django.core.signals import setting_changed

from redis_logstream.conf import resolve_options
from redis_logstream.console.fanout import StreamHub
from redis_logstream.console.sse import log_event, status_event
from redis_logstream.reading.reader import READ_MARGIN, StreamReader
from redis_logstream.redis.connection import client_factory, names_for
from redis_logstream.redis.topology import clone, connection_kwargs, disconnect

__all__ = ["BACKLOG_CONNECTIONS", "get_hub", "get_reader", "reset"]

#: Concurrent backlog reads per process; more viewers (re)connecting at
#: once wait their turn instead of opening more connections.
BACKLOG_CONNECTIONS = 8
BACKLOG_WAIT = 10.0
BACKLOG_NAME = "redis_logstream:backlog"

_lock = threading.Lock()
_state: tuple[StreamHub, StreamReader] | None = None


def _build() -> tuple[StreamHub, StreamReader]:
    options = resolve_options()
    base = client_factory(options)()
    names = names_for(options)
    timeout = connection_kwargs(base).get("socket_timeout") or 0
    backlog = clone(
        base,
        BACKLOG_NAME,
        connection_pool_class=redis.BlockingConnectionPool,
        max_connections=BACKLOG_CONNECTIONS,
        timeout=BACKLOG_WAIT,
        socket_timeout=max(timeout, READ_MARGIN),
    )
    hub = StreamHub(base, names, log_event, status_event)
    return hub, StreamReader(backlog, names)


def _get() -> tuple[StreamHub, StreamReader]:
    global _state
    with _lock:
        if _state is None:
            _state = _build()
        return _state


def get_hub() -> StreamHub:
    """The shared followers of this process."""
    return _get()[0]


def get_reader() -> StreamReader:
    """A reader for backlog reads (bounded pool, no blocking reads)."""
    return _get()[1]


def reset(**kwargs: Any) -> None:
    """Forget the plumbing (settings changed): followers stop, pools close."""
    global _state
    with _lock:
        state, _state = _state, None
    if state is not None:
        hub, reader = state
        hub.close()
        disconnect(reader.client)


def _setting_changed(setting: str, **kwargs: Any) -> None:
    if setting in {"REDIS_LOGSTREAM", "CACHES"}:
        reset()


def _after_fork_in_child() -> None:
    global _state, _lock
    _state, _lock = None, threading.Lock()


setting_changed.connect(_setting_changed)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
