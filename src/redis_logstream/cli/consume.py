"""``consume``: the one implementation behind ``redis-logstream consume`` and
``manage.py consume_logs``.

Both add the same arguments (:func:`add_arguments`), read an optional TOML
file (:func:`load_config`: the same keys, the command line winning, and a
``[consumer_config]`` table for a class callback's constructor) and call
:func:`run`, which imports the callback, installs the SIGINT/SIGTERM
handlers and runs :func:`redis_logstream.consume`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover  (the project is tested on 3.11)
    import tomli as tomllib

import redis
from redis.exceptions import RedisClusterException

from redis_logstream.cli.cmdline import USAGE, CommandFailed, check_context
from redis_logstream.consumers.consumer import DEFAULT_BLOCK_MS, consume
from redis_logstream.consumers.runner import DEFAULT_MAX_DELIVERIES, built_callback, delivery_limit
from redis_logstream.reading.entries import EntryFilter, parse_level

__all__ = ["DESCRIPTION", "ConsumeRequest", "add_arguments", "epilog", "load_config", "run"]

DESCRIPTION = """\
Process log records as they arrive: read the streams of the given contexts
(or the site-wide global stream) as one consumer of a Redis Streams consumer
group, call CALLBACK for each record, and acknowledge the record once the
callback returns.  Runs until SIGINT or SIGTERM (finishing the record in
hand), or until the callback stops it.

Every consumer of a group gets a share of the records, each record going to
one of them; every group gets all of them.  A record is handled at least
once: one whose consumer crashed before acknowledging it is handled again,
by the same consumer restarted or by another of its group once it has been
pending CLAIM_AFTER seconds.

CALLBACK is package.module:name, a function taking one record, or a class
(instantiated once, with the [consumer_config] table of --config as keyword
arguments, then called for each record).  It raises
redis_logstream.consumers.Nack to have a record offered again later, Drop
to skip it, HaltConsumer(exit_code) to stop.  Any other exception stops the
consumer with status 1, the record still pending.

A record is delivered at most --max-deliveries times, whatever ended each
delivery (a Nack, an exception, a crash, kill -9, a halt without ack): its
last delivery failing, or a record found already delivered that often, it
is copied with the last error to the group's dead-letter stream and
acknowledged, and the consumer goes on: one record the callback cannot
handle never stops the group."""

EPILOG = """\
CONFIGURATION FILE
  --config FILE.toml holds the same settings as the options, by their long
  names with underscores, plus a table for a class callback:

      callback = "alerts.consumers:PageOnError"
      group = "alerts"
      global = true
      level = "ERROR"
      url = "redis://10.0.0.5:6379/0"

      [consumer_config]
      webhook = "https://chat.example.com/hooks/T0001"

  Options given on the command line win over the file.

EXIT STATUS
  0 after SIGINT or SIGTERM, or when the callback raises HaltConsumer();
  the callback's HaltConsumer(exit_code) otherwise; 1 when the callback
  raised anything else on a delivery before the record's last (restarted,
  the consumer takes the record back and counts one more delivery); 2 for
  an invalid argument, file or callback.

EXAMPLES
{extra}  Page someone for every error of the site (one group, any number of copies):
      {prog} --global --group alerts --level ERROR --callback alerts.consumers:page

  Archive everything, from the oldest record the stream still holds:
      {prog} --global --group archive --from-start --callback archive:Writer

  Run as configured in a file (as the systemd unit does):
      {prog} --config /etc/redis-logstream/alerts.toml
"""

#: The settings a --config file may hold, with their types.
_KEYS: dict[str, type | tuple[type, ...]] = {
    "callback": str,
    "url": str,
    "contexts": list,
    "global": bool,
    "group": str,
    "consumer": str,
    "from_start": bool,
    "level": (str, int),
    "logger": str,
    "batch": int,
    "claim_after": (int, float),
    "retry_after": (int, float),
    "max_retries": int,
    "max_deliveries": int,
    "consumer_config": dict,
    "amqp": str,
    "bind": list,
    "exchange": str,
}


def epilog(prog: str, extra: str = "") -> str:
    """CONFIGURATION FILE, EXIT STATUS and EXAMPLES of --help."""
    return EPILOG.format(prog=prog, extra=extra)


def add_arguments(parser: argparse.ArgumentParser, *, site: bool) -> None:
    """The arguments of consume_logs and ``redis-logstream consume``."""
    parser.add_argument(
        "contexts",
        nargs="*",
        metavar="CONTEXT",
        help="a log context whose stream to read (several may be given); "
        "give CONTEXT, --global or both",
    )
    parser.add_argument(
        "--global",
        dest="global_stream",
        action="store_true",
        default=None,
        help="read the site-wide stream, which holds every record",
    )
    parser.add_argument(
        "--callback",
        metavar="MODULE:NAME",
        help="what to call for each record: package.module:function or :Class",
    )
    parser.add_argument("--group", metavar="NAME", help="the consumer group (required)")
    parser.add_argument(
        "--consumer",
        metavar="NAME",
        help="this consumer's name in the group; keep it across restarts to get back "
        "what it left pending at once (default: <host>-<pid>)",
    )
    parser.add_argument(
        "--from-start",
        action="store_true",
        default=None,
        help="a new group begins with the oldest record the streams hold (default: "
        "with records arriving from now on); an existing group goes on where it was",
    )
    parser.add_argument(
        "--level",
        metavar="LEVEL",
        help="only records at LEVEL or above reach the callback; the others are "
        "acknowledged and counted as skipped (default: every level)",
    )
    parser.add_argument(
        "--logger",
        metavar="PREFIX",
        help="only records of the logger PREFIX and its children reach the callback",
    )
    tuning = parser.add_argument_group("tuning")
    tuning.add_argument(
        "--batch", type=int, metavar="N", help="records read per round trip (default: 100)"
    )
    tuning.add_argument(
        "--claim-after",
        type=float,
        metavar="SECONDS",
        help="take over records another consumer has left pending this long (default: 60)",
    )
    tuning.add_argument(
        "--retry-after",
        type=float,
        metavar="SECONDS",
        help="delay before a Nack'ed record is offered again (default: 5)",
    )
    tuning.add_argument(
        "--max-deliveries",
        type=int,
        metavar="N",
        help="deliveries of a record, whatever ended each one (Nack, exception, crash), "
        "before it goes to the dead-letter stream with the last error (default: 5)",
    )
    tuning.add_argument(
        "--max-retries",
        type=int,
        metavar="N",
        help="the older spelling of --max-deliveries N+1",
    )
    parser.add_argument(
        "--config",
        metavar="FILE.toml",
        type=Path,
        help="read these settings from a TOML file (see CONFIGURATION FILE)",
    )
    if not site:
        parser.add_argument(
            "--url",
            help="the Redis to read (any URL the handler takes; default: $REDIS_URL)",
        )
    rabbit = parser.add_argument_group(
        "RabbitMQ",
        "Consume what an AmqpLogHandler publishes instead (the amqp extra): the "
        "group is the durable queue <exchange>.<group>; Nack requeues after --retry-after; "
        "given-up records go to the queue <exchange>.<group>.dead-letter.",
    )
    rabbit.add_argument(
        "--amqp", metavar="URL", help="the broker: amqp://user:password@host:port/vhost"
    )
    rabbit.add_argument(
        "--bind",
        metavar="PATTERN",
        action="append",
        help="bind the group's queue with this topic pattern (repeatable; default: the "
        "CONTEXTs' records, all records with --global)",
    )
    rabbit.add_argument("--exchange", metavar="NAME", help="the topic exchange (default: logs)")


def load_config(path: Path) -> dict[str, Any]:
    """The settings of a --config file, checked; CommandFailed (status 2) says why not."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise CommandFailed(f"cannot read {path}: {exc.strerror or exc}", USAGE) from None
    except tomllib.TOMLDecodeError as exc:
        raise CommandFailed(f"{path} is not valid TOML: {exc}", USAGE) from None
    for key, value in data.items():
        expected = _KEYS.get(key)
        if expected is None:
            known = ", ".join(sorted(_KEYS))
            raise CommandFailed(f"{path}: unknown setting {key!r} (known: {known})", USAGE)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise CommandFailed(f"{path}: {key} has the wrong type ({value!r})", USAGE)
    return data


@dataclass(frozen=True)
class ConsumeRequest:
    """What to consume and how, from the command line and the file."""

    callback: str
    group: str
    contexts: tuple[str, ...] = ()
    include_global: bool = False
    consumer: str | None = None
    from_start: bool = False
    url: str | None = None
    filter: EntryFilter = field(default_factory=EntryFilter)
    tuning: Mapping[str, Any] = field(default_factory=dict)
    consumer_config: Mapping[str, Any] = field(default_factory=dict)
    amqp: str | None = None
    bind: tuple[str, ...] = ()
    exchange: str = "logs"

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> ConsumeRequest:
        """Merge the file (if any) under the command line; check everything."""
        merged: dict[str, Any] = {}
        if options.get("config") is not None:
            merged.update(load_config(Path(options["config"])))
            merged["global_stream"] = merged.pop("global", None)
        given = {k: v for k, v in options.items() if v not in (None, [])}
        if given.keys() & {"max_deliveries", "max_retries"}:
            merged.pop("max_deliveries", None)  # one limit, two spellings: the
            merged.pop("max_retries", None)  # command line's wins over the file's
        merged.update(given)
        for required in ("callback", "group"):
            if not merged.get(required):
                raise CommandFailed(f"give --{required} (or set it in --config)", USAGE)
        contexts = tuple(check_context(c) for c in merged.get("contexts") or ())
        bind = tuple(merged.get("bind") or ())
        if bind and not merged.get("amqp"):
            raise CommandFailed("--bind goes with --amqp", USAGE)
        if not contexts and not merged.get("global_stream") and not bind:
            raise CommandFailed("give a CONTEXT to read, --global, or both", USAGE)
        level = merged.get("level")
        try:
            min_level = None if level is None else parse_level(str(level))
        except ValueError as exc:
            raise CommandFailed(str(exc), USAGE) from None
        names = ("batch", "claim_after", "retry_after", "max_retries", "max_deliveries")
        tuning = {k: merged[k] for k in names if merged.get(k) is not None}
        if "max_retries" in tuning and "max_deliveries" in tuning:
            raise CommandFailed("give --max-deliveries or --max-retries, not both", USAGE)
        return cls(
            callback=merged["callback"],
            group=merged["group"],
            contexts=contexts,
            include_global=bool(merged.get("global_stream")),
            consumer=merged.get("consumer"),
            from_start=bool(merged.get("from_start")),
            url=merged.get("url"),
            filter=EntryFilter(min_level, merged.get("logger") or None),
            tuning=tuning,
            consumer_config=merged.get("consumer_config") or {},
            amqp=merged.get("amqp"),
            bind=bind,
            exchange=merged.get("exchange") or "logs",
        )


def import_callback(path: str) -> Callable[..., Any]:
    """``package.module:name`` -> the object; CommandFailed (status 2) says why not."""
    module_name, colon, name = path.partition(":")
    if not colon or not module_name or not name:
        raise CommandFailed(f"--callback {path!r}: give it as package.module:name", USAGE)
    try:
        target: Any = importlib.import_module(module_name)
        for part in name.split("."):
            target = getattr(target, part)
    except ImportError as exc:
        message = f"--callback {path!r}: cannot import {module_name}: {exc}"
        raise CommandFailed(message, USAGE) from None
    except AttributeError:
        raise CommandFailed(f"--callback {path!r}: {module_name} has no {name}", USAGE) from None
    if not callable(target):
        raise CommandFailed(f"--callback {path!r} is not callable", USAGE)
    return target


def run(request: ConsumeRequest, **connection: Any) -> int:
    """Consume until a signal or the callback says stop; return the status.

    ``connection``: ``url``/``connection``/``client`` as for the handler
    (the request's own ``url`` wins).
    """
    callback = import_callback(request.callback)
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    if not logging.getLogger().handlers and not logging.getLogger("redis_logstream").handlers:
        logging.basicConfig(
            stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s"
        )
    if request.url:
        connection = {"url": request.url}
    try:
        if request.amqp:
            return _consume_amqp(request, callback, stop)
        return consume(
            callback,
            group=request.group,
            contexts=request.contexts,
            include_global=request.include_global,
            consumer=request.consumer,
            start="0" if request.from_start else "$",
            block_ms=DEFAULT_BLOCK_MS,
            match=request.filter if request.filter.active else None,
            callback_config=dict(request.consumer_config) or None,
            stop=stop,
            **request.tuning,
            **connection,
        )
    except (TypeError, ValueError) as exc:
        raise CommandFailed(" ".join(str(exc).split()), USAGE) from None
    except (redis.RedisError, RedisClusterException) as exc:
        raise CommandFailed(f"error from Redis: {' '.join(str(exc).split())}") from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _consume_amqp(request: ConsumeRequest, callback: Any, stop: threading.Event) -> int:
    try:
        import amqp

        from redis_logstream.amqp.consumer import AmqpConsumer
        from redis_logstream.amqp.routing import binding_key
    except ImportError as exc:
        raise CommandFailed(f"--amqp needs the amqp extra: {exc}", USAGE) from None
    patterns = list(request.bind) or [binding_key(context=c) for c in request.contexts]
    if request.include_global and not request.bind:
        patterns = ["#"]
    callback = built_callback(callback, request.consumer_config)
    consumer = AmqpConsumer(
        callback,
        url=request.amqp or "",
        group=request.group,
        patterns=patterns,
        exchange=request.exchange,
        consumer=request.consumer,
        batch=request.tuning.get("batch", 100),
        retry_after=request.tuning.get("retry_after", 5.0),
        max_deliveries=delivery_limit(
            request.tuning.get("max_deliveries", DEFAULT_MAX_DELIVERIES),
            request.tuning.get("max_retries"),
        ),
        match=request.filter if request.filter.active else None,
        stop=stop,
    )
    try:
        return consumer.run()
    except amqp.exceptions.AMQPError as exc:
        raise CommandFailed(f"the broker refused: {' '.join(str(exc).split())}") from None
