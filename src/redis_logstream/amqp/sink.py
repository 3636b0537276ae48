"""Writing batches to an AMQP topic exchange (RabbitMQ), with py-amqp.

One connection and one channel, in the shipper's thread, with publisher
confirms: a batch is published message by message without waiting, then
the broker's acks (``multiple`` or one by one) are awaited once for the
whole batch.  What was not confirmed when the connection went away is
handed back to the shipper, which retries it with capped backoff while the
records wait in its buffer; a message the broker received but could not
confirm before the loss is then published twice (at least once, as with
the Redis sink's timeouts).

A record py-amqp cannot pack (a routing key or a property out of AMQP's
range: the error comes before anything is written, so the connection is
intact) is refused for good: it is skipped and its neighbours published.
When the broker closes the channel while a batch is published (a message
over its ``max_message_size``), what it did not confirm is handed back as
suspect, and the shipper writes the first of it alone until it goes or is
skipped (:mod:`.shipper`).

The sink knows nothing of logging: it takes ``(routing_key, json_bytes,
timestamp)`` items, built by :class:`AmqpEncoder` in the shipper thread.
"""

from __future__ import annotations

import contextlib
import logging
import math
import struct
from typing import Any
from urllib.parse import unquote, urlsplit

import amqp

from redis_logstream.amqp.routing import routing_key
from redis_logstream.shipping.shipper import WriteError
from redis_logstream.shipping.wire import Encoder

__all__ = ["AmqpEncoder", "AmqpSink", "connection_options", "reader_channel"]

APP_ID = "redis_logstream"

#: What py-amqp raises when a message cannot be packed into frames.
_UNPACKABLE = (struct.error, ValueError, TypeError, OverflowError)
#: The broker's refusals of one message (406: over its max_message_size, a
#: bad expiration; 311): any other error is the connection's or the
#: channel's, and says nothing about a record.
_MESSAGE_REFUSALS = (amqp.exceptions.PreconditionFailed, amqp.exceptions.ContentTooLarge)
#: An AMQP timestamp is an unsigned 64-bit integer.
_MAX_STAMP = 2**64 - 1


def connection_options(url: str, timeout: float) -> dict[str, Any]:
    """py-amqp Connection arguments for ``amqp://user:pass@host:port/vhost``
    (``amqps://`` for TLS; the default vhost is ``/``, written ``%2F``)."""
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ValueError(f"not an AMQP URL (amqp://user:password@host:port/vhost): {url!r}")
    tls = parts.scheme == "amqps"
    port = parts.port or (5671 if tls else 5672)
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return {
        "host": f"{parts.hostname or 'localhost'}:{port}",
        "userid": unquote(parts.username or "guest"),
        "password": unquote(parts.password or "guest"),
        "virtual_host": vhost,
        "ssl": tls,
        "connect_timeout": timeout,
        "read_timeout": timeout,
        "write_timeout": timeout,
        "heartbeat": 0,
    }


def reader_channel(conn: Any, exchange: str, durable: bool = False) -> Any:
    """A channel of ``conn`` on which ``exchange`` exists: a reader uses the
    exchange as the handler declared it (durable or not), and declares it
    itself (``durable``) only when no handler has yet."""
    channel = conn.channel()
    try:
        channel.exchange_declare(exchange, "topic", passive=True)
    except amqp.exceptions.NotFound:  # the broker closed that channel
        channel = conn.channel()
        channel.exchange_declare(exchange, "topic", durable=durable, auto_delete=False)
    return channel


class AmqpEncoder(Encoder):
    """The wire JSON of a record, plus its routing key and timestamp."""

    def __init__(self, max_message_bytes: int = 65536) -> None:
        super().__init__(max_message_bytes)
        self._keys: dict[tuple[Any, int, str], str] = {}

    def __call__(self, item: tuple[str, int, float, str, Any]) -> tuple[str, bytes, int]:
        route, data = super().__call__(item)
        _message, levelno, created, name, _context = item
        key = self._keys.get((route, levelno, name))
        if key is None:
            if len(self._keys) >= 4096:
                self._keys.clear()
            level = str(logging.getLevelName(levelno))
            key = self._keys[(route, levelno, name)] = routing_key(route, level, name)
        stamp = int(created) if math.isfinite(created) else 0
        return key, data, stamp if 0 <= stamp <= _MAX_STAMP else 0


class AmqpSink:
    """Publishes ``(routing_key, json_bytes, timestamp)`` batches to a topic exchange."""

    def __init__(
        self,
        url: str,
        exchange: str = "logs",
        *,
        durable: bool = False,
        persistent: bool = False,
        timeout: float = 2.0,
    ) -> None:
        self.options = connection_options(url, timeout)
        self.exchange = exchange
        self.durable = durable
        self.delivery_mode = 2 if persistent else 1
        self.timeout = timeout
        self._conn: Any = None
        self._channel: Any = None
        self._confirmed = 0  # highest delivery tag the broker acked
        self._refused: list[int] = []  # tags it nacked
        self._next_tag = 1

    def _open(self) -> Any:
        if self._channel is not None:
            return self._channel
        conn = amqp.Connection(**self.options)
        try:
            conn.connect()
            channel = conn.channel()
            channel.exchange_declare(
                self.exchange, "topic", durable=self.durable, auto_delete=False
            )
            channel.confirm_select()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
        except BaseException:
            _quietly_close(conn)
            raise
        self._conn, self._channel = conn, channel
        self._confirmed, self._refused, self._next_tag = 0, [], 1
        return channel

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        self._confirmed = max(self._confirmed, delivery_tag)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        self._refused.append(delivery_tag)
        self._confirmed = max(self._confirmed, delivery_tag)

    def write(self, batch: list[tuple[str, bytes, int]]) -> None:
        first = None
        published: list[int] = []  # batch positions, in delivery-tag order from ``first``
        unpackable: list[int] = []
        refusal = ""
        try:
            channel = self._open()
            first = self._next_tag
            for position, (key, data, stamp) in enumerate(batch):
                message = amqp.Message(
                    data,
                    content_type="application/json",
                    app_id=APP_ID,
                    timestamp=stamp,
                    delivery_mode=self.delivery_mode,
                )
                try:
                    channel.basic_publish(message, exchange=self.exchange, routing_key=key)
                except _UNPACKABLE as exc:  # packed before any byte is sent: skip it
                    unpackable.append(position)
                    refusal = refusal or f"cannot publish a record: {type(exc).__name__}: {exc}"
                    continue
                published.append(position)
                self._next_tag += 1
            last = self._next_tag - 1
            while self._confirmed < last:
                self._conn.drain_events(timeout=self.timeout)
        except Exception as exc:
            # The broker confirms in order: what it acked is stored, the rest is retried.
            confirmed = 0 if first is None else max(0, self._confirmed - first + 1)
            self._drop()
            settled = set(published[:confirmed]).union(unpackable)
            remaining = [item for i, item in enumerate(batch) if i not in settled]
            # A message refused while publishing, or an error foreign to the
            # connection, may be a record's fault; nothing is while opening.
            foreign = not isinstance(exc, (OSError, amqp.exceptions.AMQPError))
            suspect = first is not None and (foreign or isinstance(exc, _MESSAGE_REFUSALS))
            raise WriteError(
                f"{type(exc).__name__}: {exc}", remaining, len(unpackable), suspect=suspect
            ) from exc
        refused = [tag for tag in self._refused if tag >= first]
        self._refused = []
        if refused or unpackable:
            positions = sorted(published[tag - first] for tag in refused)
            raise WriteError(
                refusal or f"the broker refused {len(positions)} records (basic.nack)",
                [batch[i] for i in positions],
                len(unpackable),
            )

    def _drop(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            _quietly_close(conn)

    def close(self) -> None:
        conn, self._conn, self._channel = self._conn, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # a broker gone: drop the socket
                _quietly_close(conn)

    def after_fork(self) -> None:
        """The parent's connection is the parent's: forget it, unclosed."""
        self._conn = self._channel = None


def _quietly_close(conn: Any) -> None:
    with contextlib.suppress(Exception):  # nothing left to report
        conn.collect()  # drop the socket without a close handshake
