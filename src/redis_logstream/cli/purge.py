"""``purge``: deleting log streams, behind ``manage.py purge_log_context``
(and a later ``redis-logstream purge``), and when a user is deleted.

Streams expire on their own (``context_ttl``, ``global_ttl``); purging is
for when a user's records must go now.  A context's records live in its own
stream and, as copies, in the global stream and in dead-letter streams, so
purging a context also removes its entries from those (:mod:`.erase`)
unless told not to.  It says, stream by stream, what it deleted and how
much, because "done" is not an answer an operator can check.  ``--all``
finds streams with ``SCAN`` (``KEYS`` would freeze a busy Redis) and
deletes only keys that are streams.  Key names are printed escaped: another
program may have named a key with terminal controls.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TextIO

from redis_logstream.cli.cmdline import (
    USAGE,
    CommandFailed,
    add_naming_arguments,
    check_context,
    redis_errors,
)
from redis_logstream.cli.erase import Erasure, erase_entries
from redis_logstream.naming import Names
from redis_logstream.reading.render import safe
from redis_logstream.redis.topology import is_cluster

__all__ = [
    "DESCRIPTION",
    "PurgeRequest",
    "add_arguments",
    "all_streams",
    "dead_letter_streams",
    "epilog",
    "glob_escape",
    "purge",
]

DESCRIPTION = """\
Delete the Redis streams that keep the log records of the named contexts
(and the site-wide global stream with --global, or every log stream with
--all --yes, the consumer groups' dead-letter streams included), printing
for each stream whether it was deleted and how many entries it held.  The
named contexts' records are also removed from the global stream and from
the dead-letter streams, which keep copies of them (read page by page;
--streams-only skips that), printing how many entries went from each.

Streams also expire on their own (CONTEXT_TTL, GLOBAL_TTL); use this when
records must go now, e.g. when a user asks for their data to be removed.
Pub/sub channels keep nothing and need no purge.  --all finds the streams
with SCAN under the stream and channel prefixes, never with KEYS, and
deletes only keys that are streams; it asks for --yes."""

EPILOG = """\
EXIT STATUS
  0 when done (a stream that does not exist is reported, not an error), 1
  when Redis cannot be reached, 2 for an invalid argument (an invalid
  context, --all without --yes).

EXAMPLES
{extra}  Erase one user's records (her stream, and her entries in the global and
  dead-letter streams):
      {prog} User.alice

  See what would go, then delete two jobs' streams and the global one:
      {prog} import_1b4e28ba2fa1 import_9f0c3d --global --dry-run
      {prog} import_1b4e28ba2fa1 import_9f0c3d --global

  Delete every log stream of the site:
      {prog} --all --yes
"""


def epilog(prog: str, extra: str = "") -> str:
    """The EXIT STATUS and EXAMPLES sections of --help, for the command as
    typed (``extra``: examples of the caller's own, first)."""
    return EPILOG.format(prog=prog, extra=extra)


def add_arguments(parser: argparse.ArgumentParser, *, site: bool) -> None:
    """The arguments of purge_log_context (and of a CLI purge later)."""
    parser.add_argument(
        "contexts",
        nargs="*",
        metavar="CONTEXT",
        help="a log context whose stream to delete, e.g. User.alice (any number)",
    )
    parser.add_argument(
        "--global",
        dest="global_stream",
        action="store_true",
        help="also delete the site-wide global stream (default: keep it)",
    )
    parser.add_argument(
        "--all",
        dest="everything",
        action="store_true",
        help="delete every log stream (all contexts, the global one and the dead-letter "
        "streams), found with SCAN; needs --yes and no CONTEXT",
    )
    parser.add_argument(
        "--yes",
        action="store_true",
        help="confirm --all (default: --all refuses to run)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be deleted, and delete nothing (default: delete)",
    )
    parser.add_argument(
        "--streams-only",
        action="store_true",
        help="delete the contexts' own streams only, leaving their records in the global "
        "and dead-letter streams (default: remove those too, which reads those streams whole)",
    )
    add_naming_arguments(parser, site=site)


@dataclass(frozen=True)
class PurgeRequest:
    """Which streams to delete: checked arguments."""

    contexts: tuple[str, ...] = ()
    include_global: bool = False
    everything: bool = False
    dry_run: bool = False
    streams_only: bool = False

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> PurgeRequest:
        """Check parsed arguments; raise CommandFailed (status 2) with the reason."""
        contexts = tuple(options.get("contexts") or ())
        include_global = bool(options.get("global_stream"))
        everything = bool(options.get("everything"))
        if everything and not options.get("yes"):
            raise CommandFailed("--all deletes every log stream: add --yes to confirm", USAGE)
        if everything and (contexts or include_global):
            raise CommandFailed("--all already covers every stream: drop CONTEXT/--global", USAGE)
        if not (contexts or include_global or everything):
            raise CommandFailed("give CONTEXT..., --global, or --all --yes", USAGE)
        return cls(
            contexts=tuple(check_context(context) for context in contexts),
            include_global=include_global,
            everything=everything,
            dry_run=bool(options.get("dry_run")),
            streams_only=bool(options.get("streams_only")),
        )


_GLOB = re.compile(r"([*?\[\]\\])")


def glob_escape(text: str) -> str:
    """``text`` as a literal in a SCAN MATCH pattern."""
    return _GLOB.sub(r"\\\1", text)


def _text(value: Any) -> str:
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else str(value)


def all_streams(client: Any, names: Names) -> list[Any]:
    """Every log stream of ``names``, found with SCAN (never KEYS).

    Contexts are encoded so they hold no glob character, but the prefixes
    are the site's and might: they are escaped.  SCAN may return a key
    twice, hence the set.  Keys stay as Redis gave them: one that is not
    UTF-8 (another producer's) must be deleted by its bytes, not by the
    text it is shown as.
    """
    pattern = glob_escape(f"{names.stream_prefix}{names.channel_prefix}:") + "*"
    return _scan_streams(client, pattern)


def dead_letter_streams(client: Any, names: Names) -> list[Any]:
    """The consumer groups' dead-letter streams of ``names`` (default keys),
    found with SCAN like :func:`all_streams`."""
    return _scan_streams(client, glob_escape(names.dead_letter_prefix) + "*")


def _scan_streams(client: Any, pattern: str) -> list[Any]:
    found = client.scan_iter(match=pattern, count=1000, _type="stream")
    return sorted(set(found), key=_text)


def _unique(keys: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(keys))


def purge(client: Any, names: Names, request: PurgeRequest, out: TextIO) -> int:
    """Delete (or with dry_run, list) the streams, then erase the contexts'
    entries from the shared streams; return how many streams went.

    XLEN and DEL run in one MULTI, so the count printed is what was deleted
    even while records keep arriving.
    """
    with redis_errors(client):
        if request.everything:
            keys = all_streams(client, names) + dead_letter_streams(client, names)
        else:
            keys = [names.stream(context) for context in request.contexts]
            if request.include_global:
                keys.append(names.global_stream)
        streams = entries = 0
        verb = "would delete" if request.dry_run else "deleted"
        for key in _unique(keys):
            shown = safe(_text(key))
            kind = _text(client.type(key))
            if kind == "none":
                out.write(f"{shown}: no such stream\n")
                continue
            if kind != "stream":
                out.write(f"{shown}: left alone, it is a {safe(kind)}, not a stream\n")
                continue
            if request.dry_run:
                length, gone = client.xlen(key), 1
            else:
                length, gone = _count_and_delete(client, key)
            if not gone:
                out.write(f"{shown}: no such stream\n")
                continue
            streams += 1
            entries += length
            out.write(f"{verb} {shown} ({_entries(length)})\n")
        erased = _erase_shared(client, names, request, out)
    if not keys:
        out.write("no log streams found\n")
        return streams
    summary = f"{verb} {streams} stream{'s' * (streams != 1)}"
    if erased:
        removed = sum(erasure.removed for erasure in erased)
        shared = len(erased)
        summary += f" and {_entries(removed)} from {shared} shared stream{'s' * (shared != 1)}"
        entries += removed
    out.write(f"{summary}, {_entries(entries)} in all\n")
    return streams


def _erase_shared(client: Any, names: Names, request: PurgeRequest, out: TextIO) -> list[Erasure]:
    """Remove the contexts' entries from the global stream (unless it was
    deleted whole) and from the dead-letter streams; say what went from each."""
    if not request.contexts or request.streams_only:
        return []
    keys = [] if request.include_global else [names.global_stream]
    keys += dead_letter_streams(client, names)
    verb = "would remove" if request.dry_run else "removed"
    erased = []
    for key in _unique(keys):
        if _text(client.type(key)) != "stream":
            continue  # no global stream yet, or another program's key: nothing of theirs
        erasure = erase_entries(client, key, request.contexts, dry_run=request.dry_run)
        erased.append(erasure)
        out.write(
            f"{verb} {_entries(erasure.removed)} from {safe(_text(key))} "
            f"({erasure.scanned} scanned)\n"
        )
    return erased


def _count_and_delete(client: Any, key: Any) -> tuple[int, int]:
    """XLEN and DEL together.  One server: in one MULTI, so the count is
    what went.  A cluster (where redis-py 5 has no MULTI): one after the
    other, so an entry that arrives in between is deleted uncounted."""
    pipe = client.pipeline(transaction=not is_cluster(client))
    pipe.xlen(key)
    pipe.delete(key)
    length, gone = pipe.execute()
    return length, gone


def _entries(count: int) -> str:
    return f"{count} entr{'y' if count == 1 else 'ies'}"
