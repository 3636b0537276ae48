"""The ``redis-logstream`` command: the entry point (entry), tail, purge and
erase, consume, the AMQP tail and the argument helpers the management
commands share (cmdline)."""

from redis_logstream.cli.entry import build_parser, main

__all__ = ["build_parser", "main"]
