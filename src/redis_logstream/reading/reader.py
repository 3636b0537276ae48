"""Reading a log stream back: history, then a live follow with no gap.

Every reader (``manage.py tail_logs``, ``redis-logstream tail``, the
Server-Sent-Events view) shows the same thing: the last records of a
context's stream, then whatever arrives after them.  They share this module
so that the hard parts are solved once:

- **No gap, no duplicate.**  :meth:`StreamReader.snapshot` returns the
  history *and* the cursor to follow from (the newest id it saw, even when a
  filter hid that entry); :meth:`StreamReader.follow` reads strictly after a
  cursor with ``XREAD BLOCK``.  Stream ids are totally ordered, so nothing
  written between the two calls is lost or shown twice.  The same ids are
  the SSE event ids: a ``Last-Event-ID`` is a cursor.
- **Readers outlive Redis hiccups.**  A follower that loses Redis retries
  with capped, jittered backoff from the same cursor, and says so once.
- **Memory does not grow with the stream.**  :meth:`StreamReader.window`
  reads a history of any length as it is consumed, no read asking for more
  than a page: ``tail -n all`` prints a million entries holding one page.
- **Bad data never stops a reader.**  An entry that is not our JSON becomes
  a record with the raw text as its message and level ``"?"``
  (:mod:`.entries`, re-exported here with the level/logger filter).
- **Stopping is cooperative.**  A ``threading.Event`` or a timeout ends a
  follow between two blocking reads (an SSE view must be able to end).
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from redis_logstream.naming import Names
from redis_logstream.reading.entries import Entry, EntryFilter, decode_entry, pages, parse_level
from redis_logstream.redis import topology
from redis_logstream.redis.connection import for_scheme
from redis_logstream.redis.topology import connection_kwargs

__all__ = [
    "DEFAULT_BLOCK_MS",
    "Entry",
    "EntryFilter",
    "Snapshot",
    "StreamReader",
    "Window",
    "client_for_url",
    "decode_entry",
    "parse_entry_id",
    "parse_level",
    "parse_since",
]

#: How long one XREAD waits for new entries before the follower checks
#: whether it should stop (and an SSE view may send a heartbeat).
DEFAULT_BLOCK_MS = 5000
CONNECT_TIMEOUT = 2.0
#: A read may take the whole block plus a round trip: the socket timeout
#: must be longer, or every idle XREAD would look like a dead server.
READ_MARGIN = 3.0
PAGE = 500
_BACKOFF_FIRST, _BACKOFF_CAP = 0.1, 2.0
_MAX_SEQ = 2**64 - 1

_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h|d|w))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_entry_id(text: str) -> str:
    """Check a stream entry id (``<ms>-<seq>``, as SSE ids and cursors are)."""
    match = _ID.fullmatch(text.strip())
    if not match or max(int(match.group(1)), int(match.group(2))) > _MAX_SEQ:
        raise ValueError(f"{text!r} is not a stream entry id such as 1700000000000-0")
    return f"{int(match.group(1))}-{int(match.group(2))}"


def parse_since(text: str, now_ms: Callable[[], int]) -> str:
    """The exclusive start id for ``--since``: an entry id, or a duration
    (``30s``, ``10m``, ``2h``, ``1d``, ``1h30m``) back from ``now_ms()``.

    A duration becomes the last possible id of the millisecond before it,
    so every entry of the window itself is included.
    """
    text = text.strip()
    if _ID.fullmatch(text):
        return parse_entry_id(text)
    if not _DURATION.fullmatch(text):
        raise ValueError(
            f"--since {text!r}: give a duration (30s, 10m, 2h, 1d, 1h30m) "
            "or an entry id such as 1700000000000-0"
        )
    seconds = sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))
    start = now_ms() - int(seconds * 1000)
    return "0-0" if start <= 0 else f"{start - 1}-{_MAX_SEQ}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _reply_rows(reply: Any) -> list[Any]:
    """The entries of a one-stream XREAD reply, whatever shape redis-py gave.

    RESP2: ``[[key, entries]]``; RESP3: ``{key: [entries]}`` (redis-py's
    legacy shape) or ``{key: entries}`` (its unified one).
    """
    if not reply:
        return []
    if not isinstance(reply, dict):
        return list(reply[0][1])
    rows = next(iter(reply.values()))
    wrapped = rows and isinstance(rows[0], list)
    if wrapped and (not rows[0] or isinstance(rows[0][0], (list, tuple))):
        return list(rows[0])
    return list(rows)


@dataclass(frozen=True)
class Snapshot:
    """History, oldest first, and the cursor to follow from without a gap."""

    entries: list[Entry]
    cursor: str


@dataclass(frozen=True)
class Window:
    """History read as it is consumed, oldest first, and the cursor to follow
    from without a gap (known before the first entry is read)."""

    entries: Iterator[Entry]
    cursor: str


class StreamReader:
    """Reads one naming scheme's streams: history and live follow.

    ``client`` is any redis-py client; its socket timeout caps the XREAD
    block (a read that outlasts the socket timeout would look like an
    outage), so a short-timeout client polls more often instead of failing.
    """

    def __init__(
        self,
        client: Any,
        names: Names | None = None,
        *,
        block_ms: int = DEFAULT_BLOCK_MS,
        page: int | None = None,
    ) -> None:
        self.client = client
        self.names = names or Names()
        #: The most entries one read asks for, and the most a history holds
        #: at once (None: :data:`PAGE`).
        self.page = max(1, int(PAGE if page is None else page))
        self.block_ms = min(max(1, int(block_ms)), _max_block_ms(client))

    def stream(self, context: str | None) -> str:
        """The stream key of ``context`` (None: the global stream)."""
        return self.names.stream(context)

    def now_ms(self) -> int:
        """Redis's clock: stream ids come from it, not from ours."""
        seconds, micros = self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    def history(
        self,
        context: str | None,
        count: int | None,
        since: str | None = None,
        match: Callable[[Entry], bool] | None = None,
    ) -> list[Entry]:
        """The last ``count`` entries (None: all) after ``since``, oldest first."""
        return self.snapshot(context, count, since, match).entries

    def snapshot(
        self,
        context: str | None,
        count: int | None,
        since: str | None = None,
        match: Callable[[Entry], bool] | None = None,
    ) -> Snapshot:
        """History plus the cursor to give :meth:`follow`, as a list: for a
        bounded ``count`` (:meth:`window` streams a history of any length)."""
        window = self.window(context, count, since, match)
        return Snapshot(list(window.entries), window.cursor)

    def window(
        self,
        context: str | None,
        count: int | None,
        since: str | None = None,
        match: Callable[[Entry], bool] | None = None,
    ) -> Window:
        """The last ``count`` entries (None: all) after ``since``, oldest
        first, read as they are consumed, a page at a time; and the cursor.

        With ``match``, ``count`` counts matching entries.  No read asks for
        more than the reader's page of entries, and at most a page is held:
        a history longer than a page is found walking backwards (counting
        only), then read forwards up to the newest entry the walk saw.  The
        cursor is that newest id, even if ``match`` rejected it, so the
        follower neither reads it again nor misses what came after it.
        """
        key = self.stream(context)
        after = None if since is None else parse_since(since, self.now_ms)
        low = "-" if after is None else f"({after}"
        page = self.page
        if count == 0 or count is None:
            rows = self.client.xrevrange(key, "+", low, count=1)
            newest = _text(rows[0][0]) if rows else None
            if count == 0 or newest is None:
                return Window(iter(()), newest or after or "0-0")
            return Window(self._forward(key, low, newest, match), newest)
        found: list[Entry] = []  # kept only while they fit in a page
        seen, start, newest, high = 0, low, None, "+"
        while seen < count:
            want = page if match is not None else min(page, count - seen)
            rows = self.client.xrevrange(key, high, low, count=want)
            for entry_id, fields in rows:
                newest = newest or _text(entry_id)
                if match is not None or count <= page:
                    entry = decode_entry(entry_id, fields)
                    if match is not None and not match(entry):
                        continue
                    if count <= page:
                        found.append(entry)
                seen += 1
                if seen == count:
                    start = _text(entry_id)
                    break
            if len(rows) < want:
                break
            high = f"({_text(rows[-1][0])}"
        cursor = newest or after or "0-0"
        if count <= page or newest is None:
            found.reverse()
            return Window(iter(found), cursor)
        return Window(self._forward(key, start, newest, match), cursor)

    def _forward(
        self, key: str, low: str, high: str, match: Callable[[Entry], bool] | None
    ) -> Iterator[Entry]:
        """The entries from ``low`` to ``high``, oldest first, a page per read."""
        for rows in pages(self.client, key, low, high, self.page):
            for entry_id, fields in rows:
                entry = decode_entry(entry_id, fields)
                if match is None or match(entry):
                    yield entry

    def follow(
        self,
        context: str | None,
        after_id: str,
        *,
        block_ms: int | None = None,
        stop: threading.Event | None = None,
        timeout: float | None = None,
        match: Callable[[Entry], bool] | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> Iterator[Entry]:
        """Entries strictly after ``after_id``, as they arrive (see :meth:`ticks`)."""
        for entry in self.ticks(
            context,
            after_id,
            block_ms=block_ms,
            stop=stop,
            timeout=timeout,
            match=match,
            notify=notify,
        ):
            if entry is not None:
                yield entry

    def ticks(
        self,
        context: str | None,
        after_id: str,
        *,
        block_ms: int | None = None,
        stop: threading.Event | None = None,
        timeout: float | None = None,
        match: Callable[[Entry], bool] | None = None,
        notify: Callable[[str], None] | None = None,
    ) -> Iterator[Entry | None]:
        """Like :meth:`follow`, but yields None after each read that shows nothing.

        A caller that must act while nothing is shown (send a heartbeat, the
        only way a WSGI server learns the client left) gets its turn every
        ``block_ms`` at the latest, even while ``match`` hides every new
        entry of a busy stream.
        """
        for batch in self.batches(
            context, after_id, block_ms=block_ms, stop=stop, timeout=timeout, notify=notify
        ):
            shown = [entry for entry in batch if match is None or match(entry)]
            if not shown:
                yield None
            yield from shown

    def batches(
        self,
        context: str | None,
        after_id: str,
        *,
        block_ms: int | None = None,
        stop: threading.Event | None = None,
        timeout: float | None = None,
        notify: Callable[[str], None] | None = None,
        count: int | None = None,
    ) -> Iterator[list[Entry]]:
        """Each read's entries strictly after ``after_id``; ``[]`` after an idle block.

        ``block_ms`` (default: the reader's) sets how long one read waits,
        so how late a ``stop`` is seen.  Ends when ``stop`` is set or
        ``timeout`` seconds have passed; ``count`` (default: the reader's page)
        caps the entries of one read, so the memory one batch of large
        records takes.  Lost connections are retried from
        the same cursor with capped, jittered backoff; ``notify`` hears once
        that Redis went away and once that it came back.
        """
        key = self.stream(context)
        cursor = parse_entry_id(after_id)
        every = self.block_ms if block_ms is None else min(max(1, block_ms), self.block_ms)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.0
        failing = False
        while stop is None or not stop.is_set():
            block = every
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                block = max(1, min(block, int(left * 1000)))
            try:
                reply = self.client.xread({key: cursor}, count=count or self.page, block=block)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if not failing and notify is not None:
                    notify(f"lost Redis ({_one_line(exc)}); reconnecting")
                failing = True
                delay = min(_BACKOFF_CAP, delay * 2 or _BACKOFF_FIRST)
                pause = delay * random.uniform(0.5, 1.0)
                if deadline is not None:
                    pause = min(pause, max(0.0, deadline - time.monotonic()))
                if stop is not None:
                    stop.wait(pause)
                else:
                    time.sleep(pause)
                continue
            if failing:
                failing, delay = False, 0.0
                if notify is not None:
                    notify("Redis is back; following again")
            batch = [decode_entry(entry_id, fields) for entry_id, fields in _reply_rows(reply)]
            if batch:
                cursor = batch[-1].id
            yield batch


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _max_block_ms(client: Any) -> int:
    """The longest XREAD block that fits in the client's socket timeout."""
    timeout = connection_kwargs(client).get("socket_timeout")
    if isinstance(timeout, (int, float)) and timeout > 0:
        return max(1, int(timeout * 750))
    return DEFAULT_BLOCK_MS * 100


def client_for_url(
    url: str, *, block_ms: int = DEFAULT_BLOCK_MS, connect_timeout: float = CONNECT_TIMEOUT
) -> Any:
    """A client for readers: quick to fail when Redis is unreachable, patient
    enough for a blocking XREAD, and without redis-py's own retries (the
    follower retries, from its cursor).  Any URL of :data:`.topology.SCHEMES`:
    a cluster URL gives a ``RedisCluster``."""
    kwargs = {
        "socket_connect_timeout": connect_timeout,
        "socket_timeout": block_ms / 1000 + READ_MARGIN,
        "socket_keepalive": True,
        "retry": Retry(NoBackoff(), 0),
        "retry_on_timeout": False,
        "health_check_interval": 0,
    }
    return topology.client_for_url(url, for_scheme(url, kwargs))
