"""Fork: prefork servers whose master built the log handler before forking.

Most sites run this way: gunicorn's sync workers with ``--preload`` and
Celery's prefork pool fork their workers from a process that already
configured Django's LOGGING (and so a RedisLogHandler, its buffer, its
thread, its connection). Every worker must ship its own records, and nothing
the master had buffered at fork time may be shipped twice.

Both servers are real child processes on a Redis this module starts (the
log destination, and Celery's broker), found and stopped by pid with their
whole process group, pass or fail.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery
from celery.result import AsyncResult

from redis_logstream import job_id_factory, log_context
from redis_logstream.celery import task_context
from support.helpers import entries, wait_for
from support.servers import RedisServer
from support.web_servers import WebServer
from testproject.tasks import export_report

ROOT = Path(__file__).resolve().parent.parent
GLOBAL = "stream:logs:global"
WORKERS = 3
CELERY_VARIABLES = (
    "CELERY_BROKER_URL",
    "CELERY_BROKER_READ_URL",
    "CELERY_BROKER_WRITE_URL",
    "CELERY_RESULT_BACKEND",
)

# gunicorn server hooks: the master logs before every fork (so a record is in
# its buffer when the worker is forked), each worker says what it inherited.
HOOKS = """
import logging, os

log = logging.getLogger("testproject.prefork")


def _pending():  # records the RedisLogHandler holds, not yet in Redis
    handlers = logging.getLogger("testproject").handlers
    return sum(h.shipper.pending() for h in handlers if hasattr(h, "shipper"))


def when_ready(server):
    log.info("master %d ready", os.getpid())


def pre_fork(server, worker):
    log.info("master %d forks worker %d", os.getpid(), worker.age)
    log.info("master %d has %d pending at fork %d", os.getpid(), _pending(), worker.age)


def post_fork(server, worker):
    log.info("worker %d inherited %d pending", os.getpid(), _pending())


def worker_exit(server, worker):  # for the server log, shown when a test failed
    for h in logging.getLogger("testproject").handlers:
        if hasattr(h, "shipper"):
            print(f"worker {os.getpid()} exits: {h.stats()}", flush=True)
"""

# Run in a fresh process: which modules does the shipper's thread import? An
# import there holds a module lock; a fork at that moment leaves the child
# waiting for that lock forever or with a half-imported module.
FIRST_WRITE = """
import logging, sys, threading
import django

class Watch:
    seen = []

    def find_spec(self, name, path=None, target=None):
        if threading.current_thread() is not threading.main_thread():
            Watch.seen.append(name)

django.setup()
handler = next(h for h in logging.getLogger("testproject").handlers if hasattr(h, "shipper"))
sys.meta_path.insert(0, Watch())
logging.getLogger("testproject.first_write").info("first record")
assert handler.flush(5), handler.stats()
print(" ".join(Watch.seen))
"""


def children(pid: int) -> set[int]:
    """Pids whose parent is ``pid`` (from /proc: the process tree as it is now)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
            if int(stat.read_text().rpartition(")")[2].split()[1]) == pid:
                found.add(int(stat.parent.name))
    return found


def kill_group(pid: int) -> None:
    """SIGKILL whatever is left of the process group ``pid`` leads."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def duplicates(records: Iterable[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Records stored more than once: same logger, message, creation time and context."""
    seen = Counter((r["logger"], r["message"], r["timestamp"], r["context"]) for r in records)
    return [record for record, count in seen.items() if count > 1]


def log_server() -> Iterator[RedisServer]:
    """A Redis for one server's records, kept for the module (no FLUSHALL between tests)."""
    with RedisServer() as server:
        yield server


site_logs = pytest.fixture(log_server, scope="module", name="site_logs")
celery_logs = pytest.fixture(log_server, scope="module", name="celery_logs")


# -- gunicorn, sync workers, --preload ------------------------------------------------------
def test_the_shipper_thread_imports_nothing_so_a_fork_cannot_catch_it_holding_an_import_lock(
    site_logs: RedisServer,
) -> None:
    # Seen in the gunicorn tests below, about one run in fifteen: the master's
    # first connect imported encodings.idna in the shipper thread as a worker
    # was forked, and that worker's shipper failed for good ("LookupError:
    # unknown encoding: idna"), its records never sent.
    env = {
        **os.environ,
        "REDIS_URL": site_logs.url,
        "DJANGO_SETTINGS_MODULE": "testproject.settings",
        "TESTPROJECT_LOG_CONSOLE": "0",
        "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'src'}",
    }
    done = subprocess.run(
        [sys.executable, "-c", FIRST_WRITE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    imported = done.stdout.split()
    print(f"FIGURE shipper_thread_imports={len(imported)} modules={','.join(imported) or '-'}")
    assert imported == []


@pytest.fixture(scope="module")
def site(
    site_logs: RedisServer, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[WebServer]:
    hooks = tmp_path_factory.mktemp("gunicorn") / "hooks.py"
    hooks.write_text(HOOKS)
    web = WebServer(
        "gunicorn-preload", site_logs.url, workers=WORKERS, extra_args=("-c", str(hooks))
    )
    failed = request.session.testsfailed
    try:
        wait_for(lambda: len(children(web.proc.pid)) == WORKERS, timeout=15)
        yield web
    finally:
        web.stop()
        kill_group(web.proc.pid)
        if request.session.testsfailed > failed:
            print(f"gunicorn's log:\n{web.output()}")


def work(site: WebServer, count: int) -> list[dict[str, Any]]:
    """``count`` concurrent /work/ requests, each on its own connection; their answers."""

    def one(_: int) -> dict[str, Any]:
        with urllib.request.urlopen(f"{site.url}/work/?job=1&steps=2", timeout=10) as answer:
            return json.load(answer)

    with ThreadPoolExecutor(12) as pool:
        return list(pool.map(one, range(count)))


def arrived(reader: redis.Redis, answers: list[dict[str, Any]]) -> dict[str, list[dict]]:
    """Each request's records, once every request has all of them in its job stream
    (or what there is after 10 s, for the assertions to show what is missing)."""
    deadline = time.monotonic() + 10
    while True:
        got = {a["context"]: entries(reader, f"stream:logs:{a['context']}") for a in answers}
        if time.monotonic() > deadline or all(
            len(got[a["context"]]) >= a["records"] for a in answers
        ):
            return got
        time.sleep(0.02)


def test_every_preloaded_gunicorn_worker_ships_the_records_of_the_requests_it_served(
    site: WebServer, site_logs: RedisServer
) -> None:
    reader = site_logs.client(socket_timeout=5)
    workers = children(site.proc.pid)
    started = time.monotonic()
    answers: list[dict[str, Any]] = []
    by_job: dict[str, list[dict]] = {}
    for _round in range(6):  # until every worker has served some (nearly always one round)
        answers += work(site, 30)
        by_job = arrived(reader, answers)
        if {r["pid"] for records in by_job.values() for r in records} >= workers:
            break
    elapsed = time.monotonic() - started
    pids = Counter(records[0]["pid"] for records in by_job.values() if records)
    assert set(pids) == workers == children(site.proc.pid), (pids, workers)
    for answer in answers:
        records = by_job[answer["context"]]
        assert [r["message"] for r in records] == [
            "work started for anonymous: 2 steps",
            "step 1/2 done",
            "step 2/2 done",
            "work finished for anonymous",
        ]
        assert len({r["pid"] for r in records}) == 1  # one request, one worker
        assert {r["context"] for r in records} == {answer["context"]}
    everything = entries(reader, GLOBAL)
    assert not duplicates(everything)
    jobs = {a["context"] for a in answers}
    assert sum(1 for r in everything if r["context"] in jobs) == 4 * len(answers)
    print(
        f"FIGURE gunicorn_workers={WORKERS} preload=1 requests={len(answers)} "
        f"records={4 * len(answers)} pids={len(pids)} per_worker={sorted(pids.values())} "
        f"duplicates=0 seconds={elapsed:.2f}"
    )


def test_what_the_gunicorn_master_buffered_before_forking_is_stored_once_by_the_master(
    site: WebServer, site_logs: RedisServer
) -> None:
    reader = site_logs.client(socket_timeout=5)
    master = site.proc.pid
    workers = children(master)

    def booted() -> list[dict[str, Any]]:  # the workers' post_fork records, once all are in
        found = [
            r
            for r in entries(reader, GLOBAL)
            if r["logger"] == "testproject.prefork" and r["message"].startswith("worker ")
        ]
        return found if len(found) >= len(workers) else []

    inherited = wait_for(booted)
    everything = entries(reader, GLOBAL)
    mine = [r for r in everything if r["logger"] == "testproject.prefork"]
    by_master = [r["message"] for r in mine if r["pid"] == master]
    assert by_master.count(f"master {master} ready") == 1
    for age in range(1, WORKERS + 1):
        assert by_master.count(f"master {master} forks worker {age}") == 1
    pending_at_fork = [
        int(m.split()[3]) for m in by_master if m.startswith(f"master {master} has ")
    ]
    assert len(pending_at_fork) == WORKERS
    # The master still held records (its "forks worker" one at least) at each
    # fork, and no child shipped them: each worker began with an empty buffer.
    assert min(pending_at_fork) >= 1
    assert sorted((r["pid"], r["message"]) for r in inherited) == sorted(
        (pid, f"worker {pid} inherited 0 pending") for pid in workers
    )
    assert not [r for r in mine if r["pid"] not in workers | {master}]
    assert not duplicates(everything)
    print(
        f"FIGURE gunicorn_master_records={len(by_master)} "
        f"master_pending_at_fork={pending_at_fork} child_inherited=0 "
        f"worker_boot_records={len(inherited)} duplicates=0"
    )


# -- Celery, prefork pool -------------------------------------------------------------------


class PreforkWorker:
    """``celery worker --pool prefork --concurrency N`` and a client app to send it tasks."""

    def __init__(self, env: dict[str, str], broker: str, log_path: Path) -> None:
        self.queue = f"prefork-{uuid.uuid4().hex[:8]}"
        self.log_path = log_path
        self.client = Celery(
            "redis-logstream-prefork",
            broker=broker,
            backend=broker,
            set_as_current=False,
            fixups=(),
        )
        # A result dropped after the broker stopped must not retry for minutes.
        self.client.conf.result_backend_transport_options = {"retry_policy": {"max_retries": 0}}
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "testproject.celery_app",
            "worker",
            "--pool",
            "prefork",
            "--concurrency",
            str(WORKERS),
            "-Q",
            self.queue,
            "-n",
            f"{self.queue}@tests",
            "--without-heartbeat",
            "--without-gossip",
            "--without-mingle",
            "-l",
            "info",
        ]
        with log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_until_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the worker exited:\n{self.log()}"
            if self.client.control.ping(timeout=0.5, destination=[f"{self.queue}@tests"]):
                return
        raise AssertionError(f"no worker answered within {timeout} s:\n{self.log()}")

    def stop(self) -> None:
        """Warm shutdown of the main process (it ends its pool), then kill what is left."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                kill_group(self.proc.pid)
                self.proc.wait(5)
        kill_group(self.proc.pid)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


@pytest.fixture(scope="module")
def celery_worker(
    celery_logs: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PreforkWorker]:
    tmp = tmp_path_factory.mktemp("celery-prefork")
    env = {k: v for k, v in os.environ.items() if k not in CELERY_VARIABLES}
    with RedisServer() as broker:
        env.update(
            DJANGO_SETTINGS_MODULE="testproject.settings",
            DJANGO_DEBUG="0",
            REDIS_URL=celery_logs.url,
            CELERY_BROKER_URL=broker.url,
            CELERY_RESULT_BACKEND=broker.url,
            TESTPROJECT_DATA_DIR=str(tmp),
            TESTPROJECT_LOG_CONSOLE="0",
            PYTHONPATH=os.pathsep.join(
                [str(ROOT), str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        )
        worker = PreforkWorker(env, broker.url, tmp / "worker.log")
        try:
            worker.wait_until_ready()
            wait_for(lambda: len(children(worker.proc.pid)) >= WORKERS, timeout=15)
            yield worker
        finally:
            worker.stop()
            gc.collect()  # let results unsubscribe while the broker still runs
            worker.client.close()


def report_lines(reader: redis.Redis, key: str, result: AsyncResult) -> list[dict[str, Any]]:
    """export_report's records for ``result`` in stream ``key``, once the last is there."""
    found = [e for e in entries(reader, key) if e["message"].startswith(f"report {result.id}")]
    return found if found and found[-1]["message"].endswith("finished") else []


def test_every_celery_prefork_child_ships_the_records_of_the_tasks_it_ran(
    celery_worker: PreforkWorker, celery_logs: RedisServer
) -> None:
    reader = celery_logs.client(socket_timeout=5)
    main = celery_worker.proc.pid
    pool = children(main)
    started = time.monotonic()
    sent: list[tuple[AsyncResult, str | None]] = []
    ran_in: Counter[int] = Counter()
    for _round in range(5):  # until every child has run some (nearly always one round)
        for n in range(4 * WORKERS):  # half under a sender's context, half without
            sender = job_id_factory("sender") if n % 2 else None
            with log_context(sender) if sender else contextlib.nullcontext():
                result = celery_worker.client.send_task(
                    export_report.name, args=(3, 0.05), queue=celery_worker.queue
                )
            sent.append((result, sender))
        for result, sender in sent[-4 * WORKERS :]:
            context = sender or task_context(result.id)
            assert result.get(timeout=30) == {"rows": 3, "context": context}
            key = f"stream:logs:{context}"
            records = wait_for(lambda r=result, k=key: report_lines(reader, k, r))
            assert [r["message"].split(": ", 1)[1] for r in records] == [
                "export of 3 rows started",
                "progress  33% (1/3 rows)",
                "progress  66% (2/3 rows)",
                "progress 100% (3/3 rows)",
                "export of 3 rows finished",
            ]
            assert {r["context"] for r in records} == {context}
            assert len({r["pid"] for r in records}) == 1  # one task, one child
            ran_in[records[0]["pid"]] += 1
        if set(ran_in) >= pool:
            break
    elapsed = time.monotonic() - started
    assert set(ran_in) == pool == children(main), (ran_in, pool, celery_worker.log())
    assert main not in ran_in
    everything = entries(reader, GLOBAL)
    assert not duplicates(everything)
    # The main process logs each task's arrival once, as itself, under no context.
    for result, _sender in sent:
        received = [r for r in everything if r["message"].endswith(f"[{result.id}] received")]
        assert [(r["pid"], r["context"]) for r in received] == [(main, None)], received
    reports = sum(1 for r in everything if r["message"].startswith("report "))
    assert reports == 5 * len(sent)
    from_main = sum(1 for r in everything if r["pid"] == main)
    print(
        f"FIGURE celery_prefork_children={WORKERS} tasks={len(sent)} report_records={reports} "
        f"pids={len(ran_in)} per_child={sorted(ran_in.values())} main_records={from_main} "
        f"duplicates=0 seconds={elapsed:.2f}"
    )
