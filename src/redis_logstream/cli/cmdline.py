"""What the command-line tools share, with Django and without.

``manage.py tail_logs`` / ``purge_log_context`` and the ``redis-logstream``
console script are thin wrappers: they parse arguments, get a client and
names from here, run :mod:`.tail` or :mod:`.purge`, and turn
:class:`CommandFailed` into one line on stderr and an exit status.  Nothing
here imports Django, so the console script works without a project.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import redis
from redis.exceptions import RedisClusterException
from redis.sentinel import MasterNotFoundError, SentinelConnectionPool

from redis_logstream.conf import DEFAULTS, Options, resolve_options
from redis_logstream.context import validate_context
from redis_logstream.naming import Names
from redis_logstream.reading.reader import DEFAULT_BLOCK_MS, client_for_url
from redis_logstream.redis.connection import client_factory, names_for
from redis_logstream.redis.topology import SCHEMES, connection_kwargs, is_cluster, safe_url

__all__ = [
    "USAGE",
    "CommandFailed",
    "add_naming_arguments",
    "check_context",
    "redis_errors",
    "site_connection",
    "url_connection",
]

#: Exit status of a wrong argument (argparse's own); 1 is for everything else.
USAGE = 2
NAMING = ("channel_prefix", "global_channel", "stream_prefix")


class CommandFailed(Exception):
    """A one-line reason to stop, and the exit status that goes with it."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def one_line(exc: BaseException) -> str:
    """An exception's text on one line: tools print one line, not a traceback."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, MasterNotFoundError) and " : <" in text:
        # "No master found for 'svc' : <the repr of a whole client> - cause"
        text = f"{text.partition(' : <')[0]} ({text.rpartition(' - ')[2]})"
    return text


def add_naming_arguments(parser: argparse.ArgumentParser, *, site: bool) -> None:
    """--channel-prefix, --global-channel, --stream-prefix, for handlers
    configured with other names than the defaults."""
    group = parser.add_argument_group(
        "naming", "Only needed when the handler was given other names than the defaults."
    )
    helps = {
        "channel_prefix": "channels are PREFIX:<context>",
        "global_channel": "the site-wide channel is <channel prefix>:NAME",
        "stream_prefix": "stream keys are PREFIX<channel>",
    }
    for option in NAMING:
        flag = "--" + option.replace("_", "-")
        source = f"REDIS_LOGSTREAM['{option.upper()}'], else " if site else ""
        metavar = "NAME" if option == "global_channel" else "PREFIX"
        group.add_argument(
            flag,
            dest=option,
            metavar=metavar,
            help=f"{helps[option]} (default: {source}{DEFAULTS[option]!r})",
        )


def _naming(options: Mapping[str, Any]) -> dict[str, Any]:
    return {name: options[name] for name in NAMING if options.get(name) is not None}


def site_connection(options: Mapping[str, Any]) -> tuple[Any, Names]:
    """The client and names the site's RedisLogHandler uses.

    Read from the same place as the handler (``settings.REDIS_LOGSTREAM``,
    then the django-redis cache alias), so a reader finds the streams the
    site writes; ``url`` and the naming options override.
    """
    overrides = _naming(options)
    if options.get("url"):
        overrides["url"] = options["url"]
    try:
        resolved = resolve_options(overrides)
        names = names_for(resolved)
        client = _built(client_factory(resolved), resolved.url or resolved.connection)
    except (ValueError, TypeError) as exc:  # ConfigurationError is a ValueError
        raise CommandFailed(one_line(exc)) from None
    return client, names


def url_connection(
    url: str | None, options: Mapping[str, Any], block_ms: int = DEFAULT_BLOCK_MS
) -> tuple[Any, Names]:
    """A reader's client for ``url`` (else $REDIS_URL) and the names given."""
    url = url or os.environ.get("REDIS_URL")
    if not url:
        raise CommandFailed("give --url redis://HOST:PORT/DB (or set REDIS_URL)", USAGE)
    try:
        names = names_for(Options(url=url, **_naming(options)))
        client = _built(lambda: client_for_url(url, block_ms=block_ms), url)
    except ValueError as exc:
        raise CommandFailed(one_line(exc), USAGE) from None
    return client, names


def _built(build: Callable[[], Any], source: str) -> Any:
    """The client ``build`` makes; a cluster client connects right away
    (to read the slot map), so its failure is an unreachable Redis."""
    try:
        return build()
    except (redis.RedisError, RedisClusterException) as exc:
        shown = safe_url(source) if "://" in source else f"the cache alias {source!r}"
        raise CommandFailed(f"cannot reach Redis at {shown}: {one_line(exc)}") from None


def check_context(value: str) -> str:
    """A context named on the command line, or a usage error saying why not."""
    try:
        return validate_context(value)
    except ValueError as exc:
        raise CommandFailed(f"invalid context: {one_line(exc)}", USAGE) from None


def where(client: Any) -> str:
    """Which Redis a client talks to, for error messages (never the password)."""
    kwargs = connection_kwargs(client)
    if is_cluster(client):
        nodes = ",".join(node.name for node in client.nodes_manager.startup_nodes.values())
        return f"the cluster of {nodes}"
    pool = getattr(client, "connection_pool", None)
    if isinstance(pool, SentinelConnectionPool):
        sentinels = ",".join(
            "{host}:{port}".format(**s.connection_pool.connection_kwargs)
            for s in pool.sentinel_manager.sentinels
        )
        return f"the primary {pool.service_name!r} of the sentinels {sentinels}"
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}"
    return f"{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


@contextlib.contextmanager
def redis_errors(client: Any) -> Iterator[None]:
    """Turn redis-py's exceptions into one line an operator can act on."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise CommandFailed(f"cannot reach Redis at {where(client)}: {one_line(exc)}") from None
    except (redis.RedisError, RedisClusterException) as exc:
        raise CommandFailed(f"error from Redis at {where(client)}: {one_line(exc)}") from None


def silence_stdout() -> None:
    """The reader of our output went away (``| head``): point stdout at
    /dev/null so that Python's last flush at exit does not complain."""
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def add_site_url_argument(parser: argparse.ArgumentParser, verb: str) -> None:
    """``--url`` of the management commands, which otherwise use the site's Redis."""
    parser.add_argument(
        "--url",
        help=f"{verb} this Redis ({', '.join(SCHEMES)}) instead of the site's "
        "(default: the handler's: REDIS_LOGSTREAM['URL'], else the django-redis "
        "cache alias REDIS_LOGSTREAM['CONNECTION'], 'default')",
    )
