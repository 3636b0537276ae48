"""The same handler for RabbitMQ: records to an AMQP topic exchange.

``AmqpLogHandler`` is :class:`~redis_logstream.redis.handler.RedisLogHandler`'s
twin: the same ``emit`` (no lock, no network, no JSON in the caller), the
same buffer, overflow policies, ``flush``/``close``/``stats`` and exit
behaviour, because it is the same code with another sink.  Each record is
published, as the same JSON, with the routing key
``<context>.<LEVEL>.<logger>`` (:mod:`.amqp_routing`), so listeners bind
with patterns: ``*.ERROR.#``, ``binding_key(context="User.alice")``.

Needs the ``amqp`` package (py-amqp, which Celery already brings):
``pip install "django-redis-logstream[amqp]"``.

From LOGGING::

    "handlers": {"rabbit": {"class": "redis_logstream.amqp.AmqpLogHandler",
                            "url": "amqp://guest:guest@127.0.0.1:5672/%2F"}}

or site-wide in ``settings.REDIS_LOGSTREAM``: ``AMQP_URL``, ``AMQP_EXCHANGE``,
``AMQP_EXCHANGE_DURABLE``, ``AMQP_PERSISTENT``, with the shared options
(``QUEUE_SIZE``, ``OVERFLOW``, ...).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

try:
    from redis_logstream.amqp.sink import AmqpEncoder, AmqpSink, connection_options
except ImportError as exc:  # pragma: no cover  (the extra is installed for the tests)
    raise ImportError(
        "redis_logstream.amqp needs the amqp package (py-amqp): "
        'pip install "django-redis-logstream[amqp]"'
    ) from exc

from redis_logstream.amqp.routing import binding_key, decode_word, routing_key
from redis_logstream.conf import AMQP_SETTINGS, REDIS_ONLY_NAMES, ShippingOptions, resolve
from redis_logstream.shipping.handler import ShippingHandler, shipper_for

__all__ = ["AmqpLogHandler", "AmqpOptions", "binding_key", "decode_word", "routing_key"]

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


@dataclass(frozen=True)
class AmqpOptions(ShippingOptions):
    """The resolved options of one AmqpLogHandler (see docs/rabbitmq.md)."""

    url: str = DEFAULT_URL
    exchange: str = "logs"
    exchange_durable: bool = False
    persistent: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.exchange, str) or not self.exchange:
            raise ValueError(f"exchange must be a non-empty str, not {self.exchange!r}.")
        for name in ("exchange_durable", "persistent"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, not {getattr(self, name)!r}.")
        if not isinstance(self.url, str):
            raise ValueError(f"url must be a str, not {type(self.url).__name__}.")
        connection_options(self.url, self.socket_timeout)  # ValueError on a bad URL


class AmqpLogHandler(ShippingHandler):
    """Send log records to an AMQP topic exchange (RabbitMQ).

    Options as keyword arguments (they win over ``settings.REDIS_LOGSTREAM``):
    ``url``, ``exchange`` (``"logs"``), ``exchange_durable`` (False),
    ``persistent`` (False: transient messages, like pub/sub), and the
    options every handler shares (``queue_size``, ``overflow``,
    ``batch_size``, ``flush_interval``, ``shutdown_timeout``,
    ``max_message_bytes``, ``socket_timeout``).
    """

    def __init__(self, level: int | str = logging.NOTSET, **options: Any) -> None:
        self.options: AmqpOptions = resolve(
            AmqpOptions, options, renamed=AMQP_SETTINGS, others=REDIS_ONLY_NAMES
        )
        opts = self.options
        sink = AmqpSink(
            opts.url,
            opts.exchange,
            durable=opts.exchange_durable,
            persistent=opts.persistent,
            timeout=opts.socket_timeout,
        )
        super().__init__(level, shipper_for(opts, sink, AmqpEncoder(opts.max_message_bytes)))

    @property
    def label(self) -> str:
        return f"amqp:{self.options.exchange}"
