"""Server-Sent Events for one viewer: history or resume, then live.

The protocol (docs/console.md): after a ``retry:`` hint, each stream entry
is one ``event: log`` whose ``id:`` is the entry id and whose ``data:`` is
the record's JSON; ``event: ready`` marks the end of the history;
``event: status`` says that the server lost or regained Redis; comment
lines are heartbeats.  A browser that reconnects sends the last id it saw
as ``Last-Event-ID`` and the stream resumes right after it.

:class:`EventStream` holds everything but the waiting: the backlog (the
last N entries, or everything after a resume id) is read from Redis in
pages, live items come from a shared :class:`~.fanout.Subscription`, and
one cursor drops the overlap between the two.  :meth:`EventStream.sync_body`
(WSGI) and :meth:`EventStream.async_body` (ASGI: Django would buffer a
synchronous iterator whole) are the two thin transports.  Both end the
response after ``max_age`` seconds, or when the viewer fell too far
behind; the browser reconnects and resumes, so nothing is lost, and a
server that cannot tell a client left (Django 4.2 under ASGI) still frees
the viewer's place in bounded time.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator

from .entries import Entry, decode_entry
from .fanout import Item, StreamHub, Subscription, id_key
from .reader import PAGE, StreamReader

__all__ = ["HEARTBEAT", "EventStream", "log_event", "status_event"]

RETRY_MS = 2000
PREAMBLE = b"retry: %d\n: redis-logstream\n\n" % RETRY_MS
HEARTBEAT = b": ping\n\n"
#: Sent when the server ends a response on purpose (max age, a viewer too
#: far behind): the browser comes back at once instead of after RETRY_MS.
COME_BACK_SOON = b"retry: 500\n\n"


def log_event(entry: Entry) -> bytes:
    """The SSE bytes of one entry, the same for every viewer."""
    data = entry.raw
    if not entry.valid or b"\n" in data or b"\r" in data:
        # Not our compact JSON: re-encode so each event is one data line.
        data = json.dumps(entry.record).encode()
    return b"id: %s\nevent: log\ndata: %s\n\n" % (entry.id.encode(), data)


def status_event(message: str, *, up: bool) -> bytes:
    """Tell viewers that the server lost (or regained) Redis."""
    data = json.dumps({"redis": "up" if up else "down", "message": message})
    return b"event: status\ndata: %s\n\n" % data.encode()


def _ready_event(history: int) -> bytes:
    return b'event: ready\ndata: {"history": %d}\n\n' % history


class EventStream:
    """One viewer's response: the backlog from Redis, then the shared live feed.

    ``resume_after`` (a ``Last-Event-ID``) wins over ``history``.  Call
    :meth:`open` before the response starts, so that Redis being down is
    an HTTP error the browser retries, not a broken stream.
    """

    def __init__(
        self,
        hub: StreamHub,
        reader: StreamReader,
        context: str | None,
        *,
        history: int,
        resume_after: str | None,
        heartbeat: float,
        max_age: float,
    ) -> None:
        self.hub = hub
        self.reader = reader
        self.context = context
        self.history = history
        self.resume_after = resume_after
        self.heartbeat = heartbeat
        self.max_age = max_age
        self.subscription: Subscription | None = None
        self.cursor = (0, 0)
        self.sent_history = 0
        self._first = b""
        self._more = False
        self._deadline = self._quiet_since = 0.0

    def open(self) -> None:
        """Join the live feed, then read the first backlog page (order matters:
        see :mod:`.fanout`).  Raises redis errors."""
        # A viewer reads its inbox at least once per heartbeat; one that
        # stops reading (a response nobody iterates) loses its place.
        self.subscription = self.hub.subscribe(
            self.context, stale_after=2 * self.heartbeat + 30
        )
        try:
            self._first = self._first_page()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.subscription is not None:
            self.subscription.close()

    # -- the backlog ---------------------------------------------------------

    def _first_page(self) -> bytes:
        if self.resume_after is not None:
            self.cursor = id_key(self.resume_after)
            return self._resume_page()
        snapshot = self.reader.snapshot(self.context, self.history)
        self.cursor = id_key(snapshot.cursor)
        self.sent_history = len(snapshot.entries)
        return b"".join(log_event(entry) for entry in snapshot.entries)

    def _resume_page(self) -> bytes:
        """The next page of entries after the cursor (a reconnecting viewer)."""
        start = "({}-{}".format(*self.cursor)
        rows = self.reader.client.xrange(self.reader.stream(self.context), start, "+", count=PAGE)
        self._more = len(rows) == PAGE
        entries = [decode_entry(entry_id, fields) for entry_id, fields in rows]
        if entries:
            self.cursor = id_key(entries[-1].id)
        self.sent_history += len(entries)
        return b"".join(log_event(entry) for entry in entries)

    # -- live ----------------------------------------------------------------

    def _live(self, items: list[Item]) -> bytes:
        """Items newer than what was sent (status items always pass)."""
        fresh = []
        for key, data in items:
            if key is None:
                fresh.append(data)
            elif key > self.cursor:
                self.cursor = key
                fresh.append(data)
        return b"".join(fresh)

    def _start_live(self) -> bytes:
        self._deadline = time.monotonic() + self.max_age
        self._quiet_since = time.monotonic()
        return _ready_event(self.sent_history)

    def _next_wait(self) -> float | None:
        """How long to wait for live items; None once the response should end."""
        assert self.subscription is not None
        now = time.monotonic()
        left = self._deadline - now
        if self.subscription.done or left <= 0:
            return None
        # Until the next heartbeat is due, not a full period from now: a
        # wake-up that brought nothing to send must not delay it.
        return max(0.01, min(self.heartbeat - (now - self._quiet_since), left))

    def _after_wait(self, items: list[Item]) -> bytes:
        """What to write after a wait: new events, a heartbeat, or nothing."""
        chunk = self._live(items)
        now = time.monotonic()
        if not chunk and now - self._quiet_since >= self.heartbeat:
            chunk = HEARTBEAT
        if chunk:
            self._quiet_since = now
        return chunk

    # -- the two transports --------------------------------------------------

    def sync_body(self) -> SyncBody:
        """The response body for WSGI."""
        return SyncBody(self)

    def async_body(self) -> AsyncBody:
        """The response body for ASGI."""
        return AsyncBody(self)

    def _sync_events(self) -> Iterator[bytes]:
        """For WSGI: a failed write on a heartbeat is how the server learns
        the client left; it then closes this generator."""
        assert self.subscription is not None, "open() first"
        try:
            yield PREAMBLE + self._first
            while self._more:
                yield self._resume_page()
            yield self._start_live()
            while (wait := self._next_wait()) is not None:
                chunk = self._after_wait(self.subscription.wait(wait))
                if chunk:
                    yield chunk
            yield COME_BACK_SOON
        finally:
            self.close()

    async def _async_events(self) -> AsyncIterator[bytes]:
        """For ASGI: Django (5.0+) cancels this when the client disconnects."""
        from asgiref.sync import sync_to_async

        assert self.subscription is not None, "open() first"
        try:
            yield PREAMBLE + self._first
            while self._more:
                yield await sync_to_async(self._resume_page, thread_sensitive=False)()
            yield self._start_live()
            while (wait := self._next_wait()) is not None:
                chunk = self._after_wait(await self.subscription.wait_async(wait))
                if chunk:
                    yield chunk
            yield COME_BACK_SOON
        finally:
            self.close()


class SyncBody:
    """A WSGI body whose ``close()`` frees the viewer's place even if the
    server never started iterating it (a generator's ``finally`` would not
    run then)."""

    def __init__(self, stream: EventStream) -> None:
        self._stream = stream
        self._events = stream._sync_events()

    def __iter__(self) -> Iterator[bytes]:
        return self._events

    def close(self) -> None:
        self._events.close()
        self._stream.close()


class AsyncBody:
    """The ASGI twin of :class:`SyncBody`."""

    def __init__(self, stream: EventStream) -> None:
        self._stream = stream
        self._events = stream._async_events()

    def __aiter__(self) -> AsyncIterator[bytes]:
        return self._events

    def close(self) -> None:
        self._stream.close()
