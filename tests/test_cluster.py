"""Redis Cluster: the handler, tail and the stream view on a real 6-node cluster.

The cluster (3 primaries, 3 replicas) is built once per session from real
``redis-server --cluster-enabled yes`` processes (support/cluster_servers.py); the
failover test builds one of its own, since it kills a node.
"""

from __future__ import annotations

import io
import json
import threading
import time

import pytest
from django.test import Client, override_settings
from redis.cluster import key_slot

from redis_logstream import log_context
from redis_logstream.cli import main as cli_main
from redis_logstream.console import hubs
from redis_logstream.naming import Names
from redis_logstream.reading.live import listen
from redis_logstream.redis import sink as sink_module
from support.cluster_servers import RedisClusterServers
from support.helpers import fresh_logger, messages, wait_for
from support.sse_client import parse_events

CONTEXTS = [f"User.u{i}" for i in range(12)]


def cluster_url(servers: RedisClusterServers, count: int = 2) -> str:
    """``redis+cluster://`` with the first ``count`` nodes as startup nodes."""
    hosts = ",".join(url.split("//")[1].rsplit("/", 1)[0] for url in servers.urls[:count])
    return f"redis+cluster://{hosts}"


def log_round_robin(logger, count: int, start: int = 0) -> None:
    for i in range(start, start + count):
        with log_context(CONTEXTS[i % len(CONTEXTS)]):
            logger.info("record %d", i)


def test_names_on_a_cluster_carry_a_hash_tag_shared_by_channel_and_stream(handlers, cluster):
    handler = handlers(url=cluster_url(cluster))
    names = handler.names
    assert names.stream("User.alice") == "stream:logs:{User.alice}"
    assert names.channel("User.alice") == "logs:{User.alice}"
    assert names.global_stream == "stream:logs:{global}"
    for context in (None, "User.alice", "job_1", "a b{c}"):
        assert key_slot(names.stream(context).encode()) == key_slot(names.channel(context).encode())


def test_records_reach_their_streams_on_every_primary_in_order(handlers, cluster):
    handler = handlers(url=cluster_url(cluster), stream_maxlen=10_000)
    logger = fresh_logger(handler)
    log_round_robin(logger, 600)
    logger.info("without a context")
    assert handler.flush(10)
    client = cluster.client()
    names = handler.names
    owners = {cluster.primary_for(names.stream(c)).port for c in CONTEXTS}
    assert len(owners) == 3, "the contexts should be spread over all three primaries"
    expected_global = [f"record {i}" for i in range(600)] + ["without a context"]
    assert messages(client, names.global_stream) == expected_global
    for k, context in enumerate(CONTEXTS):
        assert messages(client, names.stream(context)) == [
            f"record {i}" for i in range(k, 600, len(CONTEXTS))
        ]
    assert handler.stats()["sent"] == 601
    assert handler.stats()["errors"] == 0


def test_ttls_and_trimming_apply_on_every_node(handlers, cluster):
    handler = handlers(url=cluster_url(cluster), stream_maxlen=20, context_ttl=600, global_ttl=900)
    logger = fresh_logger(handler)
    for _ in range(5):
        log_round_robin(logger, 1200)
        assert handler.flush(10)
    client = cluster.client()
    names = handler.names
    assert 0 < client.ttl(names.global_stream) <= 900
    assert client.xlen(names.global_stream) <= 20 + 100  # MAXLEN ~ trims whole nodes
    for context in CONTEXTS:
        assert 0 < client.ttl(names.stream(context)) <= 600
        assert client.xlen(names.stream(context)) <= 20 + 100
    assert handler.stats()["sent"] == 6000


def test_a_batch_costs_one_round_trip_per_node(handlers, cluster, monkeypatch):
    trips: list[int] = []
    real = sink_module.exchange

    def counting(conn, packed, replies_each=1):
        trips.append(conn.port)
        return real(conn, packed, replies_each)

    monkeypatch.setattr("redis_logstream.redis.cluster_sink.exchange", counting)
    handler = handlers(url=cluster_url(cluster), flush_interval=5.0, batch_size=1000)
    logger = fresh_logger(handler)
    log_context_all = [(c, f"warm {c}") for c in CONTEXTS]
    for context, text in log_context_all:  # the first batch also loads the script
        with log_context(context):
            logger.info(text)
    assert handler.flush(10)
    trips.clear()
    log_round_robin(logger, 480)
    assert handler.flush(10)
    assert sorted(trips) == sorted({p.port for p in cluster.primaries()})
    assert handler.stats()["batches"] == 2


def test_a_slot_in_migration_is_followed_through_ask_then_moved(handlers, cluster):
    handler = handlers(url=cluster_url(cluster))
    logger = fresh_logger(handler)
    context = "User.migrating"
    key = handler.names.stream(context)
    slot = key_slot(key.encode())
    source = cluster.primary_for(key)
    target = next(p for p in cluster.primaries() if p is not source)
    logger.info("warm up")  # the client's slot map is read now, before the move
    assert handler.flush(10)
    source_id = source.client().cluster("myid")
    target_id = target.client().cluster("myid")
    target.client().execute_command("CLUSTER SETSLOT", slot, "IMPORTING", source_id)
    source.client().execute_command("CLUSTER SETSLOT", slot, "MIGRATING", target_id)
    with log_context(context):
        logger.info("during the migration")  # the key is new: the source answers ASK
    assert handler.flush(10)
    assert target.client().info("commandstats")["cmdstat_asking"]["calls"] == 1
    for server in cluster.primaries():
        server.client().execute_command("CLUSTER SETSLOT", slot, "NODE", target_id)
    with log_context(context):
        logger.info("after the migration")  # the client's map is stale: MOVED
    assert handler.flush(10)
    assert messages(cluster.client(), key) == ["during the migration", "after the migration"]
    assert handler.stats()["sent"] == 3
    assert handler.stats()["failed"] == 0


def test_sharded_pubsub_reaches_a_sharded_subscriber(handlers, cluster):
    handler = handlers(url=cluster_url(cluster), sharded_pubsub=True)
    logger = fresh_logger(handler)
    names = Names(hash_tags=True)
    stop = threading.Event()
    heard: list[str] = []

    def subscriber() -> None:
        for entry in listen(cluster.client(), names, "User.alice", sharded=True, stop=stop):
            heard.append(entry.message)

    thread = threading.Thread(target=subscriber, daemon=True)
    thread.start()
    try:
        time.sleep(0.5)  # subscribed (pub/sub keeps nothing for late listeners)
        for i in range(5):
            with log_context("User.alice"):
                logger.info("live %d", i)
        with log_context("User.bob"):
            logger.info("not for alice")
        assert handler.flush(10)
        wait_for(lambda: len(heard) >= 5, timeout=5)
    finally:
        stop.set()
        thread.join(5)
    assert heard == [f"live {i}" for i in range(5)]
    assert messages(cluster.client(), names.stream("User.alice")) == heard  # streams too


def test_redis_logstream_tail_reads_a_cluster(handlers, cluster, capsys):
    handler = handlers(url=cluster_url(cluster))
    logger = fresh_logger(handler)
    log_round_robin(logger, 24)
    assert handler.flush(10)
    status = cli_main(["tail", "--url", cluster_url(cluster, 1), CONTEXTS[3], "-n", "5"])
    out = capsys.readouterr().out
    assert status == 0
    assert [line.rsplit(": ", 1)[1] for line in out.splitlines()] == ["record 3", "record 15"]


@pytest.mark.django_db
def test_tail_logs_and_the_stream_view_read_a_cluster(handlers, cluster, django_user_model):
    url = cluster_url(cluster)
    handler = handlers(url=url)
    logger = fresh_logger(handler)
    log_round_robin(logger, 24)
    assert handler.flush(10)
    from django.core.management import call_command

    with override_settings(REDIS_LOGSTREAM={"URL": url}):
        out = io.StringIO()
        call_command("tail_logs", "--global", "-n", "3", "--json", stdout=out)
        assert [json.loads(line)["message"] for line in out.getvalue().splitlines()] == [
            "record 21",
            "record 22",
            "record 23",
        ]
        staff = django_user_model.objects.create_user("sam", password="x", is_staff=True)
        client = Client()
        client.force_login(staff)
        hubs.reset()
        response = client.get("/logs/stream/", {"context": CONTEXTS[0]})
        try:
            assert response.status_code == 200
            body = next(iter(response.streaming_content))
            shown = [e.json["message"] for e in parse_events(body) if e.event == "log"]
        finally:
            response.close()
            hubs.reset()
    assert shown == ["record 0", "record 12"]


@pytest.mark.parametrize("lost", ["global stream's primary", "a context's primary"])
def test_a_failover_loses_nothing_logged_while_the_primary_is_down(handlers, own_cluster, lost):
    """Killing the global stream's node makes the records' global parts wait
    while their context parts are stored, and the reverse: each part is
    retried alone, so no stream gets a record twice."""
    servers = own_cluster
    handler = handlers(url=cluster_url(servers, 3), queue_size=100_000, stream_maxlen=100_000)
    logger = fresh_logger(handler)
    names = handler.names
    global_node = servers.primary_for(names.global_stream)
    if lost == "global stream's primary":
        victim = global_node
    else:
        victim = next(p for p in servers.primaries() if p.port != global_node.port)
    log_round_robin(logger, 300)
    assert handler.flush(10)
    assert victim.client().execute_command("WAIT", 1, 2000) == 1  # the replica has it all
    servers.kill(victim)
    stop = threading.Event()
    logged = [300]

    def keep_logging() -> None:
        while not stop.is_set():
            log_round_robin(logger, 10, start=logged[0])
            logged[0] += 10
            time.sleep(0.01)

    thread = threading.Thread(target=keep_logging, daemon=True)
    thread.start()
    try:
        promoted = servers.wait_for_failover(victim, timeout=20)
        time.sleep(0.3)  # and a little logging after it
    finally:
        stop.set()
        thread.join(5)
    assert handler.flush(15)
    total = logged[0]
    assert total > 400, "records should have been logged while the primary was down"
    client = servers.client()
    assert messages(client, names.global_stream) == [f"record {i}" for i in range(total)]
    for k, context in enumerate(CONTEXTS):
        expected = [f"record {i}" for i in range(k, total, len(CONTEXTS))]
        assert messages(client, names.stream(context)) == expected
    stats = handler.stats()
    assert stats["sent"] == total + 0 and stats["dropped"] == 0 and stats["failed"] == 0
    assert stats["retries"] > 0
    assert servers.primary_for(victim_key(servers, names, promoted)).port == promoted.port


def victim_key(servers: RedisClusterServers, names: Names, promoted) -> str:
    """A stream of ours whose slot the promoted replica now owns."""
    keys = [names.global_stream, *(names.stream(c) for c in CONTEXTS)]
    return next(key for key in keys if servers.primary_for(key).port == promoted.port)
