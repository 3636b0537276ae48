"""Processing records with a Redis Streams consumer group.

:func:`consume` reads the chosen streams with ``XREADGROUP`` and calls a
callback for each record; the record is acknowledged once the callback has
returned.  The guarantees are those of a consumer group:

- Each group sees every record; inside a group each record goes to one
  consumer.  Several consumers of one group share the work; several groups
  (an alerter, an archiver) each get everything.
- At least once: a record is acknowledged only after it was handled, so a
  consumer that crashes (even ``kill -9``) leaves its records pending; the
  same consumer restarted reads them again first, and any other consumer of
  the group claims them (``XPENDING IDLE``, ``XCLAIM``) once they have waited
  ``claim_after`` seconds.  A crash between handling and acknowledging
  gives that record a second delivery: acknowledgements are sent once per
  batch, with the next read, so at most one batch is handled twice.
- At most ``max_deliveries`` deliveries: Redis counts each record's
  deliveries in the group's pending entries list, so the count survives
  restarts; a record delivered that often without an acknowledgement (a
  callback that raises on it, a consumer killed on it) is copied to the
  dead-letter stream and acknowledged, and the group goes on.
- Streams are capped: a group that falls further behind than
  ``stream_maxlen`` loses the oldest records to trimming.  The consumer
  notices (from the group's read counter and the stream's added counter,
  Redis 7) and says how many, once per occurrence.

The exceptions a callback raises to say otherwise (Nack, Drop,
HaltConsumer) are in :mod:`redis_logstream.consumers`.
"""

from __future__ import annotations

import heapq
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from redis_logstream.conf import resolve_options
from redis_logstream.consumers.contract import LogEntry, Nack
from redis_logstream.consumers.groups import GroupStreams
from redis_logstream.consumers.runner import (
    DEFAULT_MAX_DELIVERIES,
    CallbackRunner,
    built_callback,
    delivery_limit,
)
from redis_logstream.context import INTERNAL, user_id_context
from redis_logstream.naming import Names
from redis_logstream.reading.reader import READ_MARGIN
from redis_logstream.redis.connection import client_factory, names_for
from redis_logstream.redis.topology import clone
from redis_logstream.shipping.diagnostics import report

__all__ = ["Consumer", "consume", "default_consumer_name"]

DEFAULT_BLOCK_MS = 2000
CLIENT_NAME = "redis_logstream:consumer"
_BACKOFF_FIRST, _BACKOFF_CAP = 0.1, 5.0


def default_consumer_name() -> str:
    """``<host>-<pid>``: unique per process, readable in ``XINFO CONSUMERS``."""
    return f"{os.environ.get('HOSTNAME') or socket.gethostname()}-{os.getpid()}"


class Consumer(CallbackRunner):
    """One consumer of a group, reading ``streams`` and calling ``callback``.

    ``run()`` blocks until :meth:`stop` is called (from a signal handler or
    another thread), the callback raises HaltConsumer or an unexpected
    exception (on a delivery before a record's last); it returns the exit
    status.  ``match`` (an EntryFilter, say) lets records through to the
    callback; the others are acknowledged and counted as ``skipped``.
    ``max_retries`` is the older spelling of ``max_deliveries - 1``.
    """

    def __init__(
        self,
        callback: Callable[[LogEntry], Any],
        *,
        client: Any,
        names: Names,
        streams: list[str],
        group: str,
        consumer: str | None = None,
        start: str = "$",
        batch: int = 100,
        block_ms: int = DEFAULT_BLOCK_MS,
        claim_after: float = 60.0,
        retry_after: float = 5.0,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        max_retries: int | None = None,
        dead_letter: str | None = None,
        match: Callable[[LogEntry], bool] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        if not streams:
            raise ValueError("give at least one stream: contexts, or include_global=True")
        for name, value in (("batch", batch), ("block_ms", block_ms)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, not {value!r}")
        name = consumer or default_consumer_name()
        super().__init__(
            callback,
            name,
            group,
            match=match,
            stop=stop,
            max_deliveries=delivery_limit(max_deliveries, max_retries),
        )
        dead = dead_letter or f"{names.stream_prefix}{names.channel_prefix}/dead-letter/{group}"
        self.streams = GroupStreams(client, streams, group, self.name, dead_letter=dead)
        self.start_id = start
        self.batch = batch
        self.block_ms = block_ms
        self.claim_after = claim_after
        self.retry_after = retry_after
        self._acks: dict[str, list[str]] = {}
        self._retries: list[tuple[float, int, LogEntry]] = []  # (due, tie-break, entry)
        self._unreached: list[LogEntry] = []  # read, never handed out: stopped first
        self._sequence = 0

    # -- the loop ----------------------------------------------------------

    def run(self) -> int:
        """Consume until stopped; return the exit status.

        What the callback logs is kept out of every RedisLogHandler of the
        process (the internal context): a consumer of the global stream
        would otherwise read its own output, and react to it, forever.
        """
        token = user_id_context.set(INTERNAL)
        try:
            self._connect()
            next_claim = 0.0
            while not self.stopping:
                try:
                    if time.monotonic() >= next_claim:
                        claimed = self.streams.claim(self.claim_after, self.batch)
                        self._redeliver(claimed, claimed=True)
                        next_claim = time.monotonic() + max(0.5, self.claim_after / 2)
                    self._note_missed(self.streams.missed())
                    self._retry_due()
                    self._handle_all(self._read())
                except (redis.ConnectionError, redis.TimeoutError, RedisClusterException) as exc:
                    self._wait_for_redis(exc)
                except redis.ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    report(
                        logging.WARNING,
                        "redis_logstream consumer %s: group %s is gone (Redis "
                        "restarted empty?); creating it again from the start of the streams",
                        self.name,
                        self.group,
                    )
                    self.streams.create_groups("0")
        finally:
            self._finish()
            user_id_context.reset(token)
        return self.status

    def _connect(self) -> None:
        delay = 0.0
        while not self.stopping:
            try:
                self.streams.create_groups(self.start_id)
                # What this consumer name left pending last time comes first.
                self._redeliver(self.streams.own_pending(self.batch))
                return
            except (redis.ConnectionError, redis.TimeoutError, RedisClusterException) as exc:
                delay = self._backoff(delay, exc)

    def _wait_for_redis(self, exc: Exception) -> None:
        delay = self._backoff(0.0, exc)
        while not self.stopping:
            try:
                self.streams.ping()
                report(logging.INFO, "redis_logstream consumer %s: Redis is back", self.name)
                return
            except (redis.ConnectionError, redis.TimeoutError, RedisClusterException) as again:
                delay = self._backoff(delay, again, quiet=True)

    def _backoff(self, delay: float, exc: Exception, quiet: bool = False) -> float:
        if not quiet and not delay:
            report(
                logging.WARNING,
                "redis_logstream consumer %s: cannot reach Redis (%s); retrying",
                self.name,
                " ".join(str(exc).split()),
            )
        delay = min(_BACKOFF_CAP, (delay or _BACKOFF_FIRST) * 2)
        self._stopping.wait(delay)
        return delay

    def _block(self) -> int:
        if not self._retries:
            return self.block_ms
        wait = self._retries[0][0] - time.monotonic()
        return max(1, min(self.block_ms, int(wait * 1000)))

    def _handle_all(self, rows: list[LogEntry]) -> None:
        """New records (their first delivery), in order."""
        for index, entry in enumerate(rows):
            if self.stopping:
                # Left pending for this consumer restarted, or another; not counted.
                self._unreached.extend(rows[index:])
                return
            self._handle(entry)

    def _redeliver(self, pending: Iterable[tuple[str, str]], claimed: bool = False) -> None:
        """Pending records, handed out one at a time, each delivery counted
        in Redis as it happens (and the acknowledgements so far sent with it)."""
        for stream, entry_id in pending:
            if claimed:
                self.counts["claimed"] += 1
            if self.stopping:
                return  # left pending, their counts untouched
            entry = self._take(stream, entry_id)
            if entry is not None:
                self._handle(entry)

    def _take(self, stream: str, entry_id: str) -> LogEntry | None:
        acks, self._acks = self._acks, {}
        try:
            entry = self.streams.take(stream, entry_id, acks)
        except BaseException:
            for ack_stream, ids in acks.items():
                self._acks.setdefault(ack_stream, [])[:0] = ids
            raise
        self.counts["acked"] += sum(map(len, acks.values()))
        return entry

    def _dead_letter(self, entry: LogEntry, attempts: int, reason: str, error: str | None) -> None:
        self.streams.dead_letter(entry, attempts, reason, error)

    @property
    def dead_letter_name(self) -> str:
        return self.streams.dead

    def _nack(self, entry: LogEntry, nack: Nack) -> None:
        delay = self.retry_after if nack.retry_after is None else nack.retry_after
        # Pending longer than claim_after, another consumer would take it too.
        delay = min(delay, self.claim_after / 2)
        self._sequence += 1
        heapq.heappush(self._retries, (time.monotonic() + delay, self._sequence, entry))

    def _retry_due(self) -> None:
        now = time.monotonic()
        due = []
        while self._retries and self._retries[0][0] <= now:
            due.append(heapq.heappop(self._retries)[2])
        self._redeliver((entry.stream, entry.id) for entry in due)

    def _ack(self, entry: LogEntry) -> None:
        self._acks.setdefault(entry.stream, []).append(entry.id)

    def _read(self) -> list[LogEntry]:
        """New entries, the acknowledgements of the last batch sent with the
        read; if that fails they are kept for the next attempt."""
        acks, self._acks = self._acks, {}
        try:
            rows = self.streams.read(acks, self.batch, self._block())
        except BaseException:
            for stream, ids in acks.items():
                self._acks.setdefault(stream, [])[:0] = ids
            raise
        self.counts["acked"] += sum(map(len, acks.values()))
        return rows

    def _note_missed(self, missed: dict[str, int]) -> None:
        for stream, count in missed.items():
            self.counts["missed"] += count
            report(
                logging.WARNING,
                "consumer %s: %d records of %s were trimmed before group %s read them "
                "(the stream is capped at stream_maxlen; consumers fell behind)",
                self.name,
                count,
                stream,
                self.group,
            )

    def _finish(self) -> None:
        """Acknowledge what was handled, uncount what was never handed out;
        close a class callback."""
        unreached, self._unreached = self._unreached, []
        if unreached:
            try:
                self.streams.uncount(unreached)
            except (redis.RedisError, RedisClusterException) as exc:
                report(
                    logging.WARNING,
                    "consumer %s: %d records read and not handled keep "
                    "one delivery in their count (%s)",
                    self.name,
                    len(unreached),
                    exc,
                )
        acks, self._acks = self._acks, {}
        if acks:
            try:
                self.streams.ack(acks)
                self.counts["acked"] += sum(map(len, acks.values()))
            except (redis.RedisError, RedisClusterException) as exc:
                report(
                    logging.WARNING,
                    "consumer %s: could not acknowledge %d handled records "
                    "(%s); they will be delivered again",
                    self.name,
                    sum(map(len, acks.values())),
                    exc,
                )
        self._close_callback()


def consume(
    callback: Callable[[LogEntry], Any] | type,
    *,
    group: str,
    contexts: Iterable[str] | None = None,
    include_global: bool = False,
    consumer: str | None = None,
    connection: str | None = None,
    url: str | None = None,
    client: Any = None,
    start: str = "$",
    batch: int = 100,
    block_ms: int = DEFAULT_BLOCK_MS,
    claim_after: float = 60.0,
    retry_after: float = 5.0,
    max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    max_retries: int | None = None,
    match: Callable[[LogEntry], bool] | None = None,
    callback_config: dict[str, Any] | None = None,
    stop: threading.Event | None = None,
) -> int:
    """Call ``callback(entry)`` for each record of the chosen streams, as
    consumer ``consumer`` of ``group``; return the exit status.

    ``callback`` may be a class: it is instantiated once with
    ``callback_config`` as keyword arguments, then called.  The Redis is
    found as the handler finds it (``client``, ``url``, else the cache alias
    ``connection`` or ``settings.REDIS_LOGSTREAM``), and so are the names.
    ``start`` is where a new group begins: ``"$"`` new records only, ``"0"``
    everything the streams still hold.  ``stop``, when set, stops the
    consumer as :meth:`Consumer.stop` does.  A record is delivered at most
    ``max_deliveries`` times (``max_retries``, the older spelling, is one
    less), then copied to the dead-letter stream and acknowledged.
    """
    redis_client, names = consumer_client(connection, url, client, block_ms)
    streams = [names.stream(context) for context in (contexts or ())]
    if include_global:
        streams.append(names.global_stream)
    callback = built_callback(callback, callback_config)
    worker = Consumer(
        callback,
        client=redis_client,
        names=names,
        streams=streams,
        group=group,
        consumer=consumer,
        start=start,
        batch=batch,
        block_ms=block_ms,
        claim_after=claim_after,
        retry_after=retry_after,
        max_deliveries=max_deliveries,
        max_retries=max_retries,
        match=match,
        stop=stop,
    )
    return worker.run()


def consumer_client(
    connection: str | None, url: str | None, client: Any, block_ms: int
) -> tuple[Any, Names]:
    """The consumer's own client (found as the handler's is) and the names.

    Its read timeout outlasts a blocking read; redis-py's retries stay off.
    """
    overrides = {
        k: v
        for k, v in (("connection", connection), ("url", url), ("client", client))
        if v is not None
    }
    options = resolve_options(overrides)
    base = client_factory(options)()
    timeout = block_ms / 1000 + READ_MARGIN
    return clone(base, CLIENT_NAME, socket_timeout=timeout), names_for(options)
