"""Writing batches to Redis Cluster: one round trip per node.

On a cluster the keys of one script call must share a slot, so a record
costs two calls instead of one: one for the global stream (every record of
the batch, in order) and one for its context's stream, whose hash-tagged
channel lives in the same slot (:mod:`.naming`).  Calls are grouped by the
node that owns their slot and each node gets all of its calls in one write,
so a batch costs one round trip per node it touches, sent to all nodes
before any reply is read.

Redirects and failovers:

- ``MOVED`` (the slot has another owner now) or a lost node: the calls
  concerned are kept for the shipper to retry, and the slot map is read
  again before the next write.  After a failover the replica owns the
  slots and the records waiting in the buffer arrive, in order.
- ``ASK`` (the slot is being migrated): the call is sent at once to the
  target node, preceded by ``ASKING``.

A record whose global part was stored but whose context part was not (or
the reverse) is retried for the missing part only, so no stream ever gets
a record twice: the sink hands the shipper back ``(ContextOnly(context),
data)`` (the context stream alone) or ``(None, data)`` (the global stream
alone).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.cluster import key_slot
from redis.exceptions import AskError, MovedError, RedisClusterException, RedisError

from redis_logstream.naming import Names
from redis_logstream.redis.sink import (
    Call,
    RedisSink,
    _bulk,
    _get_connection,
    _is_transient,
    _refused_whole,
    _text,
    exchange,
)
from redis_logstream.shipping.shipper import WriteError

__all__ = ["ClusterSink", "ContextOnly"]

_ASKING = b"*1\r\n$6\r\nASKING\r\n"


#: Errors of a cluster in motion: the same call succeeds once the slot map
#: is read again or the failover is over.
_CLUSTER_ERRORS = (RedisError, RedisClusterException)


class ContextOnly(str):
    """A context whose record is already in the global stream: a retry
    writes it to the context's stream only."""

    __slots__ = ()


class _Planned:
    """A call with the stream it writes and the batch positions it carries."""

    __slots__ = ("call", "is_global", "key", "positions")

    def __init__(self, key: str, is_global: bool, positions: list[int], call: Call) -> None:
        self.key = key
        self.is_global = is_global
        self.positions = positions
        self.call = call


class ClusterSink(RedisSink):
    """Writes ``(context, json_bytes)`` batches to a Redis Cluster.

    ``connect`` returns a redis-py ``RedisCluster``; only its view of the
    slots and its per-node pools are used: the commands are packed and
    sent here, one connection per node, as :class:`.sink.RedisSink` does
    for one server.
    """

    def __init__(self, connect: Callable[[], Any], names: Names, **options: Any) -> None:
        if not names.hash_tags:
            raise ValueError("ClusterSink needs hash-tagged names (Names(hash_tags=True))")
        super().__init__(connect, names, **options)
        self._conns: dict[str, Any] = {}
        self._pools: dict[str, Any] = {}
        self._stale = False
        self._one = self._index[1]

    def write(self, batch: list[tuple[str | None, bytes]]) -> None:
        if self._stale:
            self._refresh()
        planned = self._plan(batch)
        replies = self._send(planned)
        self._settle_parts(batch, *self._one_by_one(planned, replies))

    def _one_by_one(
        self, planned: list[_Planned], replies: list[Any]
    ) -> tuple[list[_Planned], list[Any]]:
        """As :meth:`.sink.RedisSink._one_by_one`: a call refused whole for a
        reason of its own is sent again one record per call, so that a record
        Redis can never accept costs itself alone."""
        suspects = {
            i
            for i, (item, reply) in enumerate(zip(planned, replies, strict=True))
            if _refused_whole(len(item.positions), reply)
        }
        if not suspects:
            return planned, replies
        split: list[_Planned] = []
        split_replies: list[Any] = []
        fresh: list[int] = []  # where in ``split`` the calls sent again are
        for i, (item, reply) in enumerate(zip(planned, replies, strict=True)):
            if i not in suspects:
                split.append(item)
                split_replies.append(reply)
                continue
            call = item.call
            for position, part in zip(item.positions, call.parts, strict=True):
                fresh.append(len(split))
                one = Call(call.keys, call.head, [part])
                split.append(_Planned(item.key, item.is_global, [position], one))
                split_replies.append(None)
        for index, reply in zip(fresh, self._send([split[i] for i in fresh]), strict=True):
            split_replies[index] = reply
        return split, split_replies

    def _plan(self, batch: list[tuple[str | None, bytes]]) -> list[_Planned]:
        """The calls of a batch: the global stream's, then each context's."""
        streams: dict[str | None, list[int]] = {None: []}
        for position, (context, _data) in enumerate(batch):
            if type(context) is not ContextOnly:
                streams[None].append(position)
            if context is not None:
                streams.setdefault(str(context), []).append(position)
        planned = []
        size = self.chunk_size
        for context, positions in streams.items():
            key = self.names.stream(context)
            head = self._argv_head if context is None else self._context_head
            keys = [_bulk(key.encode())]
            for start in range(0, len(positions), size):
                chunk = positions[start : start + size]
                parts = [b"%b%b" % (self._one, _bulk(batch[i][1])) for i in chunk]
                planned.append(_Planned(key, context is None, chunk, Call(keys, head, parts)))
        return planned

    def _send(self, planned: list[_Planned]) -> list[Any]:
        """Every call's reply (or error value): one round trip per node,
        all nodes written to before any is read; then the ASK redirects."""
        replies: list[Any] = [None] * len(planned)
        by_node: dict[str, list[int]] = {}
        for i, item in enumerate(planned):
            try:
                node = self.client.nodes_manager.get_node_from_slot(key_slot(item.key.encode()))
            except _CLUSTER_ERRORS as exc:  # no owner known for the slot: the cluster is down
                self._stale = True
                replies[i] = exc
                continue
            self._pools[node.name] = node.redis_connection.connection_pool
            by_node.setdefault(node.name, []).append(i)
        for name, indices in by_node.items():
            calls = [planned[i].call for i in indices]
            for i, reply in zip(indices, self._run(calls, self._node_trip(name)), strict=True):
                replies[i] = reply
        asked: dict[str, list[int]] = {}
        for i, reply in enumerate(replies):
            if isinstance(reply, AskError) and not isinstance(reply, MovedError):
                asked.setdefault(f"{reply.host}:{reply.port}", []).append(i)
            elif isinstance(reply, Exception):
                self._stale = True  # MOVED, CLUSTERDOWN, a node gone: read the map again
        for name, indices in asked.items():
            packed = [_ASKING + planned[i].call.packed(b"EVAL", self._script) for i in indices]
            answers = self._node_trip(name, replies_each=2)(packed)
            for i, reply in zip(indices, answers, strict=True):
                replies[i] = reply
        return replies

    def _node_trip(self, name: str, replies_each: int = 1) -> Callable[[list[bytes]], list[Any]]:
        def round_trip(packed: list[bytes]) -> list[Any]:
            conn = self._conns.get(name)
            try:
                if conn is None:
                    conn = self._conns[name] = _get_connection(self._pool(name))
                replies, broken = exchange(conn, packed, replies_each)
            except (*_CLUSTER_ERRORS, OSError) as exc:  # could not even connect
                self._drop(name)
                self._stale = True
                return [exc] * len(packed)
            except BaseException:
                self._drop(name)
                raise
            if broken:
                self._drop(name)
                self._stale = True
            return replies

        return round_trip

    def _pool(self, name: str) -> Any:
        pool = self._pools.get(name)
        if pool is None:  # an ASK target not yet in the slot map
            host, _, port = name.rpartition(":")
            node = self.client.nodes_manager.get_node(host, int(port))
            if node is None:
                raise RedisError(f"ASK to {name}, a node not in the cluster's map")
            pool = self._pools[name] = node.redis_connection.connection_pool
        return pool

    def _settle_parts(
        self, batch: list[tuple[str | None, bytes]], planned: list[_Planned], replies: list[Any]
    ) -> None:
        """Raise WriteError unless every part of every record was stored;
        what is retried is only the part that was not."""
        failed_global: set[int] = set()
        failed_context: set[int] = set()
        lost: set[int] = set()
        first_error: str | None = None
        for item, reply in zip(planned, replies, strict=True):
            if isinstance(reply, Exception):
                first_error = first_error or f"{type(reply).__name__}: {reply}"
                if _is_transient(reply):
                    (failed_global if item.is_global else failed_context).update(item.positions)
                else:
                    lost.update(item.positions)
            elif reply[1]:  # one key per call: the key refused every record
                lost.update(item.positions)
                first_error = first_error or f"Redis refused {reply[1]} records: {_text(reply[2])}"
            elif reply[2]:
                first_error = first_error or f"Redis refused part of a write: {_text(reply[2])}"
        if first_error is None:
            return
        remaining: list[tuple[str | None, bytes]] = []
        for position, (context, data) in enumerate(batch):
            if position in lost:
                continue
            retry_global = position in failed_global
            retry_context = position in failed_context
            if retry_global and retry_context:
                remaining.append((context, data))
            elif retry_global:
                remaining.append((None, data))
            elif retry_context:
                remaining.append((ContextOnly(str(context)), data))
        raise WriteError(first_error, remaining, len(lost))

    def _refresh(self) -> None:
        """Read the slot map again (after MOVED, a failover, a lost node);
        the pools it replaces are closed, so their connections are let go."""
        self._release_all()
        self.client.nodes_manager.initialize()
        self._stale = False

    def _drop(self, name: str) -> None:
        conn = self._conns.pop(name, None)
        pool = self._pools.get(name)
        if conn is not None:
            try:
                conn.disconnect()
            finally:
                if pool is not None:
                    pool.release(conn)

    def _release_all(self) -> None:
        for name in list(self._conns):
            self._drop(name)
        self._pools.clear()

    def close(self) -> None:
        self._release_all()

    def after_fork(self) -> None:
        """The parent's connections and slot map are the parent's."""
        self._conns = {}
        self._pools = {}
        self._client = None
        self._stale = False
