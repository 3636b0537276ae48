"""Least privilege and transport security, against real locked-down servers.

ACL: a redis-server whose ``default`` user is off, with one user per role
(docs/security.md documents the same lines): the handler works with the
writer's rights, ``tail_logs``, ``redis-logstream tail`` and the console with
the reader's, a whole site with the two combined; each command of a line is
shown needed (without it the server's ACL LOG records a refusal), and each
role is shown unable to do the other's work.  TLS: a TLS-only server with
certificates made by the test; certificate checking is on by default.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from django.core.management import call_command
from django.test import Client

from redis_logstream.console import hubs
from redis_logstream.console.fanout import follower_client
from redis_logstream.console.tokens import make_stream_token
from redis_logstream.reading.reader import StreamReader, client_for_url
from support.helpers import Handlers, entries, wait_for
from support.secure_servers import Certificates, SecureRedisServer, User, make_certificates
from support.servers import no_retry
from support.sse_client import SSEClient, parse_events
from support.streamlog import REPO, Writer
from support.web_servers import WebServer

WRITER = "resetchannels ~stream:logs:* &logs:* +evalsha +eval +publish +xadd +xtrim +expire"
READER = "resetchannels %R~stream:logs:* +xrevrange +xrange +xread +xlen +time +client|setname"
# One user for a whole site: the writer line plus the reader grants.
SITE = WRITER + " +xrevrange +xrange +xread +xlen +time +client|setname"
LISTENER = "resetchannels &logs:* +subscribe +psubscribe"
PURGER = (
    "resetchannels ~stream:logs:* ~stream:logs/dead-letter/* +scan +type +xlen +multi +exec "
    "+del +xrevrange +xrange +xdel"
)
ROLES = {
    "logwriter": WRITER,
    "logreader": READER,
    "logsite": SITE,
    "loglistener": LISTENER,
    "logpurger": PURGER,
}

ALICE = "User.alice"
ALICE_KEY, GLOBAL_KEY = f"stream:logs:{ALICE}", "stream:logs:global"


def users() -> list[User]:
    return [User(name, rules) for name, rules in ROLES.items()]


@pytest.fixture(scope="module")
def acl_server() -> Iterator[SecureRedisServer]:
    with SecureRedisServer(users()) as server:
        yield server


@pytest.fixture
def acl(acl_server: SecureRedisServer) -> SecureRedisServer:
    return acl_server.reset()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(certificates: Certificates) -> Iterator[SecureRedisServer]:
    with SecureRedisServer(users(), certificates=certificates) as server:
        yield server


@pytest.fixture
def tls(tls_server: SecureRedisServer) -> SecureRedisServer:
    return tls_server.reset()


@pytest.fixture
def console(settings: Any) -> Iterator[Any]:
    """Settings for in-process console tests; the console forgets its Redis after."""
    yield settings
    hubs.reset()


def write_records(handlers: Handlers, url: str, *messages: str) -> Writer:
    write = Writer(handlers(url=url))
    for message in messages:
        write(message, ALICE, flush=False)
    write.flush()
    return write


#: Patterns narrowed to the global stream only, and what Redis then refuses.
NARROWED = {
    "~stream:logs:*": ("~stream:logs:global", ("key", ALICE_KEY)),
    "%R~stream:logs:*": ("%R~stream:logs:global", ("key", ALICE_KEY)),
    "&logs:*": ("&logs:global", ("channel", f"logs:{ALICE}")),
}


#: Grants whose refusal stores the records all the same (no PUBLISH, no trim, no TTL).
HOUSEKEEPING = {"+publish", "+xtrim", "+expire", "&logs:*"}


def without(rules: str, part: str) -> tuple[str, tuple[str, str]]:
    """``rules`` without the command ``part`` (or with the pattern narrowed)
    and the ACL LOG entry that refusal leaves, e.g. ``("command", "xadd")``."""
    instead, refused = NARROWED.get(part, ("", ("command", part.removeprefix("+"))))
    return " ".join(instead if rule == part else rule for rule in rules.split()), refused


def failed_write(handlers: Handlers, url: str, wait: float = 0.3) -> dict[str, object]:
    """Log one record through a handler that cannot write; its stats()."""
    handler = handlers(url=url, shutdown_timeout=0.2)
    Writer(handler)("lost", ALICE, flush=False)  # must not raise
    assert not handler.flush(wait)
    stats = handler.stats()
    handler.close()  # give up now, not at teardown
    return stats


# -- ACL: the writer ----------------------------------------------------------


def test_the_writer_line_lets_the_handler_store_publish_trim_and_expire(
    acl: SecureRedisServer, handlers: Handlers
) -> None:
    admin = acl.admin_client()
    listener = redis.Redis.from_url(acl.url_for("loglistener")).pubsub()
    listener.subscribe(f"logs:{ALICE}")
    listener.psubscribe("logs:*")
    for _ in range(2):  # both confirmed before anything is published
        assert listener.get_message(timeout=5)["type"] in {"subscribe", "psubscribe"}
    write = Writer(handlers(url=acl.url_for("logwriter"), stream_maxlen=10))
    write("with a context", ALICE)
    write("without one")
    assert [e["message"] for e in entries(admin, ALICE_KEY)] == ["with a context"]
    assert [e["message"] for e in entries(admin, GLOBAL_KEY)] == ["with a context", "without one"]
    assert 3500 < admin.ttl(ALICE_KEY) <= 3600 and 86000 < admin.ttl(GLOBAL_KEY) <= 86400
    heard = [listener.get_message(timeout=2) for _ in range(4)]
    listener.close()
    assert sorted((m["channel"], m["pattern"] or b"") for m in heard if m) == [
        (b"logs:User.alice", b""),
        (b"logs:User.alice", b"logs:*"),
        (b"logs:global", b"logs:*"),
        (b"logs:global", b"logs:*"),
    ]
    for i in range(300):
        write(f"r{i}", ALICE, flush=False)
    write.flush()
    assert admin.xlen(ALICE_KEY) < 200  # XTRIM MAXLEN ~ 10 drops whole 100-entry nodes
    assert write.handler.stats()["errors"] == 0
    assert acl.denials() == []


@pytest.mark.parametrize("part", WRITER.split()[1:])  # every grant of the line
def test_without_any_part_of_the_writer_line_redis_refuses_the_handler(
    acl: SecureRedisServer, handlers: Handlers, part: str
) -> None:
    rules, refused = without(WRITER, part)
    acl.set_user("probe", rules, "probe-password")
    handler = handlers(url=acl.url_for("probe"))
    Writer(handler)("refused", ALICE, flush=False)
    handler.flush(1.0)
    assert ("probe", *refused) in acl.denials()
    stats = handler.stats()
    print(
        f"FIGURE writer without {part}: refused {refused}; stats errors={stats['errors']} "
        f"failed={stats['failed']} last_error={stats['last_error']!r}"
    )
    assert stats["errors"] >= 1
    if part in HOUSEKEEPING:  # the records are stored; the refusal is still seen
        assert stats["failed"] == 0 and stats["sent"] == 1
        assert "Redis refused part of a write" in str(stats["last_error"])
    else:
        assert stats["failed"] == 1


def test_a_refused_write_is_counted_with_the_reason_and_never_raised(
    acl: SecureRedisServer, handlers: Handlers
) -> None:
    stats = failed_write(handlers, acl.url_for("logreader"))
    assert stats["sent"] == 0 and stats["failed"] == 1 and stats["errors"] == 1
    assert stats["retries"] == 0  # a refusal is not retried: it would fail again
    assert stats["last_error"] == (
        "NoPermissionError: this user has no permissions to run the 'evalsha' command"
    )
    assert acl.admin_client().dbsize() == 0


# -- ACL: each role stays in its lane -------------------------------------------

FORBIDDEN = {
    "logwriter": [
        ("XRANGE", GLOBAL_KEY, "-", "+"),
        ("XREAD", "STREAMS", GLOBAL_KEY, "0"),
        ("XADD", "other", "*", "data", "x"),
        ("KEYS", "*"),
        ("SCAN", "0"),
        ("SUBSCRIBE", "logs:global"),
        ("FLUSHALL",),
        ("CONFIG", "GET", "*"),
    ],
    "logreader": [
        ("XADD", GLOBAL_KEY, "*", "data", "x"),
        ("DEL", GLOBAL_KEY),
        ("EXPIRE", GLOBAL_KEY, "1"),
        ("XTRIM", GLOBAL_KEY, "MAXLEN", "0"),
        ("PUBLISH", "logs:global", "x"),
        ("EVAL", "return 1", "0"),
        ("XRANGE", "other", "-", "+"),
        ("KEYS", "*"),
        ("FLUSHALL",),
    ],
}


@pytest.mark.parametrize("user", sorted(FORBIDDEN))
def test_the_writer_cannot_read_and_the_reader_cannot_write(
    acl: SecureRedisServer, user: str
) -> None:
    with redis.Redis.from_url(acl.url_for(user), socket_timeout=5) as client:
        for command in FORBIDDEN[user]:
            with pytest.raises(redis.exceptions.NoPermissionError):
                client.execute_command(*command)
        if user == "logwriter":  # nor by a script: it runs with the caller's rights
            with pytest.raises(redis.ResponseError, match="can't run this command"):
                client.eval("return redis.call('XRANGE', KEYS[1], '-', '+')", 1, GLOBAL_KEY)
    with pytest.raises(redis.AuthenticationError), redis.Redis.from_url(acl.url_for(None)) as anon:
        anon.ping()  # the default user is off: nothing without a login


# -- ACL: the readers -------------------------------------------------------------


def read_like_the_readers(url: str) -> None:
    """What tail_logs / redis-logstream tail and the console send, each step
    allowed to fail: --since (TIME), history (XREVRANGE), follow (XREAD), the
    console's named follower, its resume after Last-Event-ID (XRANGE) and
    the count of what a resume from before the history skips (XLEN)."""
    client = client_for_url(url, block_ms=100)
    named = follower_client(client)
    reader = StreamReader(client, block_ms=100)
    steps = (
        lambda: reader.snapshot(ALICE, 5, since="1h"),
        lambda: list(reader.follow(ALICE, "0-0", timeout=0.1)),
        lambda: named.xrevrange(ALICE_KEY, count=1),
        lambda: client.xrange(ALICE_KEY, "(0-0", "+"),
        lambda: client.xlen(ALICE_KEY),
    )
    for step in steps:
        with contextlib.suppress(redis.RedisError):
            step()
    for each in (client, named):
        each.connection_pool.disconnect()


@pytest.mark.parametrize("part", READER.split()[1:])  # every grant of the line
def test_without_any_part_of_the_reader_line_redis_refuses_a_reader(
    acl: SecureRedisServer, part: str
) -> None:
    rules, refused = without(READER, part)
    acl.admin_client().xadd(ALICE_KEY, {"data": "{}"})
    acl.set_user("probe", READER, "probe-password")
    read_like_the_readers(acl.url_for("probe"))
    assert acl.denials() == []
    acl.set_user("probe", rules, "probe-password")
    read_like_the_readers(acl.url_for("probe"))
    assert ("probe", *refused) in acl.denials()


def test_tail_logs_and_redis_logstream_tail_read_with_the_reader_line(
    acl: SecureRedisServer, handlers: Handlers
) -> None:
    write = write_records(handlers, acl.url_for("logwriter"), "m0", "m1", "m2")
    reader_url = acl.url_for("logreader")
    out = io.StringIO()
    call_command("tail_logs", ALICE, "-n", "2", "--since", "1h", "--url", reader_url, stdout=out)
    assert [line.rsplit(": ", 1)[1] for line in out.getvalue().splitlines()] == ["m1", "m2"]
    proc = console_script("--url", reader_url, ALICE, "-n", "1", "-f")
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().rstrip().endswith(": m2")
        write("live", ALICE)
        assert proc.stdout.readline().rstrip().endswith(": live")
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=10)
    assert (proc.returncode, err) == (0, "")
    assert acl.denials() == []


def console_script(*args: str) -> subprocess.Popen[str]:
    """``redis-logstream tail ARGS`` as an operator runs it: no Django project."""
    script = Path(sys.executable).with_name("redis-logstream")
    env = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SETTINGS_MODULE", "REDIS_URL"}}
    env["PYTHONPATH"] = str(REPO / "src")
    return subprocess.Popen(
        [str(script), "tail", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def watch_in_process(console: Any, url: str, write: Writer) -> list[str]:
    """The console's stream view, in this process, reading ``url``: the
    history, then a record written while it watches, then a resume."""
    console.REDIS_LOGSTREAM = {"URL": url, "STREAM_HEARTBEAT": 0.2, "STREAM_MAX_AGE": 10.0}
    stream = f"/logs/stream/?token={make_stream_token(ALICE, max_age=600)}"
    response = Client().get(stream + "&history=5")
    assert response.status_code == 200, response.content
    chunks = iter(response.streaming_content)  # type: ignore[attr-defined]
    seen = [e for e in parse_events(next(chunks)) if e.event == "log"]
    write("live", ALICE)
    deadline = time.monotonic() + 5
    while seen[-1].json["message"] != "live" and time.monotonic() < deadline:
        seen += [e for e in parse_events(next(chunks)) if e.event == "log"]
    response.close()
    resumed = Client().get(stream, HTTP_LAST_EVENT_ID=seen[0].id)
    after = [
        e.json["message"]
        for e in parse_events(next(iter(resumed.streaming_content)))
        if e.event == "log"
    ]
    resumed.close()
    assert after == [e.json["message"] for e in seen[1:]]
    return [e.json["message"] for e in seen]


@pytest.mark.django_db  # closing a response closes old database connections
def test_the_console_streams_history_live_and_resumes_with_the_reader_line(
    acl: SecureRedisServer, handlers: Handlers, console: Any
) -> None:
    write = write_records(handlers, acl.url_for("logwriter"), "m0", "m1")
    assert watch_in_process(console, acl.url_for("logreader"), write) == ["m0", "m1", "live"]
    assert acl.denials() == []


def test_a_site_on_the_combined_line_logs_and_serves_its_console(
    acl: SecureRedisServer, handlers: Handlers
) -> None:
    started = time.monotonic()
    web = WebServer("runserver", acl.url_for("logsite"))  # handler, cache alias and console
    print(f"FIGURE runserver on the ACL server started in {time.monotonic() - started:.2f}s")
    try:
        write = write_records(handlers, acl.url_for("logwriter"), "before")
        token = make_stream_token(ALICE, max_age=600)
        with SSEClient(f"{web.url}/logs/stream/?token={token}") as viewer:
            history = viewer.wait_for(lambda e: e.event == "ready")
            assert [e.json["message"] for e in history if e.event == "log"] == ["before"]
            write("live", ALICE)
            assert viewer.wait_for(lambda e: e.event == "log")[-1].json["message"] == "live"
        with SSEClient(f"{web.url}/logs/?token={token}") as page:  # the console page
            assert page.status == 200
        admin = acl.admin_client()  # the site's own handler wrote runserver's access log
        wait_for(lambda: any(e["logger"] == "django.server" for e in entries(admin, GLOBAL_KEY)))
    finally:
        web.stop()
    assert acl.denials() == [], web.output()


def test_the_purge_line_lets_purge_log_context_delete_streams(
    acl: SecureRedisServer, handlers: Handlers
) -> None:
    write_records(handlers, acl.url_for("logwriter"), "a", "b")
    admin = acl.admin_client()
    (entry_id, fields), *_ = admin.xrange(GLOBAL_KEY)
    admin.xadd("stream:logs/dead-letter/audit", {"data": fields[b"data"], "id": entry_id})
    out = io.StringIO()
    call_command("purge_log_context", ALICE, "--url", acl.url_for("logpurger"), stdout=out)
    call_command(
        "purge_log_context", "--all", "--yes", "--url", acl.url_for("logpurger"), stdout=out
    )
    assert f"deleted {ALICE_KEY} (2 entries)" in out.getvalue()
    assert f"removed 2 entries from {GLOBAL_KEY} (2 scanned)" in out.getvalue()
    assert "removed 1 entry from stream:logs/dead-letter/audit (1 scanned)" in out.getvalue()
    assert admin.dbsize() == 0 and acl.denials() == []


def test_the_documented_acl_lines_are_the_tested_ones() -> None:
    text = (REPO / "docs" / "security.md").read_text()
    for name, rules in ROLES.items():
        line = f"user {name} on >PASSWORD {rules}"
        assert line in text, f"docs/security.md lacks: {line}"
        print(f"FIGURE ACL {line}")


# -- TLS ------------------------------------------------------------------------


def test_rediss_with_the_test_ca_delivers_records_and_there_is_no_plain_port(
    tls: SecureRedisServer, handlers: Handlers
) -> None:
    write_records(handlers, tls.url_for("logwriter"), "over tls")
    assert [e["message"] for e in entries(tls.admin_client(), ALICE_KEY)] == ["over tls"]
    with pytest.raises(redis.ConnectionError):
        redis.Redis(port=tls.port, socket_timeout=2, retry=no_retry()).ping()


def test_certificate_checking_is_on_by_default_and_ssl_cert_reqs_none_turns_it_off(
    tls: SecureRedisServer, handlers: Handlers
) -> None:
    stats = failed_write(handlers, tls.url_for("logwriter", ca=False))
    assert stats["sent"] == 0 and stats["errors"] >= 1 and stats["pending"] == 1
    assert "CERTIFICATE_VERIFY_FAILED" in str(stats["last_error"])
    assert tls.admin_client().dbsize() == 0
    print(f"FIGURE no CA given: {stats['last_error']}")
    write_records(handlers, tls.url_for("logwriter", ca=False, ssl_cert_reqs="none"), "unsafe")
    assert tls.admin_client().xlen(ALICE_KEY) == 1  # encrypted, but to whom? (docs/security.md)


def test_a_certificate_for_another_name_is_refused_on_every_redis_py(
    tls: SecureRedisServer, handlers: Handlers
) -> None:
    """redis-py 5 does not check host names by default; the library's pools do."""
    default = tls.url_for("logwriter", host="127.0.0.1")  # the certificate names localhost
    assert "mismatch" in str(failed_write(handlers, default)["last_error"])
    print(f"FIGURE redis-py {redis.__version__}: host name checked by default: True")
    unchecked = tls.url_for("logwriter", host="127.0.0.1", ssl_check_hostname="false")
    write_records(handlers, unchecked, "by ip, name not checked")
    assert tls.admin_client().xlen(ALICE_KEY) == 1


def test_redis_logstream_tail_reads_over_tls_with_the_ca_and_refuses_without(
    tls: SecureRedisServer, handlers: Handlers
) -> None:
    write_records(handlers, tls.url_for("logwriter"), "m0", "m1")
    good = console_script("--url", tls.url_for("logreader"), ALICE)
    bad = console_script("--url", tls.url_for("logreader", ca=False), ALICE)
    (out, err), (bad_out, bad_err) = good.communicate(timeout=20), bad.communicate(timeout=20)
    assert (good.returncode, err) == (0, "")
    assert [line.rsplit(": ", 1)[1] for line in out.splitlines()] == ["m0", "m1"]
    assert (bad.returncode, bad_out) == (1, "")
    assert "cannot reach Redis" in bad_err and "CERTIFICATE_VERIFY_FAILED" in bad_err


@pytest.mark.django_db  # closing a response closes old database connections
def test_the_console_streams_over_tls_with_the_reader_line(
    tls: SecureRedisServer, handlers: Handlers, console: Any
) -> None:
    write = write_records(handlers, tls.url_for("logwriter"), "m0")
    assert watch_in_process(console, tls.url_for("logreader"), write) == ["m0", "live"]


def test_a_client_certificate_given_in_the_url_is_presented(
    certificates: Certificates, handlers: Handlers
) -> None:
    with SecureRedisServer(users(), certificates=certificates, client_certificates=True) as mtls:
        write_records(handlers, mtls.url_for("logwriter"), "with a client certificate")
        assert mtls.admin_client().xlen(GLOBAL_KEY) == 1
        stats = failed_write(handlers, mtls.url_for("logwriter", client_cert=False))
        assert stats["sent"] == 0 and mtls.admin_client().xlen(GLOBAL_KEY) == 1
        # The client may see an alert or a closed socket (TLS 1.3); the server says why.
        wait_for(lambda: "peer did not return a certificate" in mtls.read_log())
