"""What every consumer does with a record, whatever it reads from.

A consumer of a Redis consumer group (:mod:`.consumer`) and one of an
AMQP queue (:mod:`.amqp_consumer`) read differently, but answer the
callback the same way: returned means acknowledge, ``Nack`` means later,
``Drop`` means acknowledge unhandled, ``HaltConsumer`` means stop, anything
else is a bug that stops the consumer with the record left pending.  A
record whose delivery is its ``max_deliveries``-th, or that was delivered
that often before without an acknowledgement, goes to the dead-letter
place instead, so that one record never stops the group.  This class holds
that contract, the counters and the stop; subclasses say what
acknowledging, refusing, leaving and dead-lettering a record mean for their
broker, and count each record's deliveries where a restart keeps them.
"""

from __future__ import annotations

import inspect
import logging
import threading
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from redis_logstream.consumers.contract import Drop, HaltConsumer, LogEntry, Nack
from redis_logstream.shipping.diagnostics import report

__all__ = [
    "COUNTERS",
    "DEFAULT_MAX_DELIVERIES",
    "CallbackRunner",
    "built_callback",
    "delivery_limit",
]

COUNTERS = (
    "handled",
    "acked",
    "nacked",
    "dropped",
    "dead_lettered",
    "claimed",
    "missed",
    "skipped",
)
DEFAULT_MAX_DELIVERIES = 5
#: The dead-letter copy keeps the end of the traceback, up to this many characters.
TRACEBACK_CHARS = 4000


def delivery_limit(
    max_deliveries: int = DEFAULT_MAX_DELIVERIES, max_retries: int | None = None
) -> int:
    """The number of deliveries a record gets; ``max_retries`` (Nacks after
    the first delivery, the older spelling) is ``max_deliveries - 1``."""
    if max_retries is not None:
        _check_count("max_retries", max_retries, 0)
        return max_retries + 1
    _check_count("max_deliveries", max_deliveries, 1)
    return max_deliveries


def _check_count(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"{name} must be an int >= {least}, not {value!r}")


def built_callback(
    callback: Callable[..., Any], config: Mapping[str, Any] | None
) -> Callable[[LogEntry], Any]:
    """The callable to call per record: a class is instantiated once, with
    ``config`` as keyword arguments; a function is itself (and takes no config)."""
    if inspect.isclass(callback):
        return callback(**(config or {}))
    if config:
        raise ValueError("callback_config is for a class callback; this one is a function")
    return callback


class CallbackRunner:
    """Calls ``callback`` for each record and acts on its answer."""

    def __init__(
        self,
        callback: Callable[[LogEntry], Any],
        name: str,
        group: str,
        *,
        match: Callable[[LogEntry], bool] | None = None,
        stop: threading.Event | None = None,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
    ) -> None:
        if not isinstance(group, str) or not group:
            raise ValueError(f"group must be a non-empty str, not {group!r}")
        _check_count("max_deliveries", max_deliveries, 1)
        self.max_deliveries = max_deliveries
        self.callback = callback
        self.name = name
        self.group = group
        self.match = match
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.status = 0
        self._stopping = stop or threading.Event()

    def stop(self) -> None:
        """Finish the record in hand, acknowledge what was handled, return 0."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stats(self) -> dict[str, int]:
        """handled, acked, nacked, dropped, dead_lettered, claimed, missed, skipped."""
        return dict(self.counts)

    def _handle(self, entry: LogEntry) -> None:
        if entry.deliveries > self.max_deliveries:
            # Its earlier deliveries ended with no answer: a crash, kill -9, a halt.
            prior = entry.deliveries - 1
            self._give_up(
                entry,
                prior,
                f"delivered {prior} times and never acknowledged "
                "(the consumer stopped or died while handling it)",
            )
            return
        if self.match is not None and not self.match(entry):
            self.counts["skipped"] += 1
            self._ack(entry)
            return
        try:
            self.callback(entry)
        except Nack as nack:
            self.counts["nacked"] += 1
            if entry.deliveries >= self.max_deliveries:
                self._give_up(entry, entry.deliveries, str(nack) or "refused (Nack)")
            else:
                self._nack(entry, nack)
        except Drop:
            self.counts["dropped"] += 1
            self._ack(entry)
        except HaltConsumer as halt:
            if halt.ack:
                self._ack(entry)
            else:
                self._leave(entry)
            self.status = halt.exit_code
            self.stop()
        except Exception as exc:
            if entry.deliveries >= self.max_deliveries:
                report(
                    logging.ERROR,
                    "consumer %s: the callback failed on %s %s, delivery %d of %d; the "
                    "record goes to the dead-letter stream and the consumer goes on",
                    self.name,
                    entry.stream,
                    entry.id,
                    entry.deliveries,
                    self.max_deliveries,
                    exc_info=True,
                )
                text = "".join(traceback.format_exception(exc))[-TRACEBACK_CHARS:]
                self._give_up(entry, entry.deliveries, f"{type(exc).__name__}: {exc}", text)
                return
            report(
                logging.ERROR,
                "consumer %s: the callback failed on %s %s, delivery %d of %d; the record "
                "stays pending and the consumer stops",
                self.name,
                entry.stream,
                entry.id,
                entry.deliveries,
                self.max_deliveries,
                exc_info=True,
            )
            self._leave(entry)
            self.status = 1
            self.stop()
        else:
            self.counts["handled"] += 1
            self._ack(entry)

    def _give_up(
        self, entry: LogEntry, attempts: int, reason: str, error: str | None = None
    ) -> None:
        """Keep the record in the dead-letter place, then acknowledge it."""
        self._dead_letter(entry, attempts, reason, error)
        self.counts["dead_lettered"] += 1
        self._ack(entry)
        report(
            logging.WARNING,
            "consumer %s: %s %s given up after %d deliveries (%s); moved to the dead-letter %s",
            self.name,
            entry.stream,
            entry.id,
            attempts,
            reason.splitlines()[0] if reason else "",
            self.dead_letter_name,
        )

    def _ack(self, entry: LogEntry) -> None:
        raise NotImplementedError

    def _nack(self, entry: LogEntry, nack: Nack) -> None:
        raise NotImplementedError

    def _dead_letter(self, entry: LogEntry, attempts: int, reason: str, error: str | None) -> None:
        raise NotImplementedError

    @property
    def dead_letter_name(self) -> str:
        """Where given-up records go: a stream or a queue."""
        raise NotImplementedError

    def _leave(self, entry: LogEntry) -> None:
        """The record stays with the broker, for this consumer or another."""

    def _close_callback(self) -> None:
        """Close a class callback; log the counters in one line."""
        close = getattr(self.callback, "close", None)
        if callable(close):
            close()
        counts = ", ".join(f"{name} {count}" for name, count in self.counts.items())
        report(
            logging.INFO,
            "consumer %s of group %s stopped with status %d: %s",
            self.name,
            self.group,
            self.status,
            counts,
        )
