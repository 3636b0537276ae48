"""Management commands of redis_logstream, and what they share.

The commands are thin: the work happens in :mod:`redis_logstream.cli.tail` and
:mod:`redis_logstream.cli.purge`, which the ``redis-logstream`` console script
also runs.  :class:`ReaderCommand` only adapts them to Django: a man-page
``--help``, and the shared failures turned into ``CommandError`` (one line
on stderr, no traceback, the failure's exit status).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.core.management.base import DjangoHelpFormatter as _DjangoHelpFormatter

from redis_logstream.cli.cmdline import CommandFailed, silence_stdout

__all__ = ["ManPageFormatter", "ReaderCommand"]


class ManPageFormatter(_DjangoHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Django's option order (its common options last) with the description
    and the EXAMPLES laid out as written, like a man page."""


class ReaderCommand(BaseCommand):
    """Base of the commands that read or delete log streams."""

    # Reading logs must work on a site whose checks fail: that is when
    # people read logs.
    requires_system_checks: list[str] = []
    #: ``epilog(prog)`` of the shared module: EXIT STATUS and EXAMPLES.
    epilog: Callable[[str], str]

    def create_parser(self, prog_name: str, subcommand: str, **kwargs: Any) -> CommandParser:
        # Django 4.2 passes its own formatter_class to the parser; setting it
        # afterwards works on every version.
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.formatter_class = ManPageFormatter
        parser.epilog = type(self).epilog(f"{os.path.basename(prog_name)} {subcommand}")
        return parser

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            self.run(options)
        except CommandFailed as exc:
            raise CommandError(str(exc), returncode=exc.status) from None
        except KeyboardInterrupt:
            self.stdout.flush()  # Ctrl-C is how a follow ends: status 0, no traceback
        except BrokenPipeError:
            silence_stdout()  # the reader of our output left (| head): nothing to say

    def run(self, options: dict[str, Any]) -> None:
        raise NotImplementedError
