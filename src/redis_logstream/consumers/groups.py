"""The Redis side of a consumer: one group over one or more streams.

Every command a consumer sends is here, so that :mod:`.consumer` reads as
the loop it is: create the groups, list what this consumer left pending,
claim what dead consumers left, deliver those one at a time with their
delivery count, read new records with the previous batch's
acknowledgements in the same round trip, spot records trimmed before the
group read them, and move given-up records to the dead-letter stream.

Delivery counts live in Redis (the pending entries list), so they survive
any restart: a new record's first read counts 1, each later hand-out of a
pending record (``XCLAIM``) one more.  Pending records are listed and
claimed without counting (``XPENDING``, ``XCLAIM JUSTID``) and counted one
by one as they reach the callback: the records queued behind one that
crashes the consumer are not charged for its crashes.
"""

from __future__ import annotations

import time
from typing import Any

from redis.exceptions import ResponseError

from redis_logstream.consumers.contract import LogEntry
from redis_logstream.redis.topology import is_cluster

__all__ = ["GroupStreams"]

#: Dead-letter streams keep about this many records.
DEAD_LETTER_MAXLEN = 10_000
#: Seconds between two checks of a stream's trimmed-before-read counter.
MISSED_EVERY = 1.0


def _text(value: Any) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def _id(value: Any) -> tuple[int, int]:
    ms, _, seq = _text(value).partition("-")
    return int(ms), int(seq or 0)


class GroupStreams:
    """``streams`` read by consumer ``name`` of ``group``."""

    def __init__(
        self, client: Any, streams: list[str], group: str, name: str, *, dead_letter: str
    ) -> None:
        self.client = client
        self.streams = list(dict.fromkeys(streams))
        self.group = group
        self.name = name
        self.dead = dead_letter
        self._cluster = is_cluster(client)
        self._missed_seen: dict[str, int] = {}
        self._missed_checked = 0.0

    def ping(self) -> None:
        self.client.ping()

    def create_groups(self, start: str) -> None:
        """XGROUP CREATE ... MKSTREAM for each stream whose group is missing.

        A group created at ``0`` on a capped stream counts the entries
        trimmed before it existed as read (``ENTRIESREAD``, Redis 7), so
        they are not reported as missed by it.
        """
        for stream in self.streams:
            entries_read = None
            if start != "$":
                entries_read = self._trimmed_so_far(stream)
            try:
                self.client.xgroup_create(
                    stream, self.group, id=start, mkstream=True, entries_read=entries_read
                )
            except ResponseError as exc:
                if "BUSYGROUP" in str(exc):
                    continue  # another consumer (or an earlier run) made it
                if entries_read is None or "syntax" not in str(exc).lower():
                    raise
                # Redis 6.2 knows no ENTRIESREAD (nor the missed counters).
                self.client.xgroup_create(stream, self.group, id=start, mkstream=True)

    def _trimmed_so_far(self, stream: str) -> int | None:
        try:
            info = self.client.xinfo_stream(stream)
        except ResponseError:  # no such key yet
            return None
        added = info.get("entries-added")
        return None if added is None else max(0, int(added) - int(info["length"]))

    def own_pending(self, count: int) -> list[tuple[str, str]]:
        """What this consumer name was given before and never acknowledged,
        as (stream, id): listed (``XPENDING``), not delivered, so that their
        delivery counts grow only as :meth:`take` hands them out one by one."""
        found: list[tuple[str, str]] = []
        for stream in self.streams:
            after = "-"
            while True:
                rows = self.client.xpending_range(
                    stream, self.group, min=after, max="+", count=count, consumername=self.name
                )
                found.extend((stream, _text(row["message_id"])) for row in rows)
                if len(rows) < count:
                    break
                after = "(" + _text(rows[-1]["message_id"])
        return found

    def claim(self, idle_seconds: float, count: int) -> list[tuple[str, str]]:
        """Entries pending longer than ``idle_seconds`` with any consumer (a
        consumer that died left them), made this consumer's without counting
        a delivery (``XCLAIM ... JUSTID``): :meth:`take` counts each one as
        it hands it out."""
        found: list[tuple[str, str]] = []
        idle_ms = max(1, int(idle_seconds * 1000))
        for stream in self.streams:
            rows = self.client.xpending_range(
                stream, self.group, min="-", max="+", count=count, idle=idle_ms
            )
            ids = [row["message_id"] for row in rows]
            if ids:
                taken = self.client.xclaim(stream, self.group, self.name, idle_ms, ids, justid=True)
                found.extend((stream, _text(entry_id)) for entry_id in taken)
        return found

    def take(self, stream: str, entry_id: str, acks: dict[str, list[str]]) -> LogEntry | None:
        """Deliver one pending entry again (``XCLAIM``, which counts the
        delivery) with its delivery count, acknowledging ``acks`` in the same
        round trip; None when it is no longer pending or no longer stored."""
        pipe = self.client.pipeline(transaction=False)
        if self._cluster:
            self.ack(acks)
        else:
            for ack_stream, ids in acks.items():
                pipe.xack(ack_stream, self.group, *ids)
        pipe.xclaim(stream, self.group, self.name, 0, [entry_id])
        pipe.xpending_range(stream, self.group, min=entry_id, max=entry_id, count=1)
        *_, rows, pending = pipe.execute()
        if not rows or not pending:
            return None
        entries = self._entries(stream, rows, deliveries=int(pending[0]["times_delivered"]))
        return entries[0] if entries else None

    def uncount(self, entries: list[LogEntry]) -> None:
        """Entries read and never handed to the callback (the consumer stopped
        first) go back to zero deliveries: stopping is no fault of theirs."""
        by_stream: dict[str, list[str]] = {}
        for entry in entries:
            by_stream.setdefault(entry.stream, []).append(entry.id)
        for stream, ids in by_stream.items():
            self.client.xclaim(stream, self.group, self.name, 0, ids, retrycount=0, justid=True)

    def read(self, acks: dict[str, list[str]], count: int, block_ms: int) -> list[LogEntry]:
        """Acknowledge ``acks`` and read new entries, in one round trip
        (one per stream on a cluster, where streams live in other slots)."""
        if not self._cluster or len(self.streams) == 1:
            pipe = self.client.pipeline(transaction=False)
            for stream, ids in acks.items():
                pipe.xack(stream, self.group, *ids)
            pipe.xreadgroup(
                self.group,
                self.name,
                dict.fromkeys(self.streams, ">"),
                count=count,
                block=block_ms,
            )
            reply = pipe.execute()[-1] or []
            return [e for stream, rows in reply for e in self._entries(_text(stream), rows)]
        self.ack(acks)
        found: list[LogEntry] = []
        share = max(1, block_ms // len(self.streams))
        for stream in self.streams:
            reply = self.client.xreadgroup(
                self.group, self.name, {stream: ">"}, count=count, block=None if found else share
            )
            found.extend(self._entries(stream, reply[0][1] if reply else []))
        return found

    def ack(self, acks: dict[str, list[str]]) -> None:
        for stream, ids in acks.items():
            if ids:
                self.client.xack(stream, self.group, *ids)

    def _entries(self, stream: str, rows: list[Any], deliveries: int = 1) -> list[LogEntry]:
        found = []
        for entry_id, fields in rows:
            if not fields:  # trimmed while pending: nothing left to hand over
                self.client.xack(stream, self.group, entry_id)
                continue
            found.append(LogEntry.from_fields(stream, entry_id, fields, deliveries))
        return found

    def dead_letter(
        self, entry: LogEntry, attempts: int, reason: str, error: str | None = None
    ) -> None:
        """Keep a given-up record, with where it came from and why: ``reason``
        in one line, ``error`` the callback's traceback when it raised."""
        fields = {
            "data": entry.raw,
            "stream": entry.stream,
            "id": entry.id,
            "group": self.group,
            "consumer": self.name,
            "attempts": attempts,
            "reason": reason,
        }
        if error:
            fields["error"] = error
        self.client.xadd(self.dead, fields, maxlen=DEAD_LETTER_MAXLEN, approximate=True)

    def missed(self) -> dict[str, int]:
        """Entries trimmed before the group read them, since the last call
        (checked at most once a second; Redis 7)."""
        now = time.monotonic()
        if now - self._missed_checked < MISSED_EVERY:
            return {}
        self._missed_checked = now
        found = {}
        for stream in self.streams:
            total = self._missed_total(stream)
            if total is None:
                continue
            new = total - self._missed_seen.get(stream, 0)
            if new > 0:
                found[stream] = new
            self._missed_seen[stream] = max(total, self._missed_seen.get(stream, 0))
        return found

    def _missed_total(self, stream: str) -> int | None:
        """entries added - entries the group read - entries still unread,
        from one consistent snapshot; None when it cannot be told."""
        pipe = self.client.pipeline(transaction=not self._cluster)
        pipe.xinfo_stream(stream)
        pipe.xinfo_groups(stream)
        try:
            info, groups = pipe.execute()
        except ResponseError:
            return None
        group = next((g for g in groups if _text(g.get("name")) == self.group), None)
        added = info.get("entries-added")
        if group is None or added is None:
            return None  # Redis 6.2 keeps no such counters
        delivered = _id(group["last-delivered-id"])
        entries_read = group.get("entries-read")
        if entries_read is None:  # Redis leaves it unset until the group reads
            if delivered != (0, 0):
                return None
            entries_read = 0
        first = info.get("first-entry")
        if delivered >= _id(info["last-generated-id"]) or not first:
            unread = 0
        elif _id(first[0]) > delivered:
            unread = int(info["length"])
        else:
            return None  # somewhere in the middle of the stream: no exact count
        return int(added) - int(entries_read) - unread
