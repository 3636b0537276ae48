"""Following the live channels (pub/sub) instead of the streams.

The streams are what readers normally follow: they keep history and a
reader that reconnects resumes without a gap.  The channels carry the same
bytes to whoever is subscribed at that moment, with nothing kept; they are
what other programs consume (a chat bot, a websocket relay).  This reader
exists so that such a consumer can be checked from a terminal
(``tail --live``), and so that a consumer of sharded channels has an
example: with ``sharded_pubsub`` the handler publishes with ``SPUBLISH``
(Redis 7), which only a ``SSUBSCRIBE`` on the shard that owns the channel
hears; redis-py's cluster client routes it there.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from typing import Any

import redis

from redis_logstream.naming import Names
from redis_logstream.reading.entries import Entry, decode_entry

__all__ = ["listen"]

#: How long one wait for a message lasts before ``stop`` is looked at.
POLL_SECONDS = 0.5
_BACKOFF_CAP = 2.0


def listen(
    client: Any,
    names: Names,
    context: str | None,
    *,
    sharded: bool = False,
    stop: threading.Event | None = None,
    match: Callable[[Entry], bool] | None = None,
    notify: Callable[[str], None] | None = None,
) -> Iterator[Entry]:
    """Yield each record published on ``context``'s channel (None: the
    global one) from now on, until ``stop`` is set.

    Entries have no id (pub/sub has none).  A lost connection is retried
    with capped backoff, reported through ``notify`` once when it goes and
    once when it is back; what was published in between is not seen (that
    is pub/sub: follow the stream to miss nothing).
    """
    channel = names.channel(context)
    stop = stop or threading.Event()
    delay = 0.0
    while not stop.is_set():
        # Subscribe confirmations are skipped by type below: redis-py 5's
        # cluster client, told to ignore them, drops every sharded message.
        pubsub = client.pubsub()
        try:
            if sharded:
                pubsub.ssubscribe(channel)
                receive = pubsub.get_sharded_message
            else:
                pubsub.subscribe(channel)
                receive = pubsub.get_message
            if delay and notify is not None:
                notify("Redis is back; listening again")
            delay = 0.0
            while not stop.is_set():
                message = receive(timeout=POLL_SECONDS)
                if message is None or message.get("type") not in ("message", "smessage"):
                    continue
                entry = decode_entry("", {b"data": message["data"]})
                if match is None or match(entry):
                    yield entry
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            if not delay and notify is not None:
                notify(f"lost Redis ({' '.join(str(exc).split())}); retrying")
            delay = min(_BACKOFF_CAP, (delay or 0.05) * 2)
            stop.wait(delay)
        finally:
            with contextlib.suppress(redis.RedisError, OSError):
                pubsub.close()
