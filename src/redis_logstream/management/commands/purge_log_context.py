"""``manage.py purge_log_context``: delete log streams, saying what went."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from redis_logstream.cli import purge
from redis_logstream.cli.cmdline import add_site_url_argument, site_connection
from redis_logstream.management import ReaderCommand


class Command(ReaderCommand):
    help = purge.DESCRIPTION
    epilog = staticmethod(purge.epilog)

    def add_arguments(self, parser: CommandParser) -> None:
        purge.add_arguments(parser, site=True)
        add_site_url_argument(parser, "purge")

    def run(self, options: dict[str, Any]) -> None:
        request = purge.PurgeRequest.from_options(options)
        client, names = site_connection(options)
        purge.purge(client, names, request, self.stdout)
