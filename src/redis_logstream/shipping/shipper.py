"""The shipper: a bounded buffer and one daemon thread that drains it.

Callers (the handler's ``emit``) append small tuples to :attr:`Shipper.buffer`
and call :meth:`Shipper.wake` only when :attr:`Shipper.idle` says the
worker sleeps: no lock, no per-record system call, no counter on the
caller's side.  Everything else happens in the worker: it takes up to
``batch_size`` items, or what arrived within ``flush_interval``, encodes each
once, and hands the batch to ``sink.write(batch)``.  The shipper knows
nothing of Redis: a sink is any object with ``write(list)``, and may have
``close()`` and ``after_fork()``.

When ``write`` fails the batch is kept (within ``queue_size``, which bounds
the buffer and the batch in flight together) and retried, in order, by
:class:`.delivery.Delivery`, which also skips, counted in ``failed``, a
record the destination can never accept.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from redis_logstream.context import INTERNAL, user_id_context
from redis_logstream.shipping import lifecycle
from redis_logstream.shipping.delivery import Delivery, WriteError
from redis_logstream.shipping.diagnostics import RateLimiter, report

__all__ = ["Shipper", "Sink", "WriteError"]


class Sink(Protocol):
    def write(self, batch: list[Any]) -> None: ...


class _FlushMarker:
    """Placed in the buffer by flush(): set once all before it is written."""

    __slots__ = ("done", "ok")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.ok = True

    def resolve(self, ok: bool) -> None:
        self.ok = self.ok and ok
        self.done.set()


class Shipper(Delivery):
    """Buffer, batch and retry records on their way to a sink."""

    #: Backoff between attempts while the sink fails: doubles from
    #: ``retry_base`` up to ``retry_cap`` seconds, each wait drawn between half and all of that.
    #: The cap bounds how long a restarted Redis waits for its first records.
    retry_base = 0.05
    retry_cap = 0.5
    #: At most one warning per this many seconds about dropped records
    #: (and as many about records skipped because they can never be written).
    report_interval = 60.0

    def __init__(
        self,
        sink: Sink,
        encode: Callable[[Any], Any],
        *,
        queue_size: int = 10000,
        overflow: str = "drop-new",
        batch_size: int = 500,
        flush_interval: float = 0.05,
        shutdown_timeout: float = 2.0,
        name: str = "redis-logstream",
    ) -> None:
        if overflow not in ("drop-new", "drop-old"):
            raise ValueError(f"overflow must be 'drop-new' or 'drop-old', not {overflow!r}")
        self.sink = sink
        self.encode = encode
        self.queue_size = queue_size
        self.drop_old = overflow == "drop-old"
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.shutdown_timeout = shutdown_timeout
        self.name = name
        self._init_state()
        lifecycle.track(self)

    def _init_state(self) -> None:
        """Fresh buffer, locks, thread and counters (also the child's after fork)."""
        self.buffer: deque[Any] = deque()
        #: How many items the buffer may hold now: queue_size less the batch
        #: in flight.  Callers compare len(buffer) against it.
        self.room = self.queue_size
        #: True while the worker waits for data (or does not run): only then
        #: does a caller pay for wake().
        self.idle = True
        self._lock = threading.Lock()
        # The worker sleeps in acquire() on this held lock and callers wake
        # it with release(): two C calls, where Event.set() runs Python code.
        self._data_ready = threading.Lock()
        self._data_ready.acquire()
        self._urgent = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._finalized = False
        self._deadline = float("inf")
        #: The encoded batch being written, kept until the sink has it.
        self._unsent: list[Any] = []
        # Taken from the buffer and not yet in _unsent (being encoded): still
        # pending, or flush() could see an empty buffer and return too soon.
        self._in_hand = 0
        self._markers = 0
        self.taken = self.sent = self.dropped = self.batches = 0
        self.retries = self.errors = self.failed = 0
        self.last_error: str | None = None
        self._down_since: float | None = None
        self._reported_drops = 0
        self._drop_report = RateLimiter(self.report_interval)
        self._reported_failed = 0
        self._failed_report = RateLimiter(self.report_interval)

    # -- callers' side ---------------------------------------------------

    def overflow(self, item: Any) -> None:
        """Called when the buffer is full: apply the overflow policy and count."""
        with self._lock:
            if not self.drop_old:
                self.dropped += 1
                return
            buffer = self.buffer
            while len(buffer) >= self.room:
                try:
                    old = buffer.popleft()
                except IndexError:
                    break
                if type(old) is _FlushMarker:
                    self._markers -= 1
                    old.resolve(False)
                else:
                    self.dropped += 1
            buffer.append(item)
        if self.idle:
            self.wake()

    def wake(self) -> None:
        """Start the worker if needed and tell it that data waits."""
        # Until the worker says it waits again, later callers need not call.
        self.idle = False
        if self._thread is None:
            self._start()
        if self._data_ready.locked():
            try:  # noqa: SIM105 - contextlib.suppress would cost a Python call here
                self._data_ready.release()
            except RuntimeError:  # another caller released it first
                pass

    def _start(self) -> None:
        with self._lock:
            if self._thread is not None or self._finalized:
                return
            self._stopping = False
            self._deadline = float("inf")
            thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            try:
                thread.start()
            except RuntimeError:  # interpreter shutting down: records stay pending
                return
            self._thread = thread

    # -- control ---------------------------------------------------------

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until all that was appended before the call is written.

        Returns False if that did not happen within ``timeout`` (None means
        shutdown_timeout; there is no unbounded wait).
        """
        if timeout is None:
            timeout = self.shutdown_timeout
        if not self.buffer and not self._unsent and not self._in_hand:
            return True
        if self._finalized:
            return False
        marker = _FlushMarker()
        with self._lock:
            self._markers += 1
            self.buffer.append(marker)
        self._urgent.set()
        self.wake()
        return marker.done.wait(timeout) and marker.ok

    def shutdown(self, timeout: float | None = None) -> bool:
        """Write what is buffered within ``timeout``, then stop the worker.

        Returns True when nothing was left behind.  A later append starts
        a new worker, as a closed FileHandler reopens its file.
        """
        self.begin_shutdown(timeout)
        return self.finish_shutdown()

    @property
    def active(self) -> bool:
        """A worker runs, or records wait for one."""
        return self._thread is not None or self.pending() > 0

    def finalize(self) -> None:
        """The interpreter is exiting: start no worker from now on."""
        self._finalized = True

    def begin_shutdown(self, timeout: float | None) -> None:
        """Ask the worker to write what is buffered and stop, by ``timeout``."""
        if timeout is None:
            timeout = self.shutdown_timeout
        deadline = time.monotonic() + timeout
        if self._stopping:  # a shutdown under way (the exit hook's) keeps its deadline:
            deadline = min(deadline, self._deadline)  # logging.shutdown() must not add one
        self._deadline = deadline
        self._stopping = True
        self._urgent.set()
        with contextlib.suppress(RuntimeError):  # wake the worker if it sleeps
            self._data_ready.release()

    def finish_shutdown(self) -> bool:
        """Wait for the worker until the deadline; True when nothing was left behind."""
        thread = self._thread
        if thread is not None:
            thread.join(max(0.0, self._deadline - time.monotonic()))
            if thread.is_alive():
                return False
            self._thread = None
        close = getattr(self.sink, "close", None)
        if close is not None:
            with contextlib.suppress(Exception):
                close()
        return self.pending() == 0

    def pending(self) -> int:
        """Records accepted but not yet written (buffered or in flight)."""
        return max(0, len(self.buffer) - self._markers) + self._in_hand + len(self._unsent)

    def stats(self) -> dict[str, Any]:
        pending = self.pending()
        return {
            "enqueued": self.taken + pending - len(self._unsent),
            "sent": self.sent,
            "dropped": self.dropped,
            "pending": pending,
            "batches": self.batches,
            "retries": self.retries,
            "errors": self.errors,
            "failed": self.failed,
            "last_error": self.last_error,
        }

    def after_fork(self) -> None:
        """In a child: forget the parent's buffer, thread and connection."""
        self._init_state()
        for part in (self.sink, self.encode):
            hook = getattr(part, "after_fork", None)
            if hook is not None:
                hook()

    # -- worker ----------------------------------------------------------

    def _run(self) -> None:
        user_id_context.set(INTERNAL)  # nothing logged here re-enters a handler
        buffer = self.buffer
        data_ready = self._data_ready
        try:
            while not (self._stopping and time.monotonic() >= self._deadline):
                if not buffer and not self._unsent:
                    if self._stopping:
                        return
                    self.idle = True
                    if not buffer and not self._stopping:
                        data_ready.acquire()
                    else:
                        data_ready.acquire(blocking=False)  # take back a stale wake-up
                    self.idle = False
                    continue
                if (
                    not self._unsent
                    and len(buffer) < self.batch_size
                    and not self._stopping
                    and self.flush_interval
                    and self._urgent.wait(self.flush_interval)
                ):
                    self._urgent.clear()
                self._ship_one_batch(buffer)
                if self.dropped != self._reported_drops and self._drop_report.ready():
                    self._report_drops()
                if self.failed != self._reported_failed and self._failed_report.ready():
                    self._report_failed()
        except BaseException as exc:  # keep the process alive, say why shipping stopped
            report(logging.ERROR, "redis_logstream: shipper stopped: %r", exc)
            raise
        finally:
            self.idle = True
            self._thread = None

    def _ship_one_batch(self, buffer: deque[Any]) -> None:
        marker = None
        if not self._unsent:
            take = min(len(buffer), self.batch_size)
            self.room = self.queue_size - take
            self._in_hand = take
            popleft = buffer.popleft
            items = []
            for _ in range(take):
                item = popleft()
                if type(item) is _FlushMarker:
                    marker = item
                    self._markers -= 1
                    break
                items.append(item)
            encoded = self._encode_all(items)
            self.taken += len(items)
            self._unsent = encoded
            self._in_hand = 0
        ok = self._deliver()
        self.room = self.queue_size - len(self._unsent)
        if marker is not None:
            marker.resolve(ok)

    def _encode_all(self, items: list[Any]) -> list[Any]:
        encode = self.encode
        try:
            return [encode(item) for item in items]
        except Exception:
            pass
        batch = []
        for item in items:  # find and count the one that cannot be encoded
            try:
                batch.append(encode(item))
            except Exception as exc:
                self.errors += 1
                self.failed += 1
                self.last_error = f"cannot encode a record: {exc!r}"
        return batch

    def _report_drops(self) -> None:
        new = self.dropped - self._reported_drops
        self._reported_drops = self.dropped
        report(
            logging.WARNING,
            "redis_logstream: buffer full (queue_size=%d, overflow=%s): %d records dropped",
            self.queue_size,
            "drop-old" if self.drop_old else "drop-new",
            new,
        )
