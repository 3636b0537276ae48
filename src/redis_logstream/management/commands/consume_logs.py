"""``manage.py consume_logs``: process the site's log records with a consumer group."""

from __future__ import annotations

import sys
from typing import Any

from django.core.management.base import CommandParser

from redis_logstream.cli import consume as consume_cli
from redis_logstream.cli.cmdline import add_site_url_argument
from redis_logstream.management import ReaderCommand


class Command(ReaderCommand):
    help = consume_cli.DESCRIPTION
    epilog = staticmethod(consume_cli.epilog)

    def add_arguments(self, parser: CommandParser) -> None:
        consume_cli.add_arguments(parser, site=True)
        add_site_url_argument(parser, "read")

    def run(self, options: dict[str, Any]) -> None:
        """The site's Redis and names, as the handler's; exit with the consumer's status."""
        request = consume_cli.ConsumeRequest.from_options(options)
        status = consume_cli.run(request)
        if status:
            sys.exit(status)
