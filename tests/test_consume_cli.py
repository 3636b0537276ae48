"""``redis-logstream consume`` and ``manage.py consume_logs`` as real processes:
exit statuses, SIGTERM, kill -9 mid-batch, the TOML file, usage errors."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from redis_logstream import log_context
from support.helpers import fresh_logger, wait_for
from support.streamlog import manage

TESTS = Path(__file__).resolve().parent
CONSUME = [sys.executable, "-m", "redis_logstream.cli", "consume"]


@pytest.fixture
def context() -> str:
    return f"job_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def log(handlers, redis_url, context):
    handler = handlers(url=redis_url, stream_maxlen=100_000)
    logger = fresh_logger(handler)

    def write(*messages: str, level: int = logging.INFO) -> None:
        with log_context(context):
            for message in messages:
                logger.log(level, "%s", message)
        assert handler.flush(10)

    return write


def python_path() -> str:
    """The tests' directory first, so that ``support.consume_callbacks`` imports."""
    return os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])


def numbered(count: int, start: int = 0) -> list[str]:
    return [f"record {i}" for i in range(start, start + count)]


class ConsumerProcess:
    """``redis-logstream consume`` in a process of its own, its output in $CONSUMED."""

    def __init__(self, tmp_path: Path, redis_url: str, *args: str) -> None:
        self.out = tmp_path / "consumed.txt"
        env = {**os.environ, "CONSUMED": str(self.out), "PYTHONPATH": python_path()}
        self.proc = subprocess.Popen(
            [*CONSUME, "--url", redis_url, *args],
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

    def handled(self) -> list[str]:
        if not self.out.exists():
            return []
        return [line.split(" ", 2)[2] for line in self.out.read_text().splitlines()]

    def wait(self, timeout: float = 15) -> tuple[int, str]:
        _out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, err


def wait_for_group(redis_client, context: str, group: str) -> None:
    stream = f"stream:logs:{context}"
    wait_for(
        lambda: (
            redis_client.exists(stream)
            and any(g["name"] == group.encode() for g in redis_client.xinfo_groups(stream))
        ),
        timeout=15,
    )


def pending(redis_client, context: str, group: str) -> int:
    return redis_client.xpending(f"stream:logs:{context}", group)["pending"]


def test_sigterm_finishes_the_record_in_hand_and_exits_0_with_nothing_lost(
    tmp_path, redis_url, redis_client, log, context
):
    args = (
        context,
        "--group",
        "g",
        "--consumer",
        "c1",
        "--callback",
        "support.consume_callbacks:slowly",
        "--batch",
        "50",
    )
    first = ConsumerProcess(tmp_path, redis_url, *args)
    wait_for_group(redis_client, context, "g")
    log(*numbered(300))
    wait_for(lambda: len(first.handled()) >= 30, timeout=15)
    first.proc.send_signal(signal.SIGTERM)
    status, err = first.wait()
    assert status == 0, err
    handled_first = first.handled()
    assert 30 <= len(handled_first) < 300
    # What it read and did not reach stays pending; the same consumer, restarted, takes it.
    second = ConsumerProcess(tmp_path, redis_url, *args)
    wait_for(lambda: len(second.handled()) >= 300, timeout=20)
    second.proc.send_signal(signal.SIGTERM)
    assert second.wait()[0] == 0
    assert second.handled() == numbered(300)  # once each, in order: nothing lost, none twice
    assert pending(redis_client, context, "g") == 0


def test_a_consumer_killed_mid_batch_leaves_its_records_to_another(
    tmp_path, redis_url, redis_client, log, context
):
    killed = ConsumerProcess(
        tmp_path,
        redis_url,
        context,
        "--group",
        "g",
        "--consumer",
        "doomed",
        "--callback",
        "support.consume_callbacks:slowly",
        "--batch",
        "50",
    )
    wait_for_group(redis_client, context, "g")
    log(*numbered(200))
    wait_for(lambda: len(killed.handled()) >= 20, timeout=15)
    killed.proc.kill()
    killed.wait()
    before = killed.handled()
    assert 20 <= len(before) < 200 and pending(redis_client, context, "g") > 0
    heir = ConsumerProcess(
        tmp_path,
        redis_url,
        context,
        "--group",
        "g",
        "--consumer",
        "heir",
        "--callback",
        "support.consume_callbacks:record",
        "--claim-after",
        "0.5",
    )
    wait_for(lambda: set(heir.handled()) >= set(numbered(200)), timeout=20)
    heir.proc.send_signal(signal.SIGTERM)
    assert heir.wait()[0] == 0
    after = heir.handled()[len(before) :]
    twice = set(before) & set(after)
    assert sorted(set(before) | set(after)) == sorted(numbered(200))
    assert len(twice) <= 50, "only the unacknowledged batch may be handled twice"
    assert pending(redis_client, context, "g") == 0


@pytest.mark.parametrize(("stop", "status"), [("stop 0", 0), ("stop 3", 3)])
def test_halt_consumer_sets_the_exit_status(
    tmp_path, redis_url, redis_client, log, context, stop, status
):
    proc = ConsumerProcess(
        tmp_path,
        redis_url,
        context,
        "--group",
        "g",
        "--callback",
        "support.consume_callbacks:halt_on_stop",
    )
    wait_for_group(redis_client, context, "g")
    log("one", stop, "never")
    assert proc.wait()[0] == status
    assert proc.handled() == ["one"]
    # "stop" acknowledged (ack=True); "never", read in the same batch, waits for the next run
    [row] = redis_client.xpending_range(f"stream:logs:{context}", "g", "-", "+", 10)
    [(_, fields)] = redis_client.xrange(
        f"stream:logs:{context}", row["message_id"], row["message_id"]
    )
    assert b'"message":"never"' in fields[b"data"]


def test_an_unexpected_exception_exits_1_with_the_record_pending(
    tmp_path, redis_url, redis_client, log, context
):
    proc = ConsumerProcess(
        tmp_path,
        redis_url,
        context,
        "--group",
        "g",
        "--callback",
        "support.consume_callbacks:crash_on_boom",
    )
    wait_for_group(redis_client, context, "g")
    log("fine", "boom")
    status, err = proc.wait()
    assert status == 1
    assert "RuntimeError: cannot handle 'boom'" in err and "Traceback" in err
    assert proc.handled() == ["fine"]
    [row] = redis_client.xpending_range(f"stream:logs:{context}", "g", "-", "+", 10)
    assert redis_client.xrange(f"stream:logs:{context}", row["message_id"], row["message_id"])


def test_a_toml_file_configures_the_consumer_and_its_class_callback(
    tmp_path, redis_url, redis_client, log, context
):
    out = tmp_path / "recorded.txt"
    config = tmp_path / "alerts.toml"
    config.write_text(
        f'callback = "support.consume_callbacks:Recorder"\ngroup = "alerts"\n'
        f'contexts = ["{context}"]\n'
        f'level = "WARNING"\n\n[consumer_config]\npath = "{out}"\nprefix = "#"\n'
    )
    proc = ConsumerProcess(tmp_path, redis_url, "--config", str(config))
    wait_for_group(redis_client, context, "alerts")
    log("skipped: below the level")
    log("a warning", level=logging.WARNING)
    log("enough", level=logging.ERROR)
    assert proc.wait()[0] == 0
    assert out.read_text().splitlines() == ["#1 a warning", "#1 enough"]


@pytest.mark.parametrize(
    ("args", "config", "message"),
    [
        (["job_1", "--callback", "support.consume_callbacks:record"], None, "give --group"),
        (
            ["--group", "g", "--callback", "support.consume_callbacks:record"],
            None,
            "give a CONTEXT to read, --global, or both",
        ),
        (
            ["job_1", "--group", "g", "--callback", "support.consume_callbacks"],
            None,
            "give it as package.module:name",
        ),
        (["job_1", "--group", "g", "--callback", "no_such_module:f"], None, "cannot import"),
        (
            ["job_1", "--group", "g", "--callback", "support.consume_callbacks:nope"],
            None,
            "has no nope",
        ),
        (["--config"], 'grup = "g"\n', "unknown setting 'grup'"),
        (["--config"], "batch = true\n", "batch has the wrong type"),
        (["--config"], 'max_deliveries = "5"\n', "max_deliveries has the wrong type"),
        (
            [
                "job_1",
                "--group",
                "g",
                "--callback",
                "support.consume_callbacks:record",
                "--max-deliveries",
                "3",
                "--max-retries",
                "2",
            ],
            None,
            "give --max-deliveries or --max-retries, not both",
        ),
        (
            [
                "job_1",
                "--group",
                "g",
                "--callback",
                "support.consume_callbacks:record",
                "--max-deliveries",
                "0",
            ],
            None,
            "max_deliveries must be an int >= 1",
        ),
        (["--config"], "group = [\n", "is not valid TOML"),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path, redis_url, args, config, message):
    if config is not None:
        path = tmp_path / "bad.toml"
        path.write_text(config)
        args = [*args, str(path)]
    proc = ConsumerProcess(tmp_path, redis_url, *args)
    status, err = proc.wait()
    assert status == 2
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_help_reads_like_a_man_page() -> None:
    from django.core.management import load_command_class

    out = subprocess.run([*CONSUME, "--help"], capture_output=True, text=True, check=True).stdout
    site = (
        load_command_class("redis_logstream", "consume_logs")
        .create_parser("manage.py", "consume_logs")
        .format_help()
    )
    for text in (" ".join(out.split()), " ".join(site.split())):
        assert "--max-deliveries N" in text and "dead-letter stream with the last error" in text
    for section in (
        "CONFIGURATION FILE",
        "EXIT STATUS",
        "EXAMPLES",
        "--from-start",
        "[consumer_config]",
        "HaltConsumer",
    ):
        assert section in out


def test_manage_py_consume_logs_reads_the_sites_redis(
    tmp_path, redis_url, redis_client, log, context, monkeypatch
):
    monkeypatch.setenv("CONSUMED", str(tmp_path / "out.txt"))
    monkeypatch.setenv("PYTHONPATH", python_path())
    proc = manage(
        "consume_logs",
        context,
        "--group",
        "site",
        "--callback",
        "support.consume_callbacks:halt_on_stop",
        redis_url=redis_url,
    )
    wait_for_group(redis_client, context, "site")
    log("via manage.py", "stop 5")
    _out, err = proc.communicate(timeout=20)
    assert proc.returncode == 5, err
    assert (tmp_path / "out.txt").read_text().split(" ", 2)[2] == "via manage.py\n"


def test_the_systemd_unit_template_ships_with_the_package() -> None:
    from importlib import resources

    unit = resources.files("redis_logstream").joinpath("systemd/redis-logstream-consumer@.service")
    text = unit.read_text()
    assert "ExecStart=" in text and "consume --config /etc/redis-logstream/%i.toml" in text
    assert "KillSignal=SIGTERM" in text and "Restart=on-failure" in text


def test_docs_show_the_examples_of_both_helps() -> None:
    from django.core.management import load_command_class

    helps = [
        subprocess.run([*CONSUME, "--help"], capture_output=True, text=True).stdout,
        load_command_class("redis_logstream", "consume_logs")
        .create_parser("manage.py", "consume_logs")
        .format_help(),
    ]
    examples = [
        line.strip()
        for text in helps
        for line in text.split("\nEXAMPLES\n")[1].splitlines()
        if line.startswith(" " * 6)
    ]
    assert len(examples) == 4 + 3
    docs = (TESTS.parent / "docs" / "cli.md").read_text()
    assert [example for example in examples if example not in docs] == []


def dead_letters(redis_client, group: str) -> list[dict[bytes, bytes]]:
    return [fields for _id, fields in redis_client.xrange(f"stream:logs/dead-letter/{group}")]


def restarted_like_systemd(start, settled, kill_when=None, starts: int = 7) -> list[int]:
    """Start a consumer, and again after each exit that is not 0
    (``Restart=on-failure``), until ``settled()``; then SIGTERM it.

    ``kill_when()`` true makes the test kill -9 the running consumer (an
    OOM kill, a segfault in a C extension) at once.  Returns the exit statuses.
    """
    statuses: list[int] = []
    for _ in range(starts):
        proc = start()

        def ended(proc: ConsumerProcess = proc) -> bool:
            return proc.proc.poll() is not None or settled() or bool(kill_when and kill_when())

        wait_for(ended, timeout=30)
        if proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGTERM if settled() else signal.SIGKILL)
        status, _err = proc.wait()
        statuses.append(status)
        if status == 0:
            return statuses
    return statuses


def test_a_poison_record_is_dead_lettered_after_max_deliveries_and_the_group_goes_on(
    tmp_path, redis_url, redis_client, log, context
):
    group = f"alerts-{uuid.uuid4().hex[:8]}"
    messages = numbered(100)
    messages[42] = "boom 42"
    log(*messages)
    args = (
        context,
        "--group",
        group,
        "--consumer",
        "host-alerts",
        "--from-start",
        "--callback",
        "support.consume_callbacks:crash_on_boom",
    )
    seen: list[ConsumerProcess] = []

    def start() -> ConsumerProcess:
        seen.append(ConsumerProcess(tmp_path, redis_url, *args))
        return seen[-1]

    def settled() -> bool:
        return (
            len(seen[-1].handled()) == 99
            and len(dead_letters(redis_client, group)) == 1
            and pending(redis_client, context, group) == 0
        )

    handed = tmp_path / "handed.txt"
    os.environ["HANDED"] = str(handed)
    try:
        began = time.monotonic()
        statuses = restarted_like_systemd(start, settled)
        took = time.monotonic() - began
    finally:
        del os.environ["HANDED"]
    # Deliveries 1-4 fail and stop the consumer (status 1, as before); the 5th
    # is the last: dead-lettered, and the same process goes on with the rest.
    assert statuses == [1, 1, 1, 1, 0]
    handled = seen[-1].handled()
    assert sorted(handled) == sorted(m for m in messages if m != "boom 42")  # each once
    [fields] = dead_letters(redis_client, group)
    assert b'"message":"boom 42"' in fields[b"data"]
    assert fields[b"attempts"] == b"5" and fields[b"group"] == group.encode()
    assert fields[b"reason"] == b"RuntimeError: cannot handle 'boom 42'"
    assert b"Traceback" in fields[b"error"] and b"crash_on_boom" in fields[b"error"]
    lines = handed.read_text().splitlines()
    assert [line for line in lines if "boom" in line] == [f"{n} boom 42" for n in range(1, 6)]
    # Read behind it by a consumer that stopped: not charged a delivery.
    assert {line.split()[0] for line in lines if "boom" not in line} == {"1"}
    assert pending(redis_client, context, group) == 0
    print(
        f"FIGURE poison record, Redis: {len(statuses)} starts (exit {statuses}), "
        f"{len(handled)} other records handled once each, {took:.1f} s in all"
    )
    redis_client.delete(f"stream:logs/dead-letter/{group}")


def test_a_consumer_killed_on_the_poison_record_counts_that_delivery(
    tmp_path, redis_url, redis_client, log, context
):
    group = f"kills-{uuid.uuid4().hex[:8]}"
    messages = numbered(10)
    messages[5] = "boom 5"
    log(*messages)
    handed = tmp_path / "handed.txt"
    config = tmp_path / "kills.toml"
    config.write_text(
        f'callback = "support.consume_callbacks:hang_on_boom"\ngroup = "{group}"\n'
        f'contexts = ["{context}"]\nfrom_start = true\nmax_deliveries = 3\n'
    )
    seen: list[ConsumerProcess] = []

    def start() -> ConsumerProcess:
        seen.append(
            ConsumerProcess(
                tmp_path, redis_url, "--config", str(config), "--consumer", "host-kills"
            )
        )
        return seen[-1]

    def hanging() -> bool:
        """The running consumer (each earlier one was killed on it) has the poison."""
        return handed.exists() and handed.read_text().count("boom") >= len(seen)

    def settled() -> bool:
        return (
            len(dead_letters(redis_client, group)) == 1
            and pending(redis_client, context, group) == 0
        )

    os.environ["HANDED"] = str(handed)
    try:
        statuses = restarted_like_systemd(start, settled, kill_when=hanging)
    finally:
        del os.environ["HANDED"]
    assert statuses == [-signal.SIGKILL] * 3 + [0]
    lines = handed.read_text().splitlines()
    assert [line for line in lines if "boom" in line] == ["1 boom 5", "2 boom 5", "3 boom 5"]
    [fields] = dead_letters(redis_client, group)
    assert fields[b"attempts"] == b"3" and b"never acknowledged" in fields[b"reason"]
    handled = seen[-1].handled()
    others = [m for m in messages if m != "boom 5"]
    assert set(handled) == set(others)
    # Handled before the first kill and not yet acknowledged: once more, then
    # acknowledged one by one; none is charged for the poison record's kills.
    assert all(1 <= handled.count(m) <= 2 for m in others)
    assert max(int(line.split()[0]) for line in lines if "boom" not in line) <= 2
    redis_client.delete(f"stream:logs/dead-letter/{group}")
