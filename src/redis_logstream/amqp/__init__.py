"""The AMQP broker (RabbitMQ): AmqpLogHandler, its sink, routing keys and the
AMQP consumer.  Importing this package does not load the Redis sink stack."""

from redis_logstream.amqp.handler import (
    DEFAULT_URL,
    AmqpLogHandler,
    AmqpOptions,
    binding_key,
    decode_word,
    routing_key,
)

__all__ = [
    "DEFAULT_URL",
    "AmqpLogHandler",
    "AmqpOptions",
    "binding_key",
    "decode_word",
    "routing_key",
]
