"""Consuming from RabbitMQ with the same callback contract as a Redis group.

A group is a durable queue, ``<exchange>.<group>``, bound to the exchange
with the group's patterns: every group gets every matching record, the
consumers of a group share its queue.  Each message is acknowledged once
the callback returned (or raised ``Drop``); ``Nack`` hands it back to the
queue after ``retry_after`` seconds (``basic.reject`` with requeue), to
this consumer or another; ``HaltConsumer`` and an unexpected exception
hand the record back at once and stop.  Messages a consumer had received
and not acknowledged when it died go back to the queue by themselves (the
broker requeues them with the channel), so a crash loses nothing.

A classic queue counts no deliveries, so ``max_retries`` does not apply
here: give the queue the broker's own dead-lettering (a policy with
``dead-letter-exchange``, or a quorum queue's ``delivery-limit``).
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import amqp

from .amqp_sink import connection_options, reader_channel
from .consumer import default_consumer_name
from .consumers import LogEntry, Nack
from .diagnostics import report
from .runner import CallbackRunner

__all__ = ["AmqpConsumer", "queue_name"]

POLL_SECONDS = 0.5
_BACKOFF_CAP = 5.0


def queue_name(exchange: str, group: str) -> str:
    """The queue of ``group``: shared by its consumers, kept across restarts."""
    return f"{exchange}.{group}"


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
        match: Callable[[LogEntry], bool] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        name = consumer or default_consumer_name()
        super().__init__(callback, name, group, match=match, stop=stop)
        self.options = connection_options(url, timeout=5.0)
        self.patterns = list(patterns) or ["#"]
        self.exchange = exchange
        self.durable_exchange = durable_exchange
        self.queue = queue_name(exchange, group)
        self.batch = batch
        self.retry_after = retry_after
        self._channel: Any = None
        self._later: list[tuple[float, int]] = []  # (due, delivery tag) of Nack'ed messages

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
                except (OSError, amqp.exceptions.AMQPError) as exc:
                    if not delay:
                        report(logging.WARNING, "consumer %s: lost the broker (%s); retrying",
                               self.name, " ".join(str(exc).split()))  # fmt: skip
                    delay = min(_BACKOFF_CAP, (delay or 0.1) * 2)
                    self._stopping.wait(delay)
                finally:
                    self._channel, self._later = None, []
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
        channel.queue_declare(self.queue, durable=True, auto_delete=False)
        for pattern in self.patterns:
            channel.queue_bind(self.queue, self.exchange, pattern)
        channel.basic_qos(0, self.batch, False)
        channel.basic_consume(self.queue, callback=self._on_message, no_ack=False,
                              consumer_tag=f"{self.name}-{id(self)}")  # fmt: skip
        self._channel = channel
        return conn

    def _consume(self, conn: Any) -> None:
        while not self.stopping:
            timeout = POLL_SECONDS
            if self._later:
                timeout = max(0.0, min(timeout, self._later[0][0] - time.monotonic()))
            with contextlib.suppress(socket.timeout):
                conn.drain_events(timeout=timeout)
            now = time.monotonic()
            while self._later and self._later[0][0] <= now:
                _due, tag = heapq.heappop(self._later)
                self._channel.basic_reject(tag, requeue=True)

    def _on_message(self, message: Any) -> None:
        if self.stopping:
            return  # not acknowledged: back to the queue with the channel
        info = message.delivery_info
        entry = LogEntry.from_fields(info["routing_key"], info["delivery_tag"],
                                     {b"data": message.body})  # fmt: skip
        self._handle(entry)

    def _ack(self, entry: LogEntry) -> None:
        self._channel.basic_ack(int(entry.id))
        self.counts["acked"] += 1

    def _nack(self, entry: LogEntry, nack: Nack) -> None:
        delay = self.retry_after if nack.retry_after is None else nack.retry_after
        heapq.heappush(self._later, (time.monotonic() + delay, int(entry.id)))

    def _leave(self, entry: LogEntry) -> None:
        self._channel.basic_reject(int(entry.id), requeue=True)
