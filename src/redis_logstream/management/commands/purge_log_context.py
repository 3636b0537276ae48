"""``manage.py purge_log_context``: delete log streams, saying what went."""

from __future__ import annotations

from typing import Any

from django.core.management.base import CommandParser

from ... import purge
from ...cmdline import site_connection
from .. import ReaderCommand


class Command(ReaderCommand):
    help = purge.DESCRIPTION
    epilog = staticmethod(purge.epilog)

    def add_arguments(self, parser: CommandParser) -> None:
        purge.add_arguments(parser, site=True)
        parser.add_argument(
            "--url",
            help="purge this Redis (redis://, rediss://, unix://) instead of the site's "
            "(default: the handler's: REDIS_LOGSTREAM['URL'], else the django-redis "
            "cache alias REDIS_LOGSTREAM['CONNECTION'], 'default')",
        )

    def run(self, options: dict[str, Any]) -> None:
        request = purge.PurgeRequest.from_options(options)
        client, names = site_connection(options)
        purge.purge(client, names, request, self.stdout)
