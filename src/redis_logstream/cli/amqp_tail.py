"""``redis-logstream tail --amqp``: records from a topic exchange, as published.

A private queue (exclusive, deleted with the connection) is bound to the
exchange with the given patterns (default ``#``: everything), and each
message is printed as ``tail`` prints a stream entry.  Like pub/sub, this
sees what is published while it listens, nothing before.  A lost broker is
retried with capped backoff, said once when it goes and once when it is
back.
"""

from __future__ import annotations

import argparse
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TextIO

import amqp

from redis_logstream.amqp.routing import binding_key
from redis_logstream.amqp.sink import connection_options, reader_channel
from redis_logstream.cli.cmdline import USAGE, CommandFailed, check_context
from redis_logstream.cli.tail import notifier
from redis_logstream.reading.entries import Entry, EntryFilter, decode_entry, parse_level
from redis_logstream.reading.render import Renderer

__all__ = ["add_arguments", "listen_amqp", "run_tail"]

POLL_SECONDS = 0.5
_BACKOFF_CAP = 2.0


def listen_amqp(
    url: str,
    exchange: str,
    patterns: Sequence[str] = ("#",),
    *,
    durable: bool = False,
    stop: threading.Event | None = None,
    match: Callable[[Entry], bool] | None = None,
    notify: Callable[[str], None] | None = None,
) -> Iterator[Entry]:
    """Yield each record published to ``exchange`` with a routing key that
    matches one of ``patterns``, until ``stop`` is set."""
    stop = stop or threading.Event()
    options = connection_options(url, timeout=5.0)
    delay = 0.0
    while not stop.is_set():
        conn: Any = None
        try:
            conn = amqp.Connection(**options)
            conn.connect()
            channel = reader_channel(conn, exchange, durable)
            queue, _count, _consumers = channel.queue_declare("", exclusive=True, auto_delete=True)
            for pattern in patterns:
                channel.queue_bind(queue, exchange, pattern)
            received: list[Any] = []
            channel.basic_consume(queue, callback=received.append, no_ack=True)
            if notify is not None:
                said = (
                    "the broker is back; listening again"
                    if delay
                    else (f"listening to {exchange} with {', '.join(patterns)}")
                )
                notify(said)
            delay = 0.0
            while not stop.is_set():
                with contextlib.suppress(socket.timeout):
                    conn.drain_events(timeout=POLL_SECONDS)
                while received:
                    entry = decode_entry("", {b"data": received.pop(0).body})
                    if match is None or match(entry):
                        yield entry
        except amqp.exceptions.AccessRefused:
            raise  # a wrong password does not get better by waiting
        except (OSError, amqp.exceptions.AMQPError) as exc:
            if not delay and notify is not None:
                notify(f"lost the broker ({' '.join(str(exc).split())}); retrying")
            delay = min(_BACKOFF_CAP, (delay or 0.05) * 2)
            stop.wait(delay)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.collect()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--amqp``, ``--bind`` and ``--exchange`` of ``redis-logstream tail``."""
    group = parser.add_argument_group(
        "RabbitMQ",
        "Read what an AmqpLogHandler publishes instead of a Redis stream (needs the amqp extra).",
    )
    group.add_argument(
        "--amqp",
        metavar="URL",
        help="the broker: amqp://user:password@host:port/vhost (%%2F for /); records are "
        "printed as they are published, from now on (-n, -f and --since do not apply)",
    )
    group.add_argument(
        "--bind",
        metavar="PATTERN",
        action="append",
        help="a topic pattern over <context>.<LEVEL>.<logger>, such as '*.ERROR.#'; may be "
        "repeated (default: CONTEXT's records, else '#': all)",
    )
    group.add_argument(
        "--exchange", default="logs", metavar="NAME", help="the topic exchange (default: logs)"
    )


def run_tail(args: argparse.Namespace, out: TextIO, err: TextIO, color: bool) -> None:
    """Print what the exchange delivers until Ctrl-C."""
    if args.since is not None:
        raise CommandFailed("--since reads history; --amqp has none", USAGE)
    context = None if args.context is None else check_context(args.context)
    patterns = args.bind or [binding_key(context=context) if context else "#"]
    try:
        level = None if args.level is None else parse_level(args.level)
        connection_options(args.amqp, 5.0)
    except ValueError as exc:
        raise CommandFailed(str(exc), USAGE) from None
    match = EntryFilter(level, args.logger or None)
    render = Renderer(color=color, json_lines=args.json)
    try:
        for entry in listen_amqp(
            args.amqp,
            args.exchange,
            patterns,
            match=match if match.active else None,
            notify=notifier(err),
        ):
            out.write(render(entry))
            out.flush()
    except amqp.exceptions.AMQPError as exc:
        raise CommandFailed(f"the broker refused: {' '.join(str(exc).split())}") from None
