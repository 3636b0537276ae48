"""The logging side of the handlers, and nothing more.

``emit`` formats the record once, reads the log context once and appends a
small tuple to the shipper's buffer.  It takes no lock, makes no system
call and encodes no JSON: the caller pays little more than formatting, and
a slow or dead Redis is never felt by the code that logs.  Encoding,
batching, Redis and retries happen in the shipper's thread.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

from redis_logstream.conf import ShippingOptions
from redis_logstream.context import INTERNAL, user_id_context
from redis_logstream.shipping.shipper import Shipper

__all__ = ["ShippingHandler", "live_handlers", "shipper_for"]

_get_context = user_id_context.get
_live: weakref.WeakSet[ShippingHandler] = weakref.WeakSet()


def live_handlers() -> list[ShippingHandler]:
    """Every handler of this library in this process that still exists (for metrics)."""
    return list(_live)


def shipper_for(options: ShippingOptions, sink: Any, encoder: Any) -> Shipper:
    """The buffer, batching and exit behaviour every handler shares."""
    return Shipper(
        sink,
        encoder,
        queue_size=options.queue_size,
        overflow=options.overflow,
        batch_size=options.batch_size,
        flush_interval=options.flush_interval,
        shutdown_timeout=options.shutdown_timeout,
    )


class ShippingHandler(logging.Handler):
    """The logging side of every handler of this library, whatever the broker.

    ``emit`` formats the record and appends it to the shipper's buffer;
    the broker is the sink's business, in the shipper's thread.  Subclasses
    only build the shipper (:class:`RedisLogHandler`, ``AmqpLogHandler``).
    """

    def __init__(self, level: int | str, shipper: Shipper) -> None:
        super().__init__(level)
        self.shipper = shipper
        _live.add(self)

    @property
    def label(self) -> str:
        """Where the records go, for metrics and repr."""
        raise NotImplementedError

    def handle(self, record: logging.LogRecord) -> Any:
        # logging.Handler.handle wraps emit in the handler's lock; emit
        # needs none (the buffer is thread-safe), and a lock per record is
        # a cost every caller would pay.
        rv = self.filter(record)
        if isinstance(rv, logging.LogRecord):  # Python 3.12+: a filter may replace it
            record = rv
        if rv:
            self.emit(record)
        return rv

    def emit(self, record: logging.LogRecord) -> None:
        try:
            context = _get_context()
            if context is INTERNAL:
                return  # logged while shipping: never back into the buffer
            shipper = self.shipper
            buffer = shipper.buffer
            item = (self.format(record), record.levelno, record.created, record.name, context)
            if len(buffer) < shipper.room:
                buffer.append(item)
                if shipper.idle:
                    shipper.wake()
            else:
                shipper.overflow(item)
        except Exception:
            self._emit_fallback(record)

    def _emit_fallback(self, record: logging.LogRecord) -> None:
        """The record could not be formatted (broken %-args, a message whose
        str() raises, a formatter bug): ship a description of it instead."""
        try:
            item = (
                _describe_unformattable(record, self.formatter or logging.Formatter()),
                getattr(record, "levelno", logging.ERROR),
                float(getattr(record, "created", 0.0) or 0.0),
                str(getattr(record, "name", "root")),
                _get_context(),
            )
            shipper = self.shipper
            if len(shipper.buffer) < shipper.room:
                shipper.buffer.append(item)
                shipper.wake()
            else:
                shipper.overflow(item)
        except Exception:
            self.handleError(record)

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything emitted before this call is in Redis.

        Returns False if that did not happen within ``timeout`` seconds;
        None means shutdown_timeout, never forever (logging calls flush()
        under its module lock, at exit among other places).
        """
        return self.shipper.flush(timeout)

    def close(self) -> None:
        """Write what is buffered within shutdown_timeout, then stop the worker."""
        try:
            self.shipper.shutdown()
        finally:
            super().close()

    def stats(self) -> dict[str, Any]:
        """Counters: enqueued, sent, dropped, pending, batches, retries,
        errors, failed, last_error.  enqueued + dropped = records emitted."""
        return self.shipper.stats()

    def __repr__(self) -> str:
        level = logging.getLevelName(self.level)
        return f"<{type(self).__name__} {self.label} ({level})>"


def _safe_text(value: Any) -> str:
    for render in (str, repr):
        try:
            return render(value)
        except Exception:
            continue
    return f"<unprintable {type(value).__name__}>"


def _describe_unformattable(record: logging.LogRecord, formatter: logging.Formatter) -> str:
    """What could not be formatted, and the traceback and stack it carried:
    a broken %-argument in ``log.exception(...)`` must not cost the traceback."""
    msg = _safe_text(getattr(record, "msg", None))
    args = _safe_text(getattr(record, "args", None))
    text = f"{msg} (unformattable log record; args: {args})"
    exc_info = getattr(record, "exc_info", None)
    if exc_info:
        try:
            text += "\n" + formatter.formatException(exc_info)
        except Exception:
            text += "\n(its exception could not be formatted)"
    stack = getattr(record, "stack_info", None)
    if stack:
        text += "\n" + _safe_text(stack)
    return text
