"""``redis-logstream``: the log readers without a Django project.

A worker host, a CI job or an operator's laptop may have no Django project
at hand, only a Redis URL; this console script runs the same code as the
management commands (:mod:`.tail`), with the connection given on the
command line: ``tail`` (:mod:`.tail`) and ``consume`` (:mod:`.consume_cli`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from redis_logstream import __version__
from redis_logstream.cli import consume as consume_cli
from redis_logstream.cli import tail
from redis_logstream.cli.cmdline import CommandFailed, silence_stdout, url_connection
from redis_logstream.reading.reader import DEFAULT_BLOCK_MS, StreamReader
from redis_logstream.reading.render import use_color

try:  # tail --amqp needs the amqp extra
    from redis_logstream.cli import amqp_tail
except ImportError:  # pragma: no cover  (installed for the tests)
    amqp_tail = None  # type: ignore[assignment]

__all__ = ["build_parser", "main"]

PROG = "redis-logstream"

TAIL_URL_EXAMPLE = f"""\
  Any Redis, by URL (or export REDIS_URL once, as the examples below do):
      {PROG} tail --url redis://:secret@logs.internal:6379/0 --global -f

  A Redis Cluster (from any of its nodes), or the primary that sentinels name:
      {PROG} tail --url redis+cluster://10.0.0.21:6379,10.0.0.22:6379 --global -f
      {PROG} tail --url redis+sentinel://10.0.0.11:26379,10.0.0.12:26379/mymaster --global

"""


CONSUME_URL_EXAMPLE = f"""\
  The Redis by URL (or export REDIS_URL once, as the examples below do):
      {PROG} consume --url redis://10.0.0.5:6379/0 --global --group audit --callback audit:keep

"""


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand (``redis-logstream COMMAND --help``)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Read the log records that django-redis-logstream keeps in Redis, "
        "with nothing but a Redis URL.",
        epilog=f"Run '{PROG} COMMAND --help' for a command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    tail_parser = commands.add_parser(
        "tail",
        help="print, and with -f follow, the records of a context or of the whole site",
        description=tail.DESCRIPTION,
        epilog=tail.epilog(f"{PROG} tail", extra=TAIL_URL_EXAMPLE),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tail.add_arguments(tail_parser, site=False)
    connection = tail_parser.add_argument_group("connection and colour")
    connection.add_argument(
        "--url",
        help="the Redis to read: redis://[[user]:password@]host[:port][/db], "
        "rediss://..., unix:///path/to/redis.sock, a cluster as "
        "redis+cluster://host:port[,host:port...] or the primary of sentinels as "
        "redis+sentinel://host:port[,host:port...]/SERVICE[/db] (default: $REDIS_URL)",
    )
    colour = connection.add_mutually_exclusive_group()
    colour.add_argument(
        "--no-color",
        dest="color",
        action="store_false",
        default=None,
        help="never colour the output (default: colour on a terminal, unless NO_COLOR is set)",
    )
    colour.add_argument(
        "--force-color",
        dest="color",
        action="store_true",
        help="colour the output even when it is not a terminal",
    )
    if amqp_tail is not None:
        amqp_tail.add_arguments(tail_parser)
    tail_parser.set_defaults(run=run_tail)

    consume_parser = commands.add_parser(
        "consume",
        help="call a function for each record, as one consumer of a consumer group",
        description=consume_cli.DESCRIPTION,
        epilog=consume_cli.epilog(f"{PROG} consume", extra=CONSUME_URL_EXAMPLE),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    consume_cli.add_arguments(consume_parser, site=False)
    consume_parser.set_defaults(run=run_consume)
    return parser


def run_tail(args: argparse.Namespace) -> None:
    """``redis-logstream tail``: the connection from --url, the rest shared."""
    options = vars(args)
    if getattr(args, "amqp", None) and amqp_tail is not None:
        amqp_tail.run_tail(args, sys.stdout, sys.stderr, use_color(sys.stdout, args.color))
        return
    request = tail.TailRequest.from_options(options)
    client, names = url_connection(args.url, options, DEFAULT_BLOCK_MS)
    reader = StreamReader(client, names, block_ms=DEFAULT_BLOCK_MS)
    color = use_color(sys.stdout, args.color)
    tail.tail(reader, request, sys.stdout, sys.stderr, color=color)


def run_consume(args: argparse.Namespace) -> int:
    """``redis-logstream consume``: the connection from --url (or the file)."""
    request = consume_cli.ConsumeRequest.from_options(vars(args))
    url = request.url or os.environ.get("REDIS_URL")
    if not url:
        raise CommandFailed("give --url redis://HOST:PORT/DB (or set REDIS_URL)", 2)
    return consume_cli.run(request, url=url)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; return its exit status (failures are one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.run(args)
    except CommandFailed as exc:
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 0  # Ctrl-C is how a follow ends
    except BrokenPipeError:
        silence_stdout()  # the reader of our output left (| head)
    else:
        return status or 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
