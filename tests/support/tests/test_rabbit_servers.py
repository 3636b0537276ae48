"""The RabbitMQ test helpers: private nodes really are private, and really die."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Collection
from pathlib import Path

import amqp
import pytest

from support.rabbit_servers import (
    SHARED_RABBIT_URL,
    AmqpCleanup,
    RabbitServer,
    RabbitServerError,
    amqp_connect,
    ensure_running,
    unique_name,
)


def epmd_names() -> str:
    """What the machine's epmd answers to NAMES: ``name <short name> at port <n>`` lines."""
    with socket.create_connection(("127.0.0.1", 4369), timeout=2) as sock:
        sock.sendall(b"\x00\x01n")
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
    return data[4:].decode()


def live_processes(pids: Collection[int] = (), pgid: int | None = None) -> list[int]:
    """Those of ``pids``, and members of ``pgid``, that still run (zombies have exited)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            member = int(entry.name) in pids or (pgid is not None and int(fields[2]) == pgid)
            if member and fields[0] not in (b"Z", b"X"):
                found.append(int(entry.name))
    return found


def test_a_private_node_answers_on_its_own_port_not_the_shared_one(
    private_rabbit: RabbitServer, rabbit_url: str, amqp_cleanup: AmqpCleanup
) -> None:
    port = private_rabbit.port
    assert port != 5672 and private_rabbit.url == f"amqp://guest:guest@127.0.0.1:{port}/%2F"
    assert f"name logstream-test-{port} at port {private_rabbit.dist_port}\n" in epmd_names()
    name = amqp_cleanup.exchange(unique_name("test-private"), url=private_rabbit.url)
    amqp_cleanup.exchange(name, url=rabbit_url)  # never made there: a no-op safety net

    channel = private_rabbit.connection().channel()
    channel.exchange_declare(name, "topic", auto_delete=False)
    channel.exchange_declare(name, "topic", passive=True)  # it exists here...
    with amqp_connect(rabbit_url) as shared, pytest.raises(amqp.exceptions.NotFound):
        shared.channel().exchange_declare(name, "topic", passive=True)  # ...not there


def test_kill_leaves_no_process_of_the_node_and_connections_fail(
    rabbit_server: RabbitServer,
) -> None:
    pids, pgid, beam = rabbit_server.node_pids(), rabbit_server.pgid, rabbit_server.pid
    assert beam in pids and pgid in pids and len(pids) >= 3  # script, VM, erl_child_setup...
    conn = rabbit_server.connection()

    started = time.monotonic()
    rabbit_server.kill()
    elapsed = time.monotonic() - started

    assert live_processes(pids, pgid) == [] and rabbit_server.node_pids() == []
    assert not rabbit_server.is_running and rabbit_server.pid is None
    for _ in range(100):  # epmd drops the name when it sees the connection close
        if f"name logstream-test-{rabbit_server.port} " not in epmd_names():
            break
        time.sleep(0.02)
    else:
        pytest.fail(f"epmd still lists the killed node: {epmd_names()}")
    with pytest.raises(OSError):
        conn.drain_events(timeout=2)  # the open connection sees the crash
    with pytest.raises(OSError):
        amqp_connect(rabbit_server.url, connect_timeout=1)  # and nothing listens any more
    assert elapsed < 5, f"kill took {elapsed:.2f}s"


def test_restart_comes_back_on_the_same_port_with_its_durable_state(
    private_rabbit: RabbitServer,
) -> None:
    port, url, old_pid = private_rabbit.port, private_rabbit.url, private_rabbit.pid
    durable, transient = unique_name("test-durable"), unique_name("test-transient")
    channel = private_rabbit.connection().channel()
    channel.queue_declare(durable, durable=True, auto_delete=False)
    channel.queue_declare(transient, durable=False, auto_delete=False)
    # Mnesia writes its log asynchronously: a SIGKILL right now lost it ~1 run in 8.
    assert private_rabbit.ctl("eval", "mnesia:sync_log().").strip() == "ok"

    private_rabbit.restart()  # a crash (SIGKILL), then the same node again
    assert (private_rabbit.port, private_rabbit.url) == (port, url)
    assert private_rabbit.pid not in (None, old_pid)
    channel = private_rabbit.connection().channel()
    channel.queue_declare(durable, passive=True)  # same data directory
    with pytest.raises(amqp.exceptions.NotFound):
        channel.queue_declare(transient, passive=True)

    private_rabbit.restart(graceful=True)
    assert private_rabbit.url == url
    private_rabbit.connection().channel().queue_delete(durable)


def test_a_node_left_down_or_paused_is_running_again_for_the_next_test(
    shared_private_rabbit: RabbitServer,
) -> None:
    port = shared_private_rabbit.start().port
    shared_private_rabbit.pause()
    with pytest.raises((OSError, amqp.exceptions.AMQPError)):
        amqp_connect(shared_private_rabbit.url, connect_timeout=1, read_timeout=1)
    ensure_running(shared_private_rabbit)  # what the private_rabbit fixture does
    shared_private_rabbit.connection().close()

    shared_private_rabbit.kill()
    assert ensure_running(shared_private_rabbit).port == port
    shared_private_rabbit.connection().close()


def test_amqp_cleanup_deletes_what_a_test_registered(rabbit_url: str) -> None:
    cleanup = AmqpCleanup()
    exchange = cleanup.exchange(unique_name("test-cleanup"))
    queue = cleanup.queue(unique_name("test-cleanup"))
    cleanup.queue(unique_name("test-never-made"))  # deleting what is not there is fine
    with amqp_connect(rabbit_url) as conn:
        channel = conn.channel()
        channel.exchange_declare(exchange, "fanout", auto_delete=False)
        channel.queue_declare(queue, auto_delete=False)

    cleanup.close()

    with amqp_connect(rabbit_url) as conn:
        for declare, name in (("exchange_declare", exchange), ("queue_declare", queue)):
            args = (name, "fanout") if declare == "exchange_declare" else (name,)
            with pytest.raises(amqp.exceptions.NotFound):
                getattr(conn.channel(), declare)(*args, passive=True)


def test_unique_names_differ_and_keep_their_prefix() -> None:
    names = {unique_name("test-x") for _ in range(100)}
    assert len(names) == 100 and all(n.startswith("test-x-") for n in names)
    assert SHARED_RABBIT_URL == "amqp://guest:guest@127.0.0.1:5672/%2F"


def test_a_node_that_cannot_start_fails_with_its_log() -> None:
    server = RabbitServer({"no_such.setting": "1"})
    try:
        with pytest.raises(RabbitServerError, match="exited with code") as failure:
            server.start()
        assert "no_such.setting" in str(failure.value)  # the log says why
        assert server.node_pids() == []
    finally:
        server.close()
    assert not os.path.exists(server.dir)
