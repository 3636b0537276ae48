"""Celery: the sender's log context travels with the task and is set while it runs.

Three layers: the receivers called in-process (eager tasks, and messages
published to an in-memory broker and executed the way a worker executes
them, for both message protocols); then the real thing, one
``celery worker`` process for the module on a Redis broker the module
starts, whose records the testproject's LOGGING handler writes to the
session's Redis.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery, signals
from celery.exceptions import TimeoutError as CeleryTimeoutError
from celery.result import AsyncResult
from celery.worker.request import Request
from celery.worker.strategy import proto1_to_proto2
from django.apps import apps

from redis_logstream import get_log_context, log_context
from redis_logstream.celery import (
    CONTEXT_HEADER,
    install_if_available,
    is_installed,
    task_context,
    uninstall,
)
from redis_logstream.context import validate_context
from support.helpers import entries, wait_for
from support.servers import RedisServer
from testproject.tasks import export_report

ROOT = Path(__file__).resolve().parent.parent
# Celery reads these itself and lets them win over any app's own settings:
# left over from a shell, they would send the tests' messages elsewhere.
CELERY_VARIABLES = (
    "CELERY_BROKER_URL",
    "CELERY_BROKER_READ_URL",
    "CELERY_BROKER_WRITE_URL",
    "CELERY_RESULT_BACKEND",
)
START_TIMEOUT = 30.0
RESULT_TIMEOUT = 30.0


def our_receivers(sig: Any) -> int:
    return sum(1 for (key, _sender), _receiver in sig.receivers if key == "redis_logstream.celery")


@pytest.fixture(autouse=True)
def _installed() -> Iterator[None]:
    """Every test starts and ends with the integration installed, as the app leaves it."""
    install_if_available()
    yield
    install_if_available()


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    """A Celery app on an in-memory broker, with a task that records its context."""
    for name in CELERY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    app = Celery("redis-logstream-unit", broker="memory://", set_as_current=False, fixups=())
    app.conf.task_eager_propagates = True
    app.seen = []  # type: ignore[attr-defined]

    @app.task(name="tests.record", bind=True, shared=False)
    def record(self: Any, fail: bool = False, inner: bool = False) -> str | None:
        app.seen.append(get_log_context())  # type: ignore[attr-defined]
        if inner:
            self.apply()
        if fail:
            raise RuntimeError("the task failed")
        return get_log_context()

    yield app
    app.close()


# -- task_context --------------------------------------------------------------


def test_task_context_is_task_and_the_32_hex_digits_of_a_uuid_id() -> None:
    task_id = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    assert task_context(task_id) == "task_1b4e28ba2fa111d2883f0016d3cca427"
    assert validate_context(task_context(task_id))


def test_task_context_keeps_a_custom_id_and_hashes_one_too_long_to_fit() -> None:
    assert task_context("nightly report #7") == "task_nightly report #7"
    long_id = "x" * 200
    hashed = task_context(long_id)
    assert hashed.startswith("task_") and len(hashed) == 37
    assert hashed == task_context(long_id) != task_context("y" * 200)


@pytest.mark.parametrize("bad", ["", None, 42])
def test_task_context_refuses_what_is_not_a_task_id(bad: Any) -> None:
    with pytest.raises(ValueError):
        task_context(bad)


# -- installation and opt-out -------------------------------------------------------


def test_the_django_app_installs_one_receiver_per_signal_and_again_is_a_no_op() -> None:
    assert is_installed()
    assert install_if_available() is True
    apps.get_app_config("redis_logstream").ready()
    for sig in (signals.before_task_publish, signals.task_prerun, signals.task_postrun):
        assert our_receivers(sig) == 1


def test_install_returns_false_without_celery(monkeypatch: pytest.MonkeyPatch) -> None:
    uninstall()
    monkeypatch.setitem(sys.modules, "celery", None)
    assert install_if_available() is False
    assert not is_installed()


def test_opting_out_in_settings_installs_nothing_and_adds_no_header(settings) -> None:
    uninstall()
    settings.REDIS_LOGSTREAM = {**settings.REDIS_LOGSTREAM, "CELERY": False}
    apps.get_app_config("redis_logstream").ready()
    assert not is_installed()
    assert our_receivers(signals.before_task_publish) == 0
    headers: dict[str, Any] = {}
    with log_context("User.alice"):
        signals.before_task_publish.send(sender="tests.record", body=(), headers=headers)
    assert headers == {}


# -- through a broker, executed as a worker does ----------------------------------------------


def publish(app: Celery, **options: Any) -> Any:
    """Send tests.record to a fresh in-memory queue; the message as a worker gets it."""
    queue = f"q-{uuid.uuid4().hex}"
    result = app.send_task("tests.record", queue=queue, **options)
    with app.connection_for_read() as connection:
        message = connection.SimpleQueue(queue).get(timeout=5)
    assert (message.headers.get("id") or message.payload["id"]) == result.id
    return message


def execute(app: Celery, message: Any) -> None:
    """What the worker's default strategy and a solo pool do with a message."""
    task = app.tasks["tests.record"]
    if "task" in message.headers:  # protocol 2
        Request(message, app=app, task=task).execute()
    else:
        body, headers, decoded, utc = proto1_to_proto2(message, message.decode())
        Request(
            message, app=app, task=task, body=body, headers=headers, decoded=decoded, utc=utc
        ).execute()


@pytest.mark.parametrize("protocol", [1, 2])
def test_a_published_task_runs_under_the_senders_context(app: Celery, protocol: int) -> None:
    app.conf.task_protocol = protocol
    with log_context("User.alice"):
        message = publish(app)
    assert message.headers[CONTEXT_HEADER] == "User.alice"
    execute(app, message)
    assert app.seen == ["User.alice"]
    assert get_log_context() is None


@pytest.mark.parametrize("protocol", [1, 2])
def test_a_task_published_without_context_runs_under_its_task_context(
    app: Celery, protocol: int
) -> None:
    app.conf.task_protocol = protocol
    message = publish(app, task_id="0a4c9e2e-7c1e-4a7b-9a43-2f0a4b1b6d5e")
    assert CONTEXT_HEADER not in message.headers
    execute(app, message)
    assert app.seen == ["task_0a4c9e2e7c1e4a7b9a432f0a4b1b6d5e"]
    assert get_log_context() is None


def test_a_header_the_sender_set_itself_wins(app: Celery) -> None:
    with log_context("User.alice"):
        message = publish(app, headers={CONTEXT_HEADER: "job_nightly"})
    assert message.headers[CONTEXT_HEADER] == "job_nightly"
    execute(app, message)
    assert app.seen == ["job_nightly"]


def test_an_invalid_header_falls_back_to_the_task_context_with_a_warning(
    app: Celery, caplog: pytest.LogCaptureFixture
) -> None:
    message = publish(app, task_id="report-7", headers={CONTEXT_HEADER: "global"})
    execute(app, message)
    assert app.seen == ["task_report-7"]
    assert "ignoring its redis_logstream_context header: 'global' is reserved" in caplog.text


# -- eager tasks ------------------------------------------------------------------------------


def test_an_eager_task_keeps_its_callers_context(app: Celery) -> None:
    app.conf.task_always_eager = True
    with log_context("User.alice"):
        assert app.tasks["tests.record"].delay().get() == "User.alice"
        assert get_log_context() == "User.alice"
    assert get_log_context() is None


def test_an_eager_task_without_context_runs_under_its_task_context(app: Celery) -> None:
    result = app.tasks["tests.record"].apply()
    assert result.get() == task_context(result.id)
    assert get_log_context() is None


def test_an_eager_task_honours_a_header_given_to_apply(app: Celery) -> None:
    with log_context("User.alice"):
        result = app.tasks["tests.record"].apply(headers={CONTEXT_HEADER: "job_x"})
        assert result.get() == "job_x"
        assert get_log_context() == "User.alice"


def test_a_nested_eager_task_inherits_the_outer_tasks_context(app: Celery) -> None:
    outer = app.tasks["tests.record"].apply(kwargs={"inner": True})
    assert app.seen == [task_context(outer.id)] * 2
    assert get_log_context() is None


def test_a_failing_eager_task_resets_the_context(app: Celery) -> None:
    record = app.tasks["tests.record"]
    with pytest.raises(RuntimeError):
        record.apply(kwargs={"fail": True})
    assert get_log_context() is None
    with log_context("User.alice"):
        assert record.apply(kwargs={"fail": True}, throw=False).failed()
        assert get_log_context() == "User.alice"
    assert len(app.seen) == 2


# -- a real worker ------------------------------------------------------------------------


class Worker:
    """A ``celery worker`` process (solo pool) and a client app to send it tasks."""

    def __init__(self, log_path: Path, queue: str, client: Celery) -> None:
        self.log_path = log_path
        self.queue = queue
        self.client = client
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, env: dict[str, str]) -> None:
        command = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            "testproject.celery_app",
            "worker",
            "--pool=solo",
            "--concurrency=1",
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
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"the worker exited:\n{self.log()}"
            if self.client.control.ping(timeout=0.5, limit=1):
                return
        raise AssertionError(f"no worker answered within {START_TIMEOUT} s:\n{self.log()}")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def export(self, rows: int) -> AsyncResult:
        """Send export_report the way a view would (in the caller's log context)."""
        return self.client.send_task(export_report.name, args=(rows, 0.0), queue=self.queue)

    def outcome(self, result: AsyncResult) -> Any:
        """The task's return value, or its exception; the worker's log if it never ends."""
        try:
            return result.get(timeout=RESULT_TIMEOUT, propagate=False)
        except CeleryTimeoutError:
            raise AssertionError(f"no result within {RESULT_TIMEOUT} s:\n{self.log()}") from None


@pytest.fixture(scope="module")
def worker(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """One worker for the module; its broker is a Redis of its own (no FLUSHALL between
    tests), its log records go to the session's Redis, as the site's do."""
    tmp = tmp_path_factory.mktemp("celery")
    with RedisServer() as broker, pytest.MonkeyPatch.context() as patch:
        for name in CELERY_VARIABLES:
            patch.delenv(name, raising=False)
        client = Celery(
            "redis-logstream-tests",
            broker=broker.url,
            backend=broker.url,
            set_as_current=False,
            fixups=(),
        )
        # A result dropped after the broker stopped must not retry for minutes
        # (AsyncResult.__del__ reconnects to unsubscribe).
        client.conf.result_backend_transport_options = {"retry_policy": {"max_retries": 0}}
        env = {k: v for k, v in os.environ.items() if k not in CELERY_VARIABLES}
        env.update(
            DJANGO_SETTINGS_MODULE="testproject.settings",
            DJANGO_DEBUG="0",
            REDIS_URL=redis_server.url,
            CELERY_BROKER_URL=broker.url,
            CELERY_RESULT_BACKEND=broker.url,
            TESTPROJECT_DATA_DIR=str(tmp),
            PYTHONPATH=os.pathsep.join(
                [str(ROOT), str(ROOT / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
            ),
        )
        started = Worker(tmp / "worker.log", f"redis-logstream-{uuid.uuid4().hex[:8]}", client)
        try:
            started.start(env)
            yield started
        finally:
            started.stop()
            gc.collect()  # let the tests' results unsubscribe while the broker still runs
            client.close()


def task_records(client: redis.Redis, key: str, result: AsyncResult) -> list[dict[str, Any]]:
    """The records ``export_report`` logged under ``key``, once its last one is there."""

    def arrived() -> list[dict[str, Any]]:
        found = [e for e in entries(client, key) if e["message"].startswith(f"report {result.id}")]
        return found if found and found[-1]["message"].endswith("finished") else []

    return wait_for(arrived)


def test_a_task_sent_under_a_user_context_logs_to_that_users_stream(
    worker: Worker, redis_client: redis.Redis
) -> None:
    view_log = logging.getLogger("testproject.views")
    with log_context("User.alice"):
        view_log.info("alice asked for a report")
        result = worker.export(3)
    assert worker.outcome(result) == {"rows": 3, "context": "User.alice"}
    records = task_records(redis_client, "stream:logs:User.alice", result)
    assert [r["message"].split(": ", 1)[1] for r in records] == [
        "export of 3 rows started",
        "progress  33% (1/3 rows)",
        "progress  66% (2/3 rows)",
        "progress 100% (3/3 rows)",
        "export of 3 rows finished",
    ]
    assert {(r["context"], r["pid"], r["logger"]) for r in records} == {
        ("User.alice", worker.pid, "testproject.tasks")
    }
    from_the_view = wait_for(
        lambda: [
            e for e in entries(redis_client, "stream:logs:User.alice") if e["pid"] != worker.pid
        ]
    )
    assert [e["message"] for e in from_the_view] == ["alice asked for a report"]


def test_a_task_sent_without_context_logs_to_its_task_context_stream(
    worker: Worker, redis_client: redis.Redis
) -> None:
    result = worker.export(1)
    expected = task_context(result.id)
    assert worker.outcome(result) == {"rows": 1, "context": expected}
    records = task_records(redis_client, f"stream:logs:{expected}", result)
    assert len(records) == 3 and {r["context"] for r in records} == {expected}


def test_the_worker_resets_the_context_after_each_task_even_a_failed_one(
    worker: Worker, redis_client: redis.Redis
) -> None:
    with log_context("User.alice"):
        succeeded = worker.export(1)
        failed = worker.export(-1)
    later = worker.export(1)
    assert worker.outcome(succeeded)["context"] == "User.alice"
    assert isinstance(worker.outcome(failed), ValueError)
    assert worker.outcome(later) == {"rows": 1, "context": task_context(later.id)}
    task_records(redis_client, f"stream:logs:{task_context(later.id)}", later)
    # The worker logs "Task ...[id] received" before the task's context is set:
    # a context left over from the previous task would show there.
    for result in (failed, later):
        received = wait_for(
            lambda r=result: [
                e
                for e in entries(redis_client, "stream:logs:global")
                if e["message"].endswith(f"[{r.id}] received")
            ]
        )
        assert received[0]["context"] is None
    alice = entries(redis_client, "stream:logs:User.alice")
    assert not [e for e in alice if later.id in e["message"]]
    # The failure itself is reported in the sender's stream, with its traceback.
    assert [e["level"] for e in alice if f"[{failed.id}] raised" in e["message"]] == ["ERROR"]
