"""Server-Sent Events for one viewer: history or resume, then live.

The protocol (docs/console.md): after a ``retry:`` hint, each stream entry
is one ``event: log`` whose ``id:`` is the entry id and whose ``data:`` is
the record's JSON; ``event: ready`` marks the end of the history;
``event: status`` says that the server lost or regained Redis; comment
lines are heartbeats.  A browser that reconnects sends the last id it saw
as ``Last-Event-ID`` and the stream resumes right after it; ``ready`` has
an id too (where the history ended, ``0-0`` on an empty stream), so a
viewer that has seen no record yet resumes without a gap as well.

Limits: a resume from before what the stream still holds replays at most
``replay_max`` entries (the newest) and says in a ``status`` event how many
it skipped; a viewer whose inbox outgrows its bytes is told it fell behind
and its response ends (it resumes from its last id); a viewer whose writes
stay stuck (a client that does not read) is dropped and its response
ended by the hook the transport installs.

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

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator

import redis

from redis_logstream.console.fanout import INBOX_BYTES, Item, StreamHub, Subscription, id_key
from redis_logstream.reading.entries import Entry, decode_entry
from redis_logstream.reading.reader import StreamReader

__all__ = ["HEARTBEAT", "EventStream", "log_event", "status_event"]

RETRY_MS = 2000
PREAMBLE = b"retry: %d\n: redis-logstream\n\n" % RETRY_MS
HEARTBEAT = b": ping\n\n"
#: Entries per backlog read of a resume: a page is held about three times
#: over (reply, entries, SSE bytes), and records may be 64 KB each.
BACKLOG_PAGE = 100
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
    return _status({"redis": "up" if up else "down", "message": message})


def _status(fields: dict[str, object]) -> bytes:
    return b"event: status\ndata: %s\n\n" % json.dumps(fields).encode()


def _ready_event(history: int, cursor: tuple[int, int]) -> bytes:
    """The end of the history, with the id to resume from: the browser's
    Last-Event-ID then holds a resume point even if no record came yet."""
    return b'id: %d-%d\nevent: ready\ndata: {"history": %d}\n\n' % (*cursor, history)


def _behind_event(max_bytes: int) -> bytes:
    return _status(
        {
            "behind": True,
            "message": f"this viewer fell behind (over {max_bytes} bytes waiting); "
            "the response ends and a reconnect resumes from the last record received",
        }
    )


def _skipped_event(skipped: int | None, replay_max: int) -> bytes:
    """``skipped`` is None when Redis would not say (a reader user without XLEN)."""
    count = "Older records" if skipped is None else f"{skipped} older records"
    return _status(
        {
            "skipped": skipped,
            "message": f"{count} were not replayed: the resume point is older than "
            f"the stream's history, and a resume replays at most {replay_max}",
        }
    )


class EventStream:
    """One viewer's response: the backlog from Redis, then the shared live feed.

    ``resume_after`` (a ``Last-Event-ID``) wins over ``history``.  Call
    :meth:`open` before the response starts, so that Redis being down is
    an HTTP error the browser retries, not a broken stream.  ``on_close``
    runs once when the response is over (a per-user slot is given back);
    ``abort`` ends a WSGI response stuck writing (shuts its socket).
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
        inbox_bytes: int = INBOX_BYTES,
        write_timeout: float = 30.0,
        replay_max: int = 500,
        on_close: Callable[[], None] | None = None,
        abort: Callable[[], None] | None = None,
    ) -> None:
        self.hub = hub
        self.reader = reader
        self.context = context
        self.history = history
        self.resume_after = resume_after
        self.heartbeat = heartbeat
        self.max_age = max_age
        self.inbox_bytes = inbox_bytes
        self.write_timeout = write_timeout
        self.replay_max = replay_max
        self._on_close = on_close
        self._abort = abort
        self.subscription: Subscription | None = None
        self.cursor = (0, 0)
        self.sent_history = 0
        self._first = b""
        self._more = False
        self._deadline = self._quiet_since = 0.0

    def open(self) -> None:
        """Join the live feed, then read the first backlog page (order matters:
        see :mod:`.fanout`).  Raises redis errors."""
        # A viewer reads its inbox at least once per heartbeat, between two
        # writes; one that stops reading (a response nobody iterates, a
        # write stuck on a client that does not read) loses its place.
        self.subscription = self.hub.subscribe(
            self.context,
            stale_after=self.heartbeat + self.write_timeout,
            max_bytes=self.inbox_bytes,
        )
        self.subscription.on_stale = self._abort
        try:
            self._first = self._first_page()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.subscription is not None:
            self.subscription.on_stale = None
            self.subscription.close()
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()

    def _progress(self) -> None:
        """A backlog page went out: the viewer is reading, not stuck."""
        if self.subscription is not None:
            self.subscription.seen = time.monotonic()

    # -- the backlog ---------------------------------------------------------

    def _first_page(self) -> bytes:
        if self.resume_after is not None:
            self.cursor = id_key(self.resume_after)
            return self._resume_start()
        snapshot = self.reader.snapshot(self.context, self.history)
        self.cursor = id_key(snapshot.cursor)
        self.sent_history = len(snapshot.entries)
        return b"".join(log_event(entry) for entry in snapshot.entries)

    def _resume_start(self) -> bytes:
        """The first resume page, or, when the resume point is older than the
        stream's first entry, its newest ``replay_max`` entries and a word on
        how many were skipped (an old id must not replay a whole stream)."""
        client, key = self.reader.client, self.reader.stream(self.context)
        first = client.xrange(key, "-", "+", count=1)
        if not first or id_key(decode_entry(*first[0]).id) <= self.cursor:
            return self._resume_page()
        try:
            skipped: int | None = client.xlen(key) - self.replay_max
        except redis.exceptions.NoPermissionError:  # a reader user without +xlen
            skipped = None
        if skipped is not None and skipped <= 0:
            return self._resume_page()
        # Resume after the newest entry not replayed: walk back to it a page
        # at a time (bounded memory), then page forward as any resume does.
        wanted, high = self.replay_max + 1, "+"
        while wanted > 0:
            rows = client.xrevrange(key, high, "-", count=min(BACKLOG_PAGE, wanted))
            if not rows:
                return self._resume_page()  # fewer than that: nothing to skip
            wanted -= len(rows)
            high = f"({decode_entry(*rows[-1]).id}"
        self.cursor = id_key(high[1:])
        return _skipped_event(skipped, self.replay_max) + self._resume_page()

    def _resume_page(self) -> bytes:
        """The next page of entries after the cursor (a reconnecting viewer)."""
        start = "({}-{}".format(*self.cursor)
        key = self.reader.stream(self.context)
        rows = self.reader.client.xrange(key, start, "+", count=BACKLOG_PAGE)
        self._more = len(rows) == BACKLOG_PAGE
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
        return _ready_event(self.sent_history, self.cursor)

    def _ending(self) -> bytes:
        """The last bytes: why it ends (fell behind) and come back soon."""
        if self.subscription is not None and self.subscription.overflowed:
            return _behind_event(self.inbox_bytes) + COME_BACK_SOON
        return COME_BACK_SOON

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
                self._progress()
                yield self._resume_page()
            yield self._start_live()
            while (wait := self._next_wait()) is not None:
                chunk = self._after_wait(self.subscription.wait(wait))
                if chunk:
                    yield chunk
            yield self._ending()
        finally:
            self.close()

    async def _async_events(self) -> AsyncIterator[bytes]:
        """For ASGI: Django (5.0+) cancels this when the client disconnects."""
        from asgiref.sync import sync_to_async

        assert self.subscription is not None, "open() first"
        self.subscription.on_stale = _canceller()
        try:
            yield PREAMBLE + self._first
            while self._more:
                self._progress()
                yield await sync_to_async(self._resume_page, thread_sensitive=False)()
            yield self._start_live()
            while (wait := self._next_wait()) is not None:
                chunk = self._after_wait(await self.subscription.wait_async(wait))
                if chunk:
                    yield chunk
            yield self._ending()
        finally:
            self.close()


def _canceller() -> Callable[[], None] | None:
    """Ends the running ASGI response from another thread: its task is the
    one awaiting the server's ``send()``, which a client that does not read
    blocks for good (the server then closes the connection)."""
    task = asyncio.current_task()
    if task is None:
        return None
    loop = task.get_loop()

    def cancel() -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: so is the task
            loop.call_soon_threadsafe(task.cancel)

    return cancel


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
