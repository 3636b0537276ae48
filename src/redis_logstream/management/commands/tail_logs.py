"""``manage.py tail_logs``: print and follow a log context's records."""

from __future__ import annotations

import dataclasses
from typing import Any

from django.core.management.base import CommandParser

from redis_logstream.cli import tail
from redis_logstream.cli.cmdline import add_site_url_argument, site_connection
from redis_logstream.conf import resolve_options
from redis_logstream.management import ReaderCommand
from redis_logstream.reading.reader import StreamReader
from redis_logstream.reading.render import use_color


class Command(ReaderCommand):
    help = tail.DESCRIPTION
    epilog = staticmethod(tail.epilog)

    def add_arguments(self, parser: CommandParser) -> None:
        tail.add_arguments(parser, site=True)
        add_site_url_argument(parser, "read")

    def run(self, options: dict[str, Any]) -> None:
        request = tail.TailRequest.from_options(options)
        client, names = site_connection(options)
        if request.sharded is None:
            sharded = resolve_options({}).sharded_pubsub
            request = dataclasses.replace(request, sharded=sharded)
        if options.get("force_color"):
            color = True
        elif options.get("no_color"):
            color = False
        else:
            color = use_color(self.stdout)
        tail.tail(StreamReader(client, names), request, self.stdout, self.stderr, color=color)
