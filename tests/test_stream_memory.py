"""A viewer that stops reading must not hold the server's memory.

A real uvicorn, and a gunicorn with threaded workers, serve the test site
with a 2 s write timeout (tests/support/stalled_settings.py); a client opens a
stream over a raw socket with
a small receive buffer and never reads; large records are then written to
the stream. The server's resident memory (VmRSS of the process serving the site)
must grow by less than 64 MiB, and the stuck response must be ended: once
the client finally reads, it gets what was buffered, then the end of the
connection, long before the response's 120 s age.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import django
import pytest
import redis

from redis_logstream.console.tokens import make_stream_token
from redis_logstream.naming import Names
from support.helpers import wait_for
from support.servers import LOOPBACK, RedisServer, no_retry
from support.sse_client import SSEClient
from support.web_servers import WebServer

MiB = 1024 * 1024
RECORD_BYTES = 60 * 1024
RECORDS = 3000  # 176 MiB written while the client does not read
TRICKLE = 150  # 9 MiB, more than the socket buffers take (4 MiB here)


@pytest.fixture(params=["uvicorn", "gunicorn"])
def server(request, redis_server: RedisServer) -> Iterator[WebServer]:
    web = WebServer(request.param, redis_server.url, settings="support.stalled_settings")
    yield web
    web.stop()


def serving_pid(server: WebServer) -> int:
    """The process that runs the site: uvicorn itself, gunicorn's one worker."""
    if server.kind == "uvicorn":
        return server.proc.pid
    children = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text()
    (worker,) = children.split()
    return int(worker)


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def followers(store: redis.Redis) -> int:
    return sum(1 for c in store.client_list() if c.get("name") == "redis_logstream:follower")


def stalled_client(port: int, path: str) -> socket.socket:
    """Opens the stream and never reads: the server's writes fill the
    socket buffers, then stay stuck."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((LOOPBACK, port))
    head = f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{port}\r\nAccept: text/event-stream\r\n"
    sock.sendall(f"{head}\r\n".encode())
    return sock


def read_to_end(sock: socket.socket, timeout: float) -> tuple[bool, bytes]:
    """(whether the server closed the connection within ``timeout``, what was read)."""
    deadline = time.monotonic() + timeout
    got = bytearray()
    while time.monotonic() < deadline:
        sock.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            chunk = sock.recv(1 << 20)
        except TimeoutError:
            break
        except OSError:
            return True, bytes(got)
        if not chunk:
            return True, bytes(got)
        got += chunk
    return False, bytes(got)


def test_a_viewer_that_never_reads_holds_bounded_memory_and_its_response_is_ended(
    server, redis_server
):
    store = redis.Redis.from_url(redis_server.url, socket_timeout=10, retry=no_retry())
    warm_job, job = f"job_{uuid.uuid4().hex}", f"job_{uuid.uuid4().hex}"
    warm_path = f"/logs/stream/?token={make_stream_token(warm_job, max_age=600)}&history=0"
    with SSEClient(server.url + warm_path) as warm:  # the code paths, once
        warm.wait_for(lambda e: e.event == "ready")
    # Django 4.2 under ASGI cannot tell that client left: its viewer (and
    # follower) stays until the response's age (docs/console.md).
    others = 1 if server.kind == "uvicorn" and django.VERSION < (5, 0) else 0
    wait_for(lambda: followers(store) == others, timeout=10)
    pid = serving_pid(server)
    before = rss(pid)

    path = f"/logs/stream/?token={make_stream_token(job, max_age=600)}&history=0"
    sock = stalled_client(server.port, path)
    try:
        wait_for(lambda: followers(store) == others + 1, timeout=10)
        key = Names().stream(job)
        record = json.dumps({"message": "x" * RECORD_BYTES, "level": "INFO"})
        peak = before
        # First a trickle the viewer takes as it comes, until the socket
        # buffers are full and its writes are stuck; then a flood.
        for n in range(RECORDS):
            store.xadd(key, {"data": record}, maxlen=500, approximate=True)
            if n < TRICKLE:
                time.sleep(0.02)
            if n % 20 == 0:
                peak = max(peak, rss(pid))
        time.sleep(1)
        peak = max(peak, rss(pid))
        growth = peak - before
        print(
            f"{server.kind} RSS {before / MiB:.0f} MiB -> peak {peak / MiB:.0f} MiB "
            f"(+{growth / MiB:.1f} MiB) with a viewer that does not read"
        )
        assert growth < 64 * MiB

        # The write timeout (2 s) ends the stuck response and frees its place.
        wait_for(lambda: followers(store) == others, timeout=10)
        closed, received = read_to_end(sock, timeout=10)
        print(f"the client then read {len(received) / MiB:.1f} MiB before the end: {closed}")
        assert closed
        assert len(received) < 64 * MiB
        # Cut by the server while stuck, not ended in order once the client
        # read again (an orderly end says "come back soon": retry: 500).
        assert b"retry: 500" not in received
    finally:
        sock.close()
        store.delete(Names().stream(job))
        store.close()
