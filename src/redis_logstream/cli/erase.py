"""Erasing contexts' records from the streams they share with others.

Deleting ``stream:logs:User.alice`` leaves copies of each of her records in
the site-wide global stream and, for records a consumer group gave up on,
in the dead-letter streams (``stream:logs/dead-letter/<group>``, whose
entries carry the original record in ``data``).  Erasure reads those
streams page by page (``XRANGE ... COUNT``), so memory stays bounded by one
page whatever the stream holds, and removes with ``XDEL`` the entries whose
record's ``context`` is one of the contexts being erased.

The scan stops at the stream's last entry when it began: records that
arrive during the scan belong to contexts that are still writing, and a
dry run counts exactly what a real run at that moment would remove.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from redis_logstream.reading.entries import _text, pages

__all__ = ["PAGE", "Erasure", "erase_entries"]

#: Entries read per XRANGE: bounds memory (a page of 65 KB records is ~65 MB
#: at worst, a few hundred KB for ordinary ones) and each call's time in Redis.
PAGE = 1000


@dataclass(frozen=True)
class Erasure:
    """What one stream gave up: the entries read and those (to be) removed."""

    key: Any
    scanned: int
    removed: int


def _needles(contexts: Collection[str]) -> tuple[bytes, ...]:
    return tuple(context.encode("utf-8", "surrogatepass") for context in contexts)


def _context_of(data: Any) -> Any:
    try:
        record = json.loads(data)
    except (ValueError, TypeError, RecursionError):
        return None
    return record.get("context") if isinstance(record, dict) else None


def _matches(fields: Any, contexts: Collection[str], needles: tuple[bytes, ...]) -> bool:
    data = fields.get(b"data", fields.get("data"))
    if data is None:
        return False
    raw = data if isinstance(data, bytes) else str(data).encode("utf-8", "surrogatepass")
    # Without a backslash a JSON string holds its text literally: a record
    # whose bytes contain none of the contexts cannot belong to one.
    if b"\\" not in raw and not any(needle in raw for needle in needles):
        return False
    return _context_of(raw) in contexts


def _pages(client: Any, key: Any, page: int) -> Iterator[list[Any]]:
    """Pages up to the newest entry when the erasure starts: what is written
    meanwhile is not read (the reader's paging, bounded at both ends)."""
    last = client.xrevrange(key, count=1)
    if last:
        yield from pages(client, key, "-", _text(last[0][0]), page)


def erase_entries(
    client: Any, key: Any, contexts: Collection[str], *, dry_run: bool = False, page: int = PAGE
) -> Erasure:
    """Remove (or with ``dry_run`` count) the entries of ``contexts`` in ``key``.

    One page in memory at a time; one XDEL per page that holds any.
    """
    wanted = frozenset(contexts)
    needles = _needles(wanted)
    scanned = removed = 0
    for rows in _pages(client, key, page):
        scanned += len(rows)
        ids = [entry_id for entry_id, fields in rows if _matches(fields, wanted, needles)]
        if not ids:
            continue
        removed += len(ids) if dry_run else client.xdel(key, *ids)
    return Erasure(key, scanned, removed)
