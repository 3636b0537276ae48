"""The shipper's writing half: one batch to the sink, retried until it is
stored, refused for good or the deadline passes.

A sink raises :class:`WriteError` to say that part of a batch was stored or
refused for good; any other exception means nothing was stored.  Retries
wait with capped exponential backoff and jitter, and keep the records'
order.

A record the destination can never accept must not hold up the records
behind it, nor have those ahead of it written again and again: the sink
counts it as ``lost`` when it can tell; when it cannot (the broker closed
the channel on some record of the batch; a ``TypeError`` or ``ValueError``
from the sink) the failure is *suspect*, and the rest of the batch is
written one record at a time: a record that fails alone
:attr:`Delivery.poison_attempts` times, suspect each time, is counted in
``failed``, reported, and skipped.
"""

from __future__ import annotations

import logging
import random
import struct
import threading
import time
from collections import deque
from typing import Any

from redis_logstream.shipping.diagnostics import report

__all__ = ["Delivery", "WriteError"]


class WriteError(Exception):
    """Part of a batch failed.

    ``remaining``: the records worth retrying, in order (nothing of them is
    known to be stored).  ``lost``: how many the destination refused for
    good (a wrong key type, a script error); retrying would not help.
    ``suspect``: the failure was not the connection's, and the first of
    ``remaining`` may be a record the destination will never accept.
    """

    def __init__(
        self, message: str, remaining: list[Any], lost: int = 0, *, suspect: bool = False
    ) -> None:
        super().__init__(message)
        self.remaining = remaining
        self.lost = lost
        self.suspect = suspect


#: Raised by a sink, these say something about the data, not the connection:
#: the batch's first record is written alone until it goes or is skipped.
_DATA_ERRORS = (TypeError, ValueError, ArithmeticError, struct.error)


class Delivery:
    """Mixed into :class:`.shipper.Shipper`: the state below is the shipper's."""

    #: How many times a suspect record is written alone, and fails, before
    #: it is counted in ``failed`` and skipped.
    poison_attempts = 3

    sink: Any
    buffer: deque[Any]
    queue_size: int
    room: int
    retry_base: float
    retry_cap: float
    sent: int
    failed: int
    errors: int
    retries: int
    batches: int
    last_error: str | None
    _unsent: list[Any]
    _stopping: bool
    _deadline: float
    _urgent: threading.Event
    _down_since: float | None
    _reported_failed: int

    def _deliver(self) -> bool:
        """Write the unsent batch, retrying until it is stored or the deadline passes."""
        attempt = 0
        # After a suspect failure the rest of this batch goes one record at a
        # time: a record the sink never accepts is found and skipped, and the
        # records ahead of it are not written again with it.
        probing = False
        refusals = 0  # how often the first record failed alone, suspect each time
        while self._unsent:
            unsent = self._unsent
            batch = unsent[:1] if probing else unsent
            try:
                self.sink.write(batch)
            except Exception as exc:
                remaining, suspect = batch, isinstance(exc, _DATA_ERRORS)
                if isinstance(exc, WriteError):
                    remaining, suspect = exc.remaining, exc.suspect
                    self.failed += exc.lost
                    self.sent += len(batch) - len(remaining) - exc.lost
                self.errors += 1
                self.last_error = (
                    str(exc) if isinstance(exc, WriteError) else f"{type(exc).__name__}: {exc}"
                )
                if suspect and remaining:
                    if not probing:
                        probing, refusals = True, 0
                    else:  # the one record written failed alone
                        refusals += 1
                        if refusals >= self.poison_attempts:
                            self.failed += 1
                            self.last_error = f"skipped a record never written: {self.last_error}"
                            remaining = remaining[1:]
                            refusals = 0
                self._unsent = remaining + unsent[len(batch) :]
                self.room = self.queue_size - len(self._unsent)
                if not self._unsent:  # all stored but what was refused for good
                    return isinstance(exc, WriteError) and exc.lost == 0 and not suspect
                if not remaining:  # this part is settled: go on with the rest at once
                    continue
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    report(
                        logging.WARNING,
                        "redis_logstream: cannot write (%s); keeping up to %d records and retrying",
                        self.last_error,
                        self.queue_size,
                    )
                delay = min(self.retry_cap, self.retry_base * 2 ** min(attempt, 16))
                delay *= random.uniform(0.5, 1.0)
                attempt += 1
                if self._stopping:  # no early wake-up now: flush and close are waiting
                    left = self._deadline - time.monotonic()
                    if left <= 0:
                        return False
                    time.sleep(min(delay, left))
                elif self._urgent.wait(delay):
                    self._urgent.clear()
                self.retries += 1
                continue
            self._unsent = unsent[len(batch) :]
            self.room = self.queue_size - len(self._unsent)
            attempt = refusals = 0
            self.sent += len(batch)
            self.batches += 1
            if self._down_since is not None:
                report(
                    logging.WARNING,
                    "redis_logstream: writing again after %.1f s; %d records waited",
                    time.monotonic() - self._down_since,
                    len(batch) + len(self.buffer),
                )
                self._down_since = None
        return True

    def _report_failed(self) -> None:
        new = self.failed - self._reported_failed
        self._reported_failed = self.failed
        report(
            logging.WARNING,
            "redis_logstream: %d records can never be written and were skipped (%s)",
            new,
            self.last_error,
        )
