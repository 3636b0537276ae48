"""The Redis handler: a ShippingHandler whose shipper drives a Redis sink."""

from __future__ import annotations

import logging
from typing import Any

from redis_logstream.conf import Options, resolve_options
from redis_logstream.redis.cluster_sink import ClusterSink
from redis_logstream.redis.connection import client_factory, names_for
from redis_logstream.redis.sink import RedisSink
from redis_logstream.shipping.handler import ShippingHandler, shipper_for
from redis_logstream.shipping.wire import Encoder

__all__ = ["RedisLogHandler"]


class RedisLogHandler(ShippingHandler):
    """Send log records to Redis pub/sub channels and capped streams.

    Every option of ``settings.REDIS_LOGSTREAM`` can be given here as a
    keyword argument (lower-case), and wins over the setting; see
    docs/configuration.md.  From a LOGGING dict::

        "handlers": {"redis": {"class": "redis_logstream.RedisLogHandler",
                               "level": "INFO", "connection": "default"}}

    In a plain script, without Django settings, give ``url=`` or ``client=``.
    """

    def __init__(self, level: int | str = logging.NOTSET, **options: Any) -> None:
        self.options: Options = resolve_options(options)
        opts = self.options
        self.names = names_for(opts)
        sink = (ClusterSink if self.names.hash_tags else RedisSink)(
            client_factory(opts),
            self.names,
            stream_maxlen=opts.stream_maxlen,
            context_ttl=opts.context_ttl,
            global_ttl=opts.global_ttl,
            sharded_pubsub=opts.sharded_pubsub,
        )
        super().__init__(level, shipper_for(opts, sink, Encoder(opts.max_message_bytes)))

    @property
    def label(self) -> str:
        return self.names.global_stream
