"""One Redis follower per stream per process, shared by every viewer.

A live console can have hundreds of viewers on the same stream (the
firehose on an operations screen, a job page many people opened).  If each
held its own blocking ``XREAD``, Redis connections would grow with the
audience.  Here a process has at most one :class:`Follower` thread per
stream: it reads each new batch once, encodes every entry once (the SSE
bytes are the same for all viewers), and hands the batch to every
:class:`Subscription`.  Viewers only wait on their own inbox, with a
threading or an asyncio wake-up, so one reading path serves both WSGI and
ASGI transports.

Why no viewer misses or repeats an entry: a subscriber registers *before*
it reads its history (see :mod:`.sse`), and receives every batch dispatched
after that; anything older is already in Redis, so the history read that
follows includes it.  The overlap is removed by id.  A follower starts from
the stream's newest id, read before anyone can subscribe to it.

A viewer that cannot keep up (its inbox holds more than ``limit`` entries
or ``max_bytes`` bytes) is cut off rather than buffered without bound: its
inbox is emptied, its stream ends, the browser reconnects with
``Last-Event-ID`` and catches up from Redis.  A viewer that stops reading
its inbox altogether (a response the server threw away unread, or a write
to a client that does not read) is dropped after ``stale_after`` seconds:
its inbox is emptied and its ``on_stale`` hook ends the stuck response.
A follower stops once its last viewer has left and closes its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import redis

from redis_logstream.naming import Names
from redis_logstream.reading.entries import Entry
from redis_logstream.reading.reader import READ_MARGIN, StreamReader
from redis_logstream.redis.topology import clone, disconnect
from redis_logstream.shipping.diagnostics import report

__all__ = ["Follower", "StreamHub", "Subscription", "id_key"]

#: How long a follower waits between two reads: batches of a busy stream
#: reach each viewer in one write, not one per record (hundreds of viewers
#: times hundreds of records per second would otherwise be the cost).
COALESCE = 0.05
#: The longest blocking read; a follower whose viewers left notices it then.
FOLLOW_BLOCK_MS = 1000
#: Entries per read: a batch is held about three times over (reply, entries,
#: SSE bytes): 100 records of 64 KB cost ~20 MB where 500 cost ~100 MB.
FOLLOW_COUNT = 100
#: Entries a viewer may have waiting before it is cut off (and resumes).
INBOX_LIMIT = 10000
#: Bytes a viewer may have waiting before it is cut off: entries are up to
#: ~64 KB each, so a count alone lets one slow viewer hold hundreds of MB.
INBOX_BYTES = 4 * 1024 * 1024
#: A viewer that has not looked at its inbox for this long is dropped.
STALE_AFTER = 60.0
#: Seen in ``CLIENT LIST``, so operators know whose connections these are.
FOLLOWER_NAME = "redis_logstream:follower"

Item = tuple["tuple[int, int] | None", bytes]


def id_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a pair that sorts the way Redis orders entries."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


class Subscription:
    """One viewer's inbox: items pushed by a follower thread, taken by the viewer.

    A viewer waits on a ``threading.Event`` (WSGI) or on an ``asyncio.Event``
    of its loop (ASGI); :func:`wake` sets it, and only while the viewer
    waits, so a busy stream costs no wake-up per batch.
    """

    def __init__(
        self,
        follower: Follower,
        limit: int = INBOX_LIMIT,
        stale_after: float = STALE_AFTER,
        max_bytes: int = INBOX_BYTES,
    ) -> None:
        self.follower = follower
        self.limit = limit
        self.max_bytes = max_bytes
        self.stale_after = stale_after
        self.seen = time.monotonic()
        self.overflowed = False
        self.closed = False
        #: Called (from the follower's thread) when the viewer is dropped for
        #: not reading: ends a response stuck writing to a client.
        self.on_stale: Callable[[], None] | None = None
        self.size = 0  # bytes waiting in the inbox
        self._lock = threading.Lock()  # size and items change together
        self._items: deque[Item] = deque()
        self._waiting = False
        self._event: threading.Event | asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the follower's side ------------------------------------------------

    def push(self, items: list[Item], size: int | None = None) -> Subscription | None:
        """Queue ``items`` (``size``: their bytes, computed once per batch by
        the caller); return self if the viewer waits and must be woken (the
        caller wakes many at once: see :func:`wake`)."""
        if self.overflowed or self.closed:
            return None
        size = sum(len(data) for _, data in items) if size is None else size
        with self._lock:
            # An empty inbox takes one read's batch whatever its size (a
            # read is capped at FOLLOW_COUNT entries): a viewer that keeps
            # up is never cut off by one burst of large records, and one
            # that does not holds at most max_bytes plus one batch.
            waiting = bool(self._items)
            self._items.extend(items)
            self.size += size
            if waiting and (len(self._items) > self.limit or self.size > self.max_bytes):
                self.overflowed = True
                self._empty()
        return self._claim_wake()

    def _empty(self) -> None:
        """Let go of what is waiting (called with the lock held)."""
        self._items.clear()
        self.size = 0

    def end(self) -> None:
        """The follower is gone (its hub closed): let the viewer finish."""
        self.closed = True
        with self._lock:
            self._empty()
        if self._claim_wake() is not None:
            wake([self])

    def _claim_wake(self) -> Subscription | None:
        if not self._waiting:
            return None
        self._waiting = False
        return self

    # -- the viewer's side --------------------------------------------------

    @property
    def done(self) -> bool:
        """True when the viewer should end its response (and reconnect)."""
        return self.overflowed or self.closed

    @property
    def stale(self) -> bool:
        """Nobody has read this inbox for ``stale_after`` seconds: its viewer
        is gone without closing it (a response thrown away unread)."""
        return time.monotonic() - self.seen > self.stale_after

    def take(self) -> list[Item]:
        self.seen = time.monotonic()
        with self._lock:
            items = list(self._items)
            self._empty()
        return items

    def wait(self, timeout: float) -> list[Item]:
        """Block up to ``timeout`` seconds for items (a WSGI viewer's thread)."""
        self.seen = time.monotonic()
        if not self._items and not self.done:
            if not isinstance(self._event, threading.Event):
                self._event = threading.Event()
            self._event.clear()
            self._waiting = True
            if not self._items and not self.done:  # pushed while we got ready
                self._event.wait(timeout)
            self._waiting = False
        return self.take()

    async def wait_async(self, timeout: float) -> list[Item]:
        """Await items up to ``timeout`` seconds (an ASGI viewer's task)."""
        self.seen = time.monotonic()
        if not self._items and not self.done:
            if not isinstance(self._event, asyncio.Event):
                self._event = asyncio.Event()
                self._loop = asyncio.get_running_loop()
            self._event.clear()
            self._waiting = True
            if not self._items and not self.done:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._event.wait(), timeout)
            self._waiting = False
        return self.take()

    def close(self) -> None:
        """Leave the follower (the last viewer to leave stops it) and let go
        of the inbox at once: a response stuck writing may live on a while."""
        with self._lock:
            self._empty()
        if not self.closed:
            self.closed = True
            self.follower.unsubscribe(self)

    def drop_stale(self) -> None:
        """Close a viewer that stopped reading, and end its response."""
        self.close()
        hook, self.on_stale = self.on_stale, None
        if hook is not None:
            try:
                hook()
            except Exception as exc:  # the follower must go on for the others
                report(logging.WARNING, "redis_logstream: could not end a stuck response: %s", exc)


def wake(subscriptions: list[Subscription]) -> None:
    """Rouse waiting viewers: threads directly, and the viewers of each event
    loop with one call into that loop (hundreds of viewers on one ASGI
    server would otherwise cost hundreds of cross-thread calls per batch)."""
    loops: dict[asyncio.AbstractEventLoop, list[asyncio.Event]] = {}
    for subscription in subscriptions:
        event, loop = subscription._event, subscription._loop
        if loop is not None:
            loops.setdefault(loop, []).append(event)  # type: ignore[arg-type]
        elif event is not None:
            event.set()  # type: ignore[call-arg]
    for loop, events in loops.items():
        # A closed loop (RuntimeError) means its viewers have left.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_set_all, events)


def _set_all(events: list[asyncio.Event]) -> None:
    for event in events:
        event.set()


class Follower(threading.Thread):
    """Reads one stream for all of a process's viewers of it."""

    def __init__(
        self,
        hub: StreamHub,
        context: str | None,
        client: Any,
        encode: Callable[[Entry], bytes],
    ) -> None:
        super().__init__(name=f"redis-logstream-follower[{context or 'global'}]", daemon=True)
        self.hub = hub
        self.context = context
        self.client = client
        self.encode = encode
        self.reader = StreamReader(client, hub.names, block_ms=FOLLOW_BLOCK_MS)
        self.cursor = "0-0"
        self.subscribers: list[Subscription] = []
        self.stopping = threading.Event()

    def start_from_newest(self) -> None:
        """Read where the stream ends now: entries after it are live."""
        newest = self.client.xrevrange(self.reader.stream(self.context), "+", "-", count=1)
        if newest:
            entry_id = newest[0][0]
            self.cursor = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    def subscribe(self, limit: int, stale_after: float, max_bytes: int) -> Subscription:
        subscription = Subscription(self, limit, stale_after, max_bytes)
        self.subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self.hub.lock:
            if subscription in self.subscribers:
                self.subscribers.remove(subscription)
            if not self.subscribers:
                self.stopping.set()
                self.hub.forget(self)

    def run(self) -> None:
        try:
            batches = self.reader.batches(
                self.context,
                self.cursor,
                stop=self.stopping,
                notify=self._notify,
                count=FOLLOW_COUNT,
            )
            for batch in batches:
                if batch:
                    items: list[Item] = [(id_key(e.id), self.encode(e)) for e in batch]
                    size = sum(len(data) for _, data in items)
                    wake([s for s in list(self.subscribers) if s.push(items, size)])
                for subscription in [s for s in list(self.subscribers) if s.stale]:
                    subscription.drop_stale()
                if batch and len(batch) < FOLLOW_COUNT:  # a full batch: more is waiting
                    self.stopping.wait(COALESCE)
        except redis.RedisError as exc:  # not a lost connection: a broken setup
            report(logging.ERROR, "redis_logstream: the console's reader failed: %s", exc)
        finally:
            with self.hub.lock:
                self.stopping.set()
                self.hub.forget(self)
                ending = list(self.subscribers)
            for subscription in ending:
                subscription.end()
            disconnect(self.client)

    def _notify(self, text: str) -> None:
        status = self.hub.status_event(text, up=text.startswith("Redis is back"))
        wake([s for s in list(self.subscribers) if s.push([(None, status)])])


class StreamHub:
    """A process's followers, one per stream, made on first use.

    ``client`` is the site's Redis client: each follower gets a connection
    pool of its own cloned from it (same server, credentials and TLS), with
    a socket timeout that fits its blocking reads.
    """

    def __init__(
        self,
        client: Any,
        names: Names,
        encode: Callable[[Entry], bytes],
        status_event: Callable[..., bytes],
    ) -> None:
        self.client = client
        self.names = names
        self.encode = encode
        self.status_event = status_event
        self.lock = threading.Lock()
        self.followers: dict[str, Follower] = {}
        self._starting: dict[str, threading.Event] = {}

    def subscribe(
        self,
        context: str | None,
        limit: int = INBOX_LIMIT,
        stale_after: float = STALE_AFTER,
        max_bytes: int = INBOX_BYTES,
    ) -> Subscription:
        """Join the follower of ``context``'s stream, starting one if needed.

        Viewers arriving together while a follower starts wait for it rather
        than each opening a connection.  Raises redis errors when Redis
        cannot be reached: the viewer is then told to come back later.
        """
        key = self.names.stream(context)
        while True:
            with self.lock:
                follower = self.followers.get(key)
                if follower is not None and not follower.stopping.is_set():
                    return follower.subscribe(limit, stale_after, max_bytes)
                starting = self._starting.get(key)
                if starting is None:
                    self._starting[key] = threading.Event()
                    break
            starting.wait(FOLLOW_BLOCK_MS / 1000 + READ_MARGIN)
        try:
            return self._start(context, key, limit, stale_after, max_bytes)
        finally:
            with self.lock:
                self._starting.pop(key).set()

    def _start(
        self, context: str | None, key: str, limit: int, stale_after: float, max_bytes: int
    ) -> Subscription:
        fresh = Follower(self, context, follower_client(self.client), self.encode)
        try:
            fresh.start_from_newest()
            with self.lock:
                self.followers[key] = fresh
                subscription = fresh.subscribe(limit, stale_after, max_bytes)
                fresh.start()
        except BaseException:
            with self.lock:
                self.forget(fresh)
            disconnect(fresh.client)
            raise
        return subscription

    def forget(self, follower: Follower) -> None:
        """Drop a stopping follower (called with :attr:`lock` held)."""
        key = self.names.stream(follower.context)
        if self.followers.get(key) is follower:
            del self.followers[key]

    def close(self, timeout: float = 5.0) -> None:
        """Stop every follower (their viewers' responses end)."""
        with self.lock:
            followers = list(self.followers.values())
        for follower in followers:
            follower.stopping.set()
        for follower in followers:
            if follower.is_alive():
                follower.join(timeout)


def follower_client(base: Any) -> redis.Redis:
    """A client of its own, to ``base``'s server, for blocking reads."""
    return clone(base, FOLLOWER_NAME, socket_timeout=FOLLOW_BLOCK_MS / 1000 + READ_MARGIN)
