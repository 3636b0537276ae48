"""What every consumer does with a record, whatever it reads from.

A consumer of a Redis consumer group (:mod:`.consumer`) and one of an
AMQP queue (:mod:`.amqp_consumer`) read differently, but answer the
callback the same way: returned means acknowledge, ``Nack`` means later,
``Drop`` means acknowledge unhandled, ``HaltConsumer`` means stop, anything
else is a bug that stops the consumer with the record left pending.  This
class holds that contract, the counters and the stop; subclasses say what
acknowledging, refusing and leaving a record mean for their broker.
"""

from __future__ import annotations

import inspect
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from .consumers import Drop, HaltConsumer, LogEntry, Nack
from .diagnostics import report

__all__ = ["COUNTERS", "CallbackRunner", "built_callback"]

COUNTERS = ("handled", "acked", "nacked", "dropped", "dead_lettered", "claimed", "missed",
            "skipped")  # fmt: skip


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
    ) -> None:
        if not isinstance(group, str) or not group:
            raise ValueError(f"group must be a non-empty str, not {group!r}")
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
        if self.match is not None and not self.match(entry):
            self.counts["skipped"] += 1
            self._ack(entry)
            return
        try:
            self.callback(entry)
        except Nack as nack:
            self.counts["nacked"] += 1
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
        except Exception:
            report(
                logging.ERROR,
                "consumer %s: the callback failed on %s %s; the record stays pending and "
                "the consumer stops", self.name, entry.stream, entry.id, exc_info=True,
            )  # fmt: skip
            self._leave(entry)
            self.status = 1
            self.stop()
        else:
            self.counts["handled"] += 1
            self._ack(entry)

    def _ack(self, entry: LogEntry) -> None:
        raise NotImplementedError

    def _nack(self, entry: LogEntry, nack: Nack) -> None:
        raise NotImplementedError

    def _leave(self, entry: LogEntry) -> None:
        """The record stays with the broker, for this consumer or another."""

    def _close_callback(self) -> None:
        """Close a class callback; log the counters in one line."""
        close = getattr(self.callback, "close", None)
        if callable(close):
            close()
        counts = ", ".join(f"{name} {count}" for name, count in self.counts.items())
        report(logging.INFO, "consumer %s of group %s stopped with status %d: %s",
               self.name, self.group, self.status, counts)  # fmt: skip
