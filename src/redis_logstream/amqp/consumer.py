"""Consuming from RabbitMQ with the same callback contract as a Redis group.

A group is a durable queue, ``<exchange>.<group>``, bound to the exchange
with the group's patterns: every group gets every matching record, the
consumers of a group share its queue.  Each message is acknowledged once
the callback returned (or raised ``Drop``); ``Nack`` hands it back to the
queue after ``retry_after`` seconds (as a copy that counts the delivery),
to this consumer or another; ``HaltConsumer`` and an unexpected exception
hand the record back at once and stop.  Messages a consumer had received
and not acknowledged when it died go back to the queue by themselves (the
broker requeues them with the channel), so a crash loses nothing.

Deliveries are counted in the message itself, so that the count survives
any restart.  A classic queue counts none: it only flags a message it hands
out again as ``redelivered``.  A consumer that receives a flagged message
records that delivery before anything else: it publishes a copy to the
group's queue with the header ``x-redis-logstream-deliveries`` one higher
(the broker confirming it), then acknowledges the original; the copy comes
back unflagged and is handled.  A quorum queue's own ``x-delivery-count``
is used where present, without copies (a group queue declared beforehand,
quorum or not, is used as it is).  A message delivered
``max_deliveries`` times without an acknowledgement goes to the queue
``<exchange>.<group>.dead-letter`` with the last error, and is
acknowledged.  Messages received and never handed to the callback when the
consumer stops are put back the same way with their count unchanged.  A
message whose last delivery got no answer is handed to the callback alone,
so that if it kills the consumer again no other message is charged.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import amqp

from redis_logstream.amqp.sink import connection_options, reader_channel
from redis_logstream.consumers.consumer import default_consumer_name
from redis_logstream.consumers.contract import LogEntry, Nack
from redis_logstream.consumers.runner import DEFAULT_MAX_DELIVERIES, CallbackRunner
from redis_logstream.shipping.diagnostics import report

__all__ = ["DELIVERIES_HEADER", "AmqpConsumer", "dead_letter_queue", "queue_name"]

POLL_SECONDS = 0.5
_BACKOFF_CAP = 5.0
#: Deliveries that ended without an acknowledgement so far (on a copy).
DELIVERIES_HEADER = "x-redis-logstream-deliveries"
#: The routing key the record was published with (a copy's is the queue's name).
ROUTING_HEADER = "x-redis-logstream-routing-key"
#: On a copy whose last delivery ended with no answer (a crash, an exception, a halt).
UNANSWERED_HEADER = "x-redis-logstream-unanswered"
_BROKER_COUNT = "x-delivery-count"  # a quorum queue's own count


def queue_name(exchange: str, group: str) -> str:
    """The queue of ``group``: shared by its consumers, kept across restarts."""
    return f"{exchange}.{group}"


def dead_letter_queue(exchange: str, group: str) -> str:
    """Where ``group``'s given-up records wait for a person to look."""
    return f"{queue_name(exchange, group)}.dead-letter"


def _headers(message: Any) -> dict[str, Any]:
    return dict(message.properties.get("application_headers") or {})


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _unanswered(message: Any) -> bool:
    """Whether its last delivery ended with no answer from the callback."""
    headers = _headers(message)
    return bool(headers.get(UNANSWERED_HEADER)) or _count(headers.get(_BROKER_COUNT)) > 0


def prior_deliveries(message: Any) -> tuple[int, bool]:
    """(deliveries before this one, whether that number is recorded).

    A classic queue's ``redelivered`` flag says "at least once more" without
    keeping it: the consumer must record it before handing the message out.
    """
    headers = _headers(message)
    recorded = _count(headers.get(DELIVERIES_HEADER))
    if _BROKER_COUNT in headers:
        return recorded + _count(headers[_BROKER_COUNT]), True
    if message.delivery_info.get("redelivered"):
        return recorded + 1, False
    return recorded, True


class AmqpConsumer(CallbackRunner):
    """One consumer of ``group``'s queue; ``run()`` returns the exit status."""

    def __init__(
        self,
        callback: Callable[[LogEntry], Any],
        *,
        url: str,
        group: str,
        patterns: Sequence[str] = ("#",),
        exchange: str = "logs",
        durable_exchange: bool = False,
        consumer: str | None = None,
        batch: int = 100,
        retry_after: float = 5.0,
        max_deliveries: int = DEFAULT_MAX_DELIVERIES,
        match: Callable[[LogEntry], bool] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        name = consumer or default_consumer_name()
        super().__init__(
            callback, name, group, match=match, stop=stop, max_deliveries=max_deliveries
        )
        self.options = connection_options(url, timeout=5.0)
        self.patterns = list(patterns) or ["#"]
        self.exchange = exchange
        self.durable_exchange = durable_exchange
        self.queue = queue_name(exchange, group)
        self.dead_queue = dead_letter_queue(exchange, group)
        self.batch = batch
        self.retry_after = retry_after
        self._channel: Any = None
        self._publisher: Any = None  # a channel in confirm mode, for copies
        self._tag = f"{self.name}-{id(self)}"
        self._subscribed = False
        self._inbox: deque[Any] = deque()  # received, not yet looked at
        # Nack'ed messages: (due, delivery tag, message, the delivery that was refused)
        self._later: list[tuple[float, int, Any, int]] = []
        self._in_hand: Any = None  # the message the callback is looking at

    def run(self) -> int:
        delay = 0.0
        try:
            while not self.stopping:
                conn = None
                try:
                    conn = self._connect()
                    if delay:
                        report(logging.INFO, "consumer %s: the broker is back", self.name)
                    delay = 0.0
                    self._consume(conn)
                except amqp.exceptions.AccessRefused:
                    raise
                except (OSError, amqp.exceptions.AMQPError, amqp.exceptions.MessageNacked) as exc:
                    if not delay:
                        report(
                            logging.WARNING,
                            "consumer %s: lost the broker (%s); retrying",
                            self.name,
                            " ".join(str(exc).split()),
                        )
                    delay = min(_BACKOFF_CAP, (delay or 0.1) * 2)
                    self._stopping.wait(delay)
                finally:
                    self._channel, self._publisher, self._later = None, None, []
                    self._subscribed = False
                    self._inbox.clear()
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()  # unacknowledged messages go back to the queue
        finally:
            self._close_callback()
        return self.status

    def _connect(self) -> Any:
        conn = amqp.Connection(**self.options)
        conn.connect()
        channel = reader_channel(conn, self.exchange, self.durable_exchange)
        try:  # one the operator declared (a quorum queue, say) is used as it is
            channel.queue_declare(self.queue, passive=True)
        except amqp.exceptions.NotFound:  # the broker closed that channel
            channel = conn.channel()
            channel.queue_declare(self.queue, durable=True, auto_delete=False)
        channel.queue_declare(self.dead_queue, durable=True, auto_delete=False)
        for pattern in self.patterns:
            channel.queue_bind(self.queue, self.exchange, pattern)
        publisher = conn.channel()
        publisher.confirm_select()
        channel.basic_qos(0, self.batch, False)
        self._channel, self._publisher = channel, publisher
        self._subscribe()
        return conn

    def _subscribe(self) -> None:
        self._channel.basic_consume(
            self.queue, callback=self._on_message, no_ack=False, consumer_tag=self._tag
        )
        self._subscribed = True

    def _unsubscribe(self) -> None:
        """No more deliveries; those already on their way land in the inbox."""
        if self._subscribed:
            self._subscribed = False
            self._channel.basic_cancel(self._tag)

    def _consume(self, conn: Any) -> None:
        while not self.stopping:
            timeout = POLL_SECONDS
            if self._later:
                timeout = max(0.0, min(timeout, self._later[0][0] - time.monotonic()))
            with contextlib.suppress(socket.timeout):
                conn.drain_events(timeout=timeout)
            while self._inbox and not self.stopping:
                self._receive(self._inbox.popleft())
            now = time.monotonic()
            while self._later and self._later[0][0] <= now:
                _due, _tag, message, refused = heapq.heappop(self._later)
                self._copy_back(message, refused, unanswered=False)
        self._give_back()

    def _on_message(self, message: Any) -> None:
        # Only queued here: publishing a copy waits for the broker, which
        # dispatches more deliveries meanwhile; they must not nest.
        self._inbox.append(message)

    def _receive(self, message: Any) -> None:
        prior, recorded = prior_deliveries(message)
        tag = message.delivery_info["delivery_tag"]
        if not recorded and prior < self.max_deliveries:
            self._copy_back(message, prior, unanswered=True)
            return
        key = _headers(message).get(ROUTING_HEADER) or message.delivery_info["routing_key"]
        entry = LogEntry.from_fields(str(key), tag, {b"data": message.body}, prior + 1)
        self._in_hand = message
        try:
            if prior >= self.max_deliveries or not _unanswered(message):
                self._handle(entry)
                return
            # It got no answer last time: handled alone, so that if it kills
            # the consumer again, no other message comes back flagged with it.
            self._unsubscribe()
            self._put_back_inbox()
            self._handle(entry)
            if not self.stopping:
                self._subscribe()
        finally:
            self._in_hand = None

    def _copy_back(self, message: Any, deliveries: int, unanswered: bool | None = None) -> None:
        """Put ``message`` back at the end of the queue with ``deliveries``
        recorded (and whether the last one got an answer, unless None: as it
        was): the copy first (confirmed), then the original's ack."""
        headers = {k: v for k, v in _headers(message).items() if k != _BROKER_COUNT}
        headers[DELIVERIES_HEADER] = deliveries
        headers.setdefault(ROUTING_HEADER, message.delivery_info["routing_key"])
        if unanswered is not None:
            headers.pop(UNANSWERED_HEADER, None)
            if unanswered:
                headers[UNANSWERED_HEADER] = True
        properties = {k: v for k, v in message.properties.items() if k != "application_headers"}
        copy = amqp.Message(message.body, application_headers=headers, **properties)
        self._publisher.basic_publish_confirm(copy, exchange="", routing_key=self.queue)
        self._channel.basic_ack(message.delivery_info["delivery_tag"])

    def _put_back_inbox(self) -> None:
        """What was received and never handed to the callback goes back with
        its count unchanged (the broker would flag it redelivered)."""
        while self._inbox:
            message = self._inbox.popleft()
            self._copy_back(message, prior_deliveries(message)[0])

    def _give_back(self) -> None:
        """Stopping: put back what was received and not handled, and the
        Nack'ed messages with the refusal counted."""
        if self._channel is None:
            return
        try:
            self._unsubscribe()
            self._put_back_inbox()
            while self._later:
                _due, _tag, message, refused = heapq.heappop(self._later)
                self._copy_back(message, refused, unanswered=False)
        except (OSError, amqp.exceptions.AMQPError, amqp.exceptions.MessageNacked) as exc:
            report(
                logging.WARNING,
                "consumer %s: %d received records go back to the queue as redelivered (%s)",
                self.name,
                len(self._inbox) + 1,
                exc,
            )

    def _ack(self, entry: LogEntry) -> None:
        self._channel.basic_ack(int(entry.id))
        self.counts["acked"] += 1

    def _nack(self, entry: LogEntry, nack: Nack) -> None:
        delay = self.retry_after if nack.retry_after is None else nack.retry_after
        due = time.monotonic() + delay
        heapq.heappush(self._later, (due, int(entry.id), self._in_hand, entry.deliveries))

    def _leave(self, entry: LogEntry) -> None:
        # The consumer stops: unsubscribed first, lest the broker hand the
        # message straight back to it (a quorum queue would count that too).
        self._unsubscribe()
        self._channel.basic_reject(int(entry.id), requeue=True)  # comes back flagged: counted

    def _dead_letter(self, entry: LogEntry, attempts: int, reason: str, error: str | None) -> None:
        headers = {
            DELIVERIES_HEADER: attempts,
            ROUTING_HEADER: entry.stream,
            "x-redis-logstream-group": self.group,
            "x-redis-logstream-consumer": self.name,
            "x-redis-logstream-reason": reason,
        }
        if error:
            headers["x-redis-logstream-error"] = error
        message = amqp.Message(
            entry.raw, content_type="application/json", delivery_mode=2, application_headers=headers
        )
        self._publisher.basic_publish_confirm(message, exchange="", routing_key=self.dead_queue)

    @property
    def dead_letter_name(self) -> str:
        return self.dead_queue
