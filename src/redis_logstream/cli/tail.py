"""``tail``: the one implementation behind ``manage.py tail_logs`` and
``redis-logstream tail``.

Both wrappers add the same arguments (:func:`add_arguments`), build a
:class:`TailRequest` from what was parsed and call :func:`tail`; they differ
only in where the Redis client comes from (the site's settings, or a URL)
and in how a failure becomes an exit status.
"""

from __future__ import annotations

import argparse
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from redis_logstream.cli.cmdline import (
    USAGE,
    CommandFailed,
    add_naming_arguments,
    check_context,
    redis_errors,
)
from redis_logstream.reading.live import listen
from redis_logstream.reading.reader import EntryFilter, StreamReader, parse_level, parse_since
from redis_logstream.reading.render import Renderer

__all__ = ["DESCRIPTION", "TailRequest", "add_arguments", "epilog", "notifier", "tail"]

DESCRIPTION = """\
Print the last records of one log context's stream (or of the site-wide
global stream), oldest first; with -f, keep printing new records as they
arrive, until Ctrl-C.

The records are those RedisLogHandler keeps in Redis streams
(stream:logs:<context> and stream:logs:global with the default names).
History and follow join without a gap or a duplicate: following starts
right after the last entry read.  Each record is printed as

    HH:MM:SS.mmm LEVEL    context logger: message

in local time, continuation lines (tracebacks) indented; the level is
coloured on a terminal, plain when piped or when NO_COLOR is set.  With
--json each record is printed as the JSON object stored in Redis."""

EPILOG = """\
EXIT STATUS
  0 on success and after Ctrl-C, 1 when Redis cannot be reached, 2 for an
  invalid argument.

EXAMPLES
{extra}  The last 20 records of one user, then follow them live:
      {prog} User.alice -f

  Warnings and worse from the whole site in the last 10 minutes:
      {prog} --global --since 10m -n all --level WARNING

  Only new records of one job from the shop.payments loggers:
      {prog} import_1b4e28ba2fa1 -n 0 -f --logger shop.payments

  Everything after a known entry id (an SSE event id), as JSON for jq:
      {prog} --global --since 1764028888123-0 -n all --json | jq -r .message

  What a pub/sub subscriber of one user's channel receives, as it is sent:
      {prog} User.alice --live
"""


def epilog(prog: str, extra: str = "") -> str:
    """The EXIT STATUS and EXAMPLES sections of --help, for the command as
    typed (``extra``: examples of the caller's own, first)."""
    return EPILOG.format(prog=prog, extra=extra)


def _count(text: str) -> int | None:
    if text.strip().lower() == "all":
        return None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number >= 0 or 'all'")
    return value


def add_arguments(parser: argparse.ArgumentParser, *, site: bool) -> None:
    """The arguments of tail_logs and of ``redis-logstream tail`` (all but
    the connection and colour options, which each wrapper words its own way)."""
    parser.add_argument(
        "context",
        nargs="?",
        metavar="CONTEXT",
        help="the log context to read, e.g. User.alice or job_1b4e28ba2fa1; "
        "give either CONTEXT or --global",
    )
    parser.add_argument(
        "--global",
        dest="global_stream",
        action="store_true",
        help="read the site-wide stream instead, which holds every record, "
        "with a context or without",
    )
    parser.add_argument(
        "-n",
        "--lines",
        dest="count",
        type=_count,
        default=20,
        metavar="N",
        help="print the last N records (default: 20); 0 prints none (useful with -f), "
        "'all' every record the stream still holds",
    )
    parser.add_argument(
        "-f",
        "--follow",
        action="store_true",
        help="after the history, keep printing new records as they arrive, "
        "until Ctrl-C (default: print and exit)",
    )
    parser.add_argument(
        "--since",
        metavar="DURATION|ID",
        help="only records newer than DURATION ago (30s, 10m, 2h, 1d, 1h30m; by "
        "Redis's clock) or after the entry ID, such as 1764028888123-0 (default: no limit)",
    )
    parser.add_argument(
        "--level",
        metavar="LEVEL",
        help="only records at LEVEL or above: DEBUG, INFO, WARNING, ERROR, CRITICAL "
        "or a number; -n then counts matching records (default: every level)",
    )
    parser.add_argument(
        "--logger",
        metavar="PREFIX",
        help="only records of the logger PREFIX and its children: shop matches "
        "shop and shop.views, not shopping (default: every logger)",
    )
    live = parser.add_argument_group(
        "pub/sub",
        "Follow the live channel instead of the stream (to check what a "
        "pub/sub consumer receives).",
    )
    live.add_argument(
        "--live",
        action="store_true",
        help="print records as they are published on the channel, from now on: no "
        "history, and nothing kept while disconnected (-n, -f and --since do not apply)",
    )
    live.add_argument(
        "--sharded",
        action="store_true",
        default=None,
        help="with --live, SSUBSCRIBE to the sharded channel, for a handler with "
        "sharded_pubsub=True (default: "
        + ("REDIS_LOGSTREAM['SHARDED_PUBSUB'])" if site else "off)"),
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print each record as the JSON object stored in Redis, one per line "
        "(default: readable lines)",
    )
    add_naming_arguments(parser, site=site)


@dataclass(frozen=True)
class TailRequest:
    """What to print: checked arguments, independent of argparse and Django."""

    context: str | None
    count: int | None = 20
    follow: bool = False
    since: str | None = None
    filter: EntryFilter = field(default_factory=EntryFilter)
    json: bool = False
    live: bool = False
    sharded: bool | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> TailRequest:
        """Check parsed arguments; raise CommandFailed (status 2) with the reason."""
        context, everything = options.get("context"), bool(options.get("global_stream"))
        if context is None and not everything:
            raise CommandFailed("give a CONTEXT to read, or --global", USAGE)
        if context is not None and everything:
            raise CommandFailed("give a CONTEXT or --global, not both", USAGE)
        since = options.get("since")
        live = bool(options.get("live"))
        if live and since is not None:
            raise CommandFailed("--since reads history; --live has none", USAGE)
        if options.get("sharded") and not live:
            raise CommandFailed("--sharded goes with --live", USAGE)
        try:
            if since is not None:
                parse_since(since, lambda: 0)  # the syntax, before any connection
            level = options.get("level")
            min_level = None if level is None else parse_level(str(level))
        except ValueError as exc:
            raise CommandFailed(str(exc), USAGE) from None
        count = options.get("count", 20)
        return cls(
            context=None if context is None else check_context(context),
            count=count,
            follow=bool(options.get("follow")),
            since=since,
            filter=EntryFilter(min_level, options.get("logger") or None),
            json=bool(options.get("json")),
            live=live,
            sharded=options.get("sharded"),
        )


def tail(
    reader: StreamReader,
    request: TailRequest,
    out: TextIO,
    err: TextIO,
    *,
    color: bool = False,
    stop: threading.Event | None = None,
) -> None:
    """Print the history, then (with follow) new records until ``stop`` is
    set or the user presses Ctrl-C (the caller catches KeyboardInterrupt).

    Raises CommandFailed when Redis cannot be reached for the history; once
    following, a lost Redis is retried and reported on ``err`` instead.
    """
    render = Renderer(color=color, json_lines=request.json)
    match = request.filter if request.filter.active else None
    if request.live:
        with redis_errors(reader.client):
            for entry in listen(
                reader.client,
                reader.names,
                request.context,
                sharded=bool(request.sharded),
                stop=stop,
                match=match,
                notify=notifier(err),
            ):
                out.write(render(entry))
                out.flush()
        return
    shown = 0
    with redis_errors(reader.client):  # the history is read as it is printed, a page at a time
        window = reader.window(request.context, request.count, request.since, match)
        for entry in window.entries:
            out.write(render(entry))
            shown += 1
    out.flush()
    if not shown and request.count != 0:
        notifier(err)(_nothing_to_show(reader.stream(request.context), request))
    if not request.follow:
        return
    with redis_errors(reader.client):
        for entry in reader.follow(
            request.context, window.cursor, stop=stop, match=match, notify=notifier(err)
        ):
            out.write(render(entry))
            out.flush()


def _nothing_to_show(key: str, request: TailRequest) -> str:
    """Why nothing was printed: silence would look like a wrong name or a hang."""
    limits = [
        option
        for option, given in (
            ("--since", request.since is not None),
            ("--level", request.filter.min_level is not None),
            ("--logger", bool(request.filter.logger)),
        )
        if given
    ]
    said = f"no records of {key} match {', '.join(limits)}" if limits else f"{key} is empty"
    return f"{said}; waiting for records (Ctrl-C to stop)" if request.follow else said


def notifier(err: TextIO) -> Callable[[str], None]:
    """Say a reader's news (lost Redis, back again) on ``err``, a line each."""

    def notify(message: str) -> None:
        err.write(f"{message}\n")
        err.flush()

    return notify
