"""Start, fork and exit: the handler's life in real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import redis

from redis_logstream import RedisLogHandler
from support.helpers import entries, fresh_logger, messages, wait_for

ROOT = Path(__file__).resolve().parents[1]
GLOBAL = "stream:logs:global"


def run_script(body: str, *, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``body`` in a fresh interpreter without Django settings."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def test_no_thread_starts_until_the_first_record(redis_url: str) -> None:
    before = {t.ident for t in threading.enumerate()}
    handler = RedisLogHandler(url=redis_url)
    log = fresh_logger(handler)
    assert {t.ident for t in threading.enumerate()} == before
    log.info("first")
    assert handler.flush(5)
    started = [t for t in threading.enumerate() if t.ident not in before]
    assert [t.name for t in started] == ["redis-logstream"]
    assert started[0].daemon
    handler.close()


def test_a_plain_script_ships_with_url_and_exit_delivers_what_is_buffered(
    redis_url: str, redis_client: redis.Redis
) -> None:
    result = run_script(
        f"""
        import logging
        from redis_logstream import RedisLogHandler, log_context
        logging.basicConfig(level=logging.INFO)
        logging.getLogger().addHandler(
            RedisLogHandler(url={redis_url!r}, flush_interval=5, stream_maxlen=5000))
        with log_context("job_script"):
            for i in range(2000):
                logging.info("line %d", i)
        # no flush, no close: exit must deliver
        """
    )
    assert result.returncode == 0, result.stderr
    assert redis_client.xlen(GLOBAL) == 2000
    assert messages(redis_client, "stream:logs:job_script")[-1] == "line 1999"


def test_exit_with_a_server_that_never_answers_is_bounded_by_shutdown_timeout(
    silent_server,
) -> None:
    started = time.monotonic()
    result = run_script(
        f"""
        import logging
        from redis_logstream import RedisLogHandler
        handler = RedisLogHandler(url={silent_server.url!r}, shutdown_timeout=1.0,
                                  socket_timeout=30)
        log = logging.getLogger("app")
        log.addHandler(handler)
        log.warning("into the void")
        for i in range(100):
            log.warning("more %d", i)
        """
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stderr
    # Interpreter start-up and imports take well under a second; the
    # socket timeout (30 s) is never waited for.
    assert elapsed < 1.0 + 3.0, elapsed
    assert "records not delivered at exit" in result.stderr


def test_exit_with_redis_down_reports_how_many_records_were_lost(own_redis) -> None:
    own_redis.kill()
    result = run_script(
        f"""
        import logging
        from redis_logstream import RedisLogHandler
        log = logging.getLogger("app")
        log.addHandler(RedisLogHandler(url={own_redis.url!r}, shutdown_timeout=0.5))
        for i in range(42):
            log.warning("lost %d", i)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "42 records not delivered at exit" in result.stderr


def test_forked_children_ship_their_own_records(redis_url: str, redis_client: redis.Redis) -> None:
    handler = RedisLogHandler(url=redis_url, flush_interval=0.01)
    log = fresh_logger(handler)
    log.info("parent before fork")
    assert handler.flush(5)
    # Leave records in the parent's buffer at fork time: the child must not
    # inherit (and so duplicate) them.
    handler.shipper.sink.write = _blocking_write(handler.shipper.sink.write)
    log.info("parent pending")
    children = []
    for n in range(3):
        pid = os.fork()
        if pid == 0:  # the child: log, flush, leave without running atexit
            code = 0
            try:
                log.info("child %d", n)
                code = 0 if handler.flush(5) else 3
            except BaseException:
                code = 4
            finally:
                os._exit(code)
        children.append(pid)
    codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in children]
    assert codes == [0, 0, 0]
    got = wait_for(lambda: [m for m in messages(redis_client, GLOBAL) if m.startswith("child")])
    assert sorted(got) == ["child 0", "child 1", "child 2"]
    assert messages(redis_client, GLOBAL).count("parent pending") == 0
    pids = {e["pid"] for e in entries(redis_client, GLOBAL) if e["message"].startswith("child")}
    assert pids == set(children)
    _RELEASE.set()
    assert handler.flush(5)
    assert messages(redis_client, GLOBAL).count("parent pending") == 1
    handler.close()


_RELEASE = threading.Event()


def _blocking_write(write):
    """Hold the parent's next write until the test releases it."""

    def held(batch):
        if os.getpid() == _PARENT:
            _RELEASE.wait(30)
        return write(batch)

    return held


_PARENT = os.getpid()
