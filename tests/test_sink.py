"""The Redis sink alone: what it writes, in how many round trips, and how it fails."""

from __future__ import annotations

import functools
from typing import Any

import fakeredis
import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, OutOfMemoryError, ResponseError

from redis_logstream import RedisLogHandler, log_context
from redis_logstream.naming import Names
from redis_logstream.redis.sink import SCRIPTS, RedisSink
from redis_logstream.shipping.shipper import WriteError
from support.helpers import fresh_logger, messages
from support.servers import RedisServer


def make_sink(client: Any, **kw: Any) -> RedisSink:
    return RedisSink(lambda: client, Names(), **kw)


def records(n: int, context: str | None = None, start: int = 0) -> list[tuple[str | None, bytes]]:
    return [(context, b'{"message":"%d"}' % i) for i in range(start, start + n)]


def stored(client: redis.Redis, key: str) -> list[bytes]:
    return [fields[b"data"] for _id, fields in client.xrange(key)]


@pytest.fixture(params=["fakeredis", "redis-server"])
def client(request: pytest.FixtureRequest) -> redis.Redis:
    """The same tests run on fakeredis (fast) and on the session's redis-server."""
    if request.param == "fakeredis":
        return fakeredis.FakeRedis()
    return request.getfixturevalue("redis_client")


def test_writes_each_record_to_its_context_stream_and_the_global_one(client) -> None:
    sink = make_sink(client)
    batch = records(2, "User.alice") + records(1, None, start=2) + records(1, "job_1", start=3)
    sink.write(batch)
    assert stored(client, "stream:logs:global") == [data for _, data in batch]
    assert stored(client, "stream:logs:User.alice") == [b'{"message":"0"}', b'{"message":"1"}']
    assert stored(client, "stream:logs:job_1") == [b'{"message":"3"}']


def test_publishes_the_same_bytes_on_both_channels(client) -> None:
    pubsub = client.pubsub()
    pubsub.psubscribe("logs:*")
    pubsub.get_message(timeout=0.1)
    make_sink(client).write(records(1, "User.bob"))
    got = []
    while (message := pubsub.get_message(timeout=0.1)) is not None:
        got.append((message["channel"], message["data"]))
    assert sorted(got) == [
        (b"logs:User.bob", b'{"message":"0"}'),
        (b"logs:global", b'{"message":"0"}'),
    ]


def test_sets_ttls_and_trims(client) -> None:
    sink = make_sink(client, stream_maxlen=10, context_ttl=60, global_ttl=600)
    sink.write(records(250, "User.alice"))
    assert 0 < client.ttl("stream:logs:User.alice") <= 60
    assert 60 < client.ttl("stream:logs:global") <= 600
    assert client.xlen("stream:logs:global") < 250


def test_custom_names_are_used(client) -> None:
    sink = RedisSink(lambda: client, Names("app", "all", "s/"))
    sink.write(records(1, "all"))  # a context spelled like the firehose stays apart
    assert sorted(client.keys()) == [b"s/app:%61ll", b"s/app:all"]


class Recorder:
    """Wraps the client's connection to count socket writes."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.sends = 0
        pool = client.connection_pool
        original = pool.get_connection

        @functools.wraps(original)
        def get_connection(*args: Any, **kwargs: Any) -> Any:
            conn = original(*args, **kwargs)
            send = conn.send_packed_command

            def counted(command: Any, check_health: bool = True) -> None:
                self.sends += 1
                send(command, check_health=check_health)

            conn.send_packed_command = counted
            return conn

        pool.get_connection = get_connection


def test_a_batch_of_many_chunks_is_one_socket_write(client) -> None:
    recorder = Recorder(client)
    sink = make_sink(client)
    sink.write(records(1))  # loads the script (NOSCRIPT, then EVAL)
    recorder.sends = 0
    sink.write(records(450, "User.alice"))
    assert recorder.sends == 1
    assert client.xlen("stream:logs:User.alice") == 450


def test_a_flushed_script_cache_is_refilled_without_losing_the_batch(client) -> None:
    sink = make_sink(client)
    sink.write(records(1))
    client.script_flush()
    sink.write(records(3, start=1))
    assert len(stored(client, "stream:logs:global")) == 4


def test_a_key_of_the_wrong_type_refuses_its_records_only(client) -> None:
    client.set("stream:logs:User.bob", "not a stream")
    sink = make_sink(client)
    batch = records(3, "User.alice") + records(2, "User.bob", start=3)
    with pytest.raises(WriteError) as raised:
        sink.write(batch)
    assert raised.value.lost == 2
    assert raised.value.remaining == []
    assert "WRONGTYPE" in str(raised.value)
    assert len(stored(client, "stream:logs:User.alice")) == 3


class ScriptedConnection:
    """Answers each read with the next reply of a script (exceptions raised)."""

    def __init__(self, replies: list[Any]) -> None:
        self.replies = replies
        self.sent: list[bytes] = []

    def send_packed_command(self, command: list[bytes], check_health: bool = True) -> None:
        self.sent.append(b"".join(command))

    def read_response(self) -> Any:
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    def disconnect(self) -> None:
        pass


class ScriptedClient:
    def __init__(self, conn: ScriptedConnection) -> None:
        self.connection_pool = self
        self.conn = conn

    def get_connection(self) -> ScriptedConnection:
        return self.conn

    def release(self, conn: Any) -> None:
        pass


def test_a_server_older_than_redis_7_gets_the_script_without_shebang() -> None:
    conn = ScriptedConnection(
        [
            NoScriptError("No matching script"),
            ResponseError(
                "Error compiling script (new function): user_script:1: unexpected symbol near '#'"
            ),
            [1, 0, b""],
        ]
    )
    sink = make_sink(ScriptedClient(conn))
    sink.write(records(1))
    assert SCRIPTS[0] in conn.sent[1] and SCRIPTS[1] in conn.sent[2]
    assert not conn.sent[2].count(b"#!lua")


def test_out_of_memory_keeps_the_chunk_for_a_retry() -> None:
    conn = ScriptedConnection([[100, 0, b""], OutOfMemoryError("used memory > 'maxmemory'")])
    sink = make_sink(ScriptedClient(conn))
    batch = records(150)
    with pytest.raises(WriteError) as raised:
        sink.write(batch)
    assert raised.value.remaining == batch[100:]  # the first chunk is stored: not resent
    assert raised.value.lost == 0


def test_a_connection_lost_mid_reply_keeps_only_the_unanswered_chunks() -> None:
    conn = ScriptedConnection([[100, 0, b""], RedisConnectionError("gone")])
    sink = make_sink(ScriptedClient(conn))
    batch = records(250)
    with pytest.raises(WriteError) as raised:
        sink.write(batch)
    assert raised.value.remaining == batch[100:]
    assert sink._conn is None  # the next write reconnects


def test_building_a_sink_touches_no_network() -> None:
    calls = []
    RedisSink(lambda: calls.append(1), Names())
    assert calls == []


def test_a_record_longer_than_proto_max_bulk_len_costs_only_itself() -> None:
    # Redis answers "Protocol error: invalid bulk length" for the call that
    # carries it and closes the connection: the chunk's other records are
    # sent again one per call, and only the long one is refused.
    with RedisServer(["--proto-max-bulk-len", "1mb"]) as server:
        server.start()
        handler = RedisLogHandler(url=server.url, flush_interval=0.5, max_message_bytes=2 * 2**20)
        try:
            logger = fresh_logger(handler)
            for i in range(300):
                logger.info("record %d", i)
                if i == 149:  # in the middle of a chunk, and of the batch
                    logger.info("long %s", "x" * 1_500_000)
            handler.flush(10)
            stats = handler.stats()
            client = server.client()
            stored = messages(client, "stream:logs:global")
        finally:
            handler.close()
    assert stored == [f"record {i}" for i in range(300)]
    assert stats["sent"] == 300 and stats["failed"] == 1 and stats["pending"] == 0
    assert "invalid bulk length" in stats["last_error"]


def test_a_chunk_refused_whole_is_sent_again_record_by_record(redis_client) -> None:
    sink = make_sink(redis_client)
    refused = ResponseError("ERR something about this call")
    sent: list[int] = []
    real_round_trip = sink._round_trip

    def round_trip(packed: list[bytes]) -> list[Any]:
        sent.append(len(packed))
        if len(sent) == 1:  # the first call is refused, not sent
            return [refused, *real_round_trip(packed[1:])]
        return real_round_trip(packed)

    sink._round_trip = round_trip  # type: ignore[method-assign]
    batch = records(150)
    sink.write(batch)  # the first chunk "refused", then its records one per call
    assert sent[0] == 2 and sent[-1] == 100  # (an EVAL between them on a fresh server)
    got = stored(redis_client, "stream:logs:global")
    assert sorted(got) == sorted(data for _, data in batch)  # each once, none refused


def test_on_a_cluster_a_record_longer_than_proto_max_bulk_len_costs_only_itself(cluster) -> None:
    for node in cluster.nodes:
        node.client().config_set("proto-max-bulk-len", 2**20)
    handler = RedisLogHandler(
        client=cluster.client(), flush_interval=0.5, max_message_bytes=2 * 2**20
    )
    try:
        logger = fresh_logger(handler)
        with log_context("job_1"):
            for i in range(300):
                logger.info("record %d", i)
                if i == 149:
                    logger.info("long %s", "x" * 1_500_000)
        handler.flush(10)
        stats = handler.stats()
        client = cluster.client()
        names = handler.names
        stored_global = messages(client, names.global_stream)
        stored_job = messages(client, names.stream("job_1"))
    finally:
        handler.close()
        for node in cluster.nodes:
            node.client().config_set("proto-max-bulk-len", 512 * 2**20)
    expected = [f"record {i}" for i in range(300)]
    assert stored_global == expected and stored_job == expected
    assert stats["sent"] == 300 and stats["failed"] == 1 and stats["pending"] == 0
