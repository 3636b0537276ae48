"""Writing batches to Redis: one round trip per batch.

Each record goes to the global channel and stream and, when it has a
context, to that context's channel and stream: ``PUBLISH`` + ``XADD`` for
each, then one ``XTRIM MAXLEN ~`` and one ``EXPIRE`` per touched stream.
Through redis-py's pipeline that costs several times what formatting the
record did, so the commands run in a small server-side script
(``write_batch.lua``), called once per chunk of at most ``chunk_size``
records (short enough that Redis stays responsive: well under 2 ms), and
the chunks of one batch are packed by hand into a single socket write.

The sink knows nothing of logging: it takes ``(context, bytes)`` pairs.
"""

from __future__ import annotations

# Imported here, by the thread that imports the library, not by the shipper
# thread on its first connect: a fork (gunicorn --preload, Celery prefork)
# while that thread holds an import lock leaves the child hung on it, or
# with a half-imported codec ("unknown encoding: idna") and no Redis ever.
import email.parser  # noqa: F401  redis.utils.get_lib_version -> importlib.metadata
import encodings.idna  # noqa: F401  socket.getaddrinfo(host) -> the idna codec
import hashlib
import inspect
import secrets  # noqa: F401  redis.ConnectionPool.__init__
from collections.abc import Callable
from importlib import resources
from typing import Any

from redis import exceptions
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from redis_logstream.naming import Names
from redis_logstream.shipping.shipper import WriteError

__all__ = ["Call", "RedisSink", "exchange"]

_BODY = resources.files(__package__).joinpath("write_batch.lua").read_bytes()
#: With a shebang (Redis 7+) the server refuses the whole script up front when
#: it is out of memory, instead of failing it half-way through a chunk; older
#: servers cannot compile that line and get the plain body.
SCRIPTS = (b"#!lua\n" + _BODY, _BODY)

#: Error replies after which the same write may succeed later.  redis-py
#: turns the known codes into classes (dropping the code from the text).
_TRANSIENT_ERRORS = (
    exceptions.OutOfMemoryError,
    exceptions.BusyLoadingError,
    exceptions.ReadOnlyError,
    exceptions.MasterDownError,
    exceptions.TryAgainError,
    exceptions.ClusterDownError,
    exceptions.AskError,  # MOVED and ASK: the cluster's routing, not the data
    exceptions.RedisClusterException,  # no node known for a slot
)
_TRANSIENT_CODES = ("OOM", "BUSY", "LOADING", "MASTERDOWN", "READONLY", "TRYAGAIN", "NOREPLICAS")


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _is_transient(error: Exception) -> bool:
    if isinstance(error, _TRANSIENT_ERRORS):
        return True
    if isinstance(error, ResponseError):
        text = str(error)
        # Inside a script the code may be lost: "... used memory > 'maxmemory'".
        return text.startswith(_TRANSIENT_CODES) or "> 'maxmemory'" in text
    return True  # connection lost or timed out: nothing says the data is bad


def _refused_whole(records: int, reply: Any) -> bool:
    """A call of several records refused for a reason that is neither the
    connection nor memory: maybe one of its records, which Redis can never
    accept (longer than ``proto-max-bulk-len``)."""
    return records > 1 and isinstance(reply, Exception) and not _is_transient(reply)


def _cannot_compile(reply: Any) -> bool:
    # Lua's parser stops at the shebang's '#': "unexpected symbol near '#'".
    return isinstance(reply, ResponseError) and "near '#'" in str(reply)


def _get_connection(pool: Any) -> Any:
    """A connection of ``pool``: redis-py before 5.3 wants a command name,
    later versions warn when given one."""
    parameter = inspect.signature(pool.get_connection).parameters.get("command_name")
    if parameter is not None and parameter.default is inspect.Parameter.empty:
        return pool.get_connection("EVALSHA")
    return pool.get_connection()


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%b\r\n" % (len(value), value)


class Call:
    """One call of the script: its keys, the ARGV before the records, and
    each record's ``index-in-KEYS, json`` pair, all in RESP already."""

    __slots__ = ("head", "keys", "parts")

    def __init__(self, keys: list[bytes], head: bytes, parts: list[bytes]) -> None:
        self.keys = keys
        self.head = head
        self.parts = parts

    def packed(self, verb: bytes, script: bytes) -> bytes:
        keys = self.keys
        count = b"%d" % len(keys)
        top = b"*%d\r\n%b%b$%d\r\n%b\r\n" % (
            3 + len(keys) + 5 + len(self.parts) * 2,
            _bulk(verb),
            _bulk(script),
            len(count),
            count,
        )
        return b"".join((top, *keys, self.head, *self.parts))


def exchange(conn: Any, packed: list[bytes], replies_each: int = 1) -> tuple[list[Any], bool]:
    """Send all commands in one write; read ``replies_each`` replies per
    command and keep the last (``ASKING`` + a call: the call's).

    Error replies come back as exception values, in place, and so does a
    lost connection for every reply not read (``broken`` is then True):
    calls whose reply arrived are never sent twice.
    """
    replies: list[Any] = []
    try:
        conn.send_packed_command([b"".join(packed)], check_health=False)
        for _ in packed:
            for _ in range(replies_each):
                try:
                    reply = conn.read_response()
                except ResponseError as exc:
                    reply = exc
            replies.append(reply)
    except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
        replies.extend([exc] * (len(packed) - len(replies)))
        return replies, True
    return replies, False


class RedisSink:
    """Writes ``(context, json_bytes)`` batches to one Redis server.

    ``connect`` returns a redis-py client; it is called in the worker, on
    first use, so that building the handler never touches the network.
    The sink holds one connection of its pool and speaks the protocol
    directly on it; it never retries by itself: the shipper owns retries
    and their backoff.
    """

    chunk_size = 100

    def __init__(
        self,
        connect: Callable[[], Any],
        names: Names,
        *,
        stream_maxlen: int = 1000,
        context_ttl: int | None = 3600,
        global_ttl: int | None = 86400,
        sharded_pubsub: bool = False,
    ) -> None:
        self._connect = connect
        self._client: Any = None
        self.names = names
        self._conn: Any = None
        self._use_script(SCRIPTS[0])
        self._streams: dict[str | None, bytes] = {}
        global_stream = names.global_stream.encode()
        self._global = _bulk(global_stream)
        publish = b"SPUBLISH" if sharded_pubsub else b"PUBLISH"

        def argv_head(first_key_ttl: int | None) -> bytes:
            values = (stream_maxlen, context_ttl or 0, first_key_ttl or 0)
            prefix = len(names.stream_prefix.encode())
            return b"".join(_bulk(b"%d" % v) for v in (*values, prefix)) + _bulk(publish)

        #: ARGV before the records: the first key is the global stream, or
        #: (one stream per call, on a cluster) a context's own.
        self._argv_head = argv_head(global_ttl)
        self._context_head = argv_head(context_ttl)
        self._index = [_bulk(b"%d" % i) for i in range(self.chunk_size + 2)]

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self._connect()
        return self._client

    def _use_script(self, script: bytes) -> None:
        self._script = script
        self._sha = hashlib.sha1(script).hexdigest().encode()

    def write(self, batch: list[tuple[str | None, bytes]]) -> None:
        chunks = [batch[i : i + self.chunk_size] for i in range(0, len(batch), self.chunk_size)]
        calls = [self._call(chunk) for chunk in chunks]
        replies = self._run(calls, self._round_trip)
        self._settle(*self._one_by_one(chunks, replies))

    def _one_by_one(self, chunks: list[Any], replies: list[Any]) -> tuple[list[Any], list[Any]]:
        """Send again, one record per call, the chunks refused whole for a
        reason that is neither the connection nor memory: one record Redis
        can never accept (larger than ``proto-max-bulk-len``) then costs that
        record alone, not the chunk that carried it."""
        suspects = {
            i
            for i, (chunk, reply) in enumerate(zip(chunks, replies, strict=True))
            if _refused_whole(len(chunk), reply)
        }
        if not suspects:
            return chunks, replies
        singles = [[record] for i in sorted(suspects) for record in chunks[i]]
        try:
            answers = iter(self._run([self._call(one) for one in singles], self._round_trip))
        except Exception as exc:  # could not reconnect: these are retried, none stored twice
            answers = iter([exc] * len(singles))
        split_chunks, split_replies = [], []
        for i, (chunk, reply) in enumerate(zip(chunks, replies, strict=True)):
            if i in suspects:
                split_chunks.extend([record] for record in chunk)
                split_replies.extend(next(answers) for _ in chunk)
            else:
                split_chunks.append(chunk)
                split_replies.append(reply)
        return split_chunks, split_replies

    def _run(self, calls: list[Call], round_trip: Callable[[list[bytes]], list[Any]]) -> list[Any]:
        """Run ``calls`` (EVALSHA, then EVAL where the server lacks the
        script) through ``round_trip``; one reply or error value each."""
        replies = round_trip([call.packed(b"EVALSHA", self._sha) for call in calls])
        missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:  # first write since the server started: send the script itself
            retry = round_trip([calls[i].packed(b"EVAL", self._script) for i in missing])
            if self._script is SCRIPTS[0] and any(_cannot_compile(r) for r in retry):
                self._use_script(SCRIPTS[1])  # a server older than Redis 7
                retry = round_trip([calls[i].packed(b"EVAL", self._script) for i in missing])
            for i, reply in zip(missing, retry, strict=True):
                replies[i] = reply
        return replies

    def _settle(self, chunks: list[Any], replies: list[Any]) -> None:
        """Raise WriteError unless every chunk was stored whole."""
        remaining: list[Any] = []
        lost = 0
        first_error: str | None = None
        for chunk, reply in zip(chunks, replies, strict=True):
            if isinstance(reply, Exception):
                first_error = first_error or f"{type(reply).__name__}: {reply}"
                if _is_transient(reply):
                    remaining.extend(chunk)
                else:
                    lost += len(chunk)
            elif reply[1]:  # the script stored the rest; these keys refused
                lost += int(reply[1])
                first_error = first_error or f"Redis refused {reply[1]} records: {_text(reply[2])}"
            elif reply[2]:  # all stored, but a PUBLISH, XTRIM or EXPIRE was refused
                first_error = first_error or f"Redis refused part of a write: {_text(reply[2])}"
        if first_error is not None:
            raise WriteError(first_error, remaining, lost)

    def _call(self, chunk: list[tuple[str | None, bytes]]) -> Call:
        """One script call writing ``chunk`` to the global stream and to
        each record's context stream."""
        streams = self._streams
        keys = [self._global]
        slots: dict[str | None, bytes] = {}
        index = self._index
        parts = []
        append = parts.append
        for context, data in chunk:
            slot = slots.get(context)
            if slot is None:
                if context is None:
                    slot = index[1]
                else:
                    key = streams.get(context)
                    if key is None:
                        key = self._stream_key(context)
                    keys.append(key)
                    slot = index[len(keys)]
                slots[context] = slot
            append(b"%b$%d\r\n%b\r\n" % (slot, len(data), data))
        return Call(keys, self._argv_head, parts)

    def _stream_key(self, context: str) -> bytes:
        key = _bulk(self.names.stream(context).encode())
        if len(self._streams) >= 4096:
            self._streams.clear()
        self._streams[context] = key
        return key

    def _round_trip(self, packed: list[bytes]) -> list[Any]:
        try:
            if self._conn is None:
                self._conn = _get_connection(self.client.connection_pool)
            replies, broken = exchange(self._conn, packed)
        except BaseException:
            self._drop_connection()
            raise
        if broken:
            self._drop_connection()
        return replies

    def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.disconnect()
            finally:
                self.client.connection_pool.release(conn)

    def close(self) -> None:
        self._drop_connection()

    def after_fork(self) -> None:
        """The parent's connection is the parent's: forget it without closing
        it (redis-py's pool notices the new pid and starts afresh)."""
        self._conn = None
