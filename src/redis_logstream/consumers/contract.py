"""What a consumer callback gets and how it answers.

A callback given to :func:`redis_logstream.consume` is called with one
:class:`LogEntry` per record.  Returning means "handled": the record is
acknowledged.  Raising one of the exceptions below says something else, in
the words AMQP consumers already know:

- :class:`Nack`: not now.  The record stays pending and is offered again
  after ``retry_after`` seconds.
- :class:`Drop`: acknowledge without handling (counted as dropped).
- :class:`HaltConsumer`: stop cleanly, with an exit status.

Any other exception is a bug in the callback: it is logged with its
traceback, the record stays pending (another consumer of the group, or this
one restarted, gets it again) and the consumer stops with status 1.

Whatever ends a delivery without an acknowledgement (a Nack, a HaltConsumer
without ``ack``, an exception, a crash, ``kill -9``), a record is delivered
at most ``max_deliveries`` times: then it is copied to the group's
dead-letter stream with the last error and acknowledged, so that one record
the callback cannot handle never stops the group.  ``LogEntry.deliveries``
says which delivery the callback is looking at.

:class:`Forward` is a ready callback that re-emits each record into a
``logging.Handler``: the slow handlers (SMTP, a chat webhook, a file on a
network share) run in a consumer service, never in a request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from redis_logstream.reading.entries import decode_entry

__all__ = ["Drop", "Forward", "HaltConsumer", "LogEntry", "Nack"]


class Nack(Exception):
    """Not handled now: offer the record again later.

    ``retry_after`` overrides the consumer's delay for this record (seconds).
    """

    def __init__(self, reason: str = "", *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


class Drop(Exception):
    """Acknowledge the record without handling it (counted as ``dropped``)."""


class HaltConsumer(Exception):
    """Stop consuming, cleanly, with ``exit_code`` as the exit status.

    The record being handled is acknowledged only with ``ack=True``;
    otherwise it stays pending and is offered again when a consumer of the
    group next runs.
    """

    def __init__(self, exit_code: int = 0, *, ack: bool = False) -> None:
        super().__init__(f"halt with exit status {exit_code}")
        self.exit_code = exit_code
        self.ack = ack


@dataclass(frozen=True)
class LogEntry:
    """One record as a consumer receives it.

    The wire fields are attributes; ``data`` is the whole decoded object
    (fields another producer added included), ``raw`` the stored bytes.  A stream entry that is not
    our JSON still arrives: its raw text as ``message``, level ``"?"``.
    ``deliveries`` is 1 the first time a record is handed to a callback, 2
    the next (after a Nack, a crash, a halt without ``ack``), and so on.
    """

    id: str
    stream: str
    message: str
    level: str
    levelno: int | None
    timestamp: float
    logger: str
    context: str | None
    pod: str | None
    pid: int | None
    data: Mapping[str, Any] = field(repr=False)
    raw: bytes = field(default=b"", repr=False)
    deliveries: int = 1

    @classmethod
    def from_fields(
        cls, stream: str, entry_id: Any, fields: Mapping[Any, Any], deliveries: int = 1
    ) -> LogEntry:
        """Build from an XREADGROUP row; never raises."""
        entry = decode_entry(entry_id, fields)
        record = entry.record
        pid = record.get("pid")
        pod = record.get("pod")
        return cls(
            id=entry.id,
            stream=stream,
            message=entry.message,
            level=entry.level,
            levelno=entry.levelno,
            timestamp=entry.timestamp,
            logger=entry.logger,
            context=entry.context,
            pod=pod if isinstance(pod, str) else None,
            pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
            data=dict(record),
            raw=entry.raw,
            deliveries=deliveries,
        )

    def to_log_record(self) -> logging.LogRecord:
        """A ``logging.LogRecord`` as the producing process logged it
        (message already formatted), for any ``logging.Handler``.

        ``context``, ``pod``, ``stream`` and ``entry_id`` are extra
        attributes, usable in a format string: ``%(context)s``.
        """
        levelno = self.levelno if self.levelno is not None else logging.NOTSET
        created = self.timestamp
        record = logging.makeLogRecord(
            {
                "name": self.logger or "root",
                "msg": self.message,
                "args": None,
                "levelno": levelno,
                "levelname": self.level if self.level != "?" else logging.getLevelName(levelno),
                "created": created,
                "msecs": (created - int(created)) * 1000,
                "process": self.pid,
                "processName": self.pod or "",
                "context": self.context,
                "pod": self.pod,
                "stream": self.stream,
                "entry_id": self.id,
            }
        )
        return record


class Forward:
    """A callback that hands each record to ``handler`` (any logging.Handler).

    The handler's level and filters apply, as they would in the producing
    process.  Its errors are its own: a stdlib handler reports a failed
    ``emit`` through ``handleError`` and goes on, so one failed e-mail does
    not stop the consumer.
    """

    def __init__(self, handler: logging.Handler) -> None:
        self.handler = handler

    def __call__(self, entry: LogEntry) -> None:
        record = entry.to_log_record()
        if record.levelno >= self.handler.level:
            self.handler.handle(record)

    def close(self) -> None:
        """Flush and close the handler (the consumer calls this when it stops)."""
        self.handler.flush()
        self.handler.close()
