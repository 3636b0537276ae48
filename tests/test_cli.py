"""``redis-logstream tail``: the same reader with a URL and no Django project."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis

from redis_logstream import cli
from redis_logstream.cli import tail
from redis_logstream.naming import Names
from redis_logstream.reading import reader
from redis_logstream.reading.reader import StreamReader
from redis_logstream.redis.topology import SCHEMES
from support.helpers import wait_for
from support.servers import free_port
from support.streamlog import REPO, CountingClient, Writer, fill

ALICE = "User.alice"


@pytest.fixture
def write(handlers, redis_url: str) -> Writer:
    return Writer(handlers(url=redis_url))


def no_django_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"DJANGO_SETTINGS_MODULE", "REDIS_URL"}}
    env["PYTHONPATH"] = str(REPO / "src")
    return env


def test_console_script_reads_a_url_without_a_django_project(
    write: Writer, redis_url: str, tmp_path: Path
) -> None:
    for i in range(3):
        write(f"m{i}", ALICE, flush=False)
    write.flush()
    script = Path(sys.executable).with_name("redis-logstream")
    assert script.exists(), "run `pip install -e .` to install the console script"
    # The module way too, proving Django is never imported along the path.
    check = (
        "import sys; from redis_logstream.cli import main; "
        f"status = main(['tail', '--url', {redis_url!r}, {ALICE!r}, '-n', '1']); "
        "assert 'django' not in sys.modules, 'django imported'; sys.exit(status)"
    )
    procs = [
        subprocess.Popen(
            command,
            cwd=tmp_path,
            env=no_django_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for command in (
            [str(script), "tail", "--url", redis_url, ALICE, "-n", "2"],
            [sys.executable, "-c", check],
        )
    ]
    results = [(proc.wait(30), *proc.communicate()) for proc in procs]
    (status, out, err), (check_status, check_out, check_err) = results
    assert (status, err) == (0, "")
    assert [line.rsplit(": ", 1)[1] for line in out.splitlines()] == ["m1", "m2"]
    assert (check_status, check_err) == (0, "")
    assert check_out.rstrip().endswith("app: m2")


def test_tail_shares_filters_and_json_with_tail_logs(
    write: Writer, redis_url: str, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    write("info", ALICE, logger="shop")
    write("error", ALICE, logger="shop.views", level=logging.ERROR)

    assert cli.main(["tail", "--url", redis_url, ALICE, "--level", "ERROR", "--json"]) == 0
    stored = redis_client.xrange(f"stream:logs:{ALICE}")
    assert capsys.readouterr().out == stored[1][1][b"data"].decode() + "\n"

    assert cli.main(["tail", "--url", redis_url, "--global", "--logger", "shop", "-n", "1"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("ERROR    User.alice shop.views: error")


def test_naming_options_find_streams_under_other_names(
    handlers, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    write = Writer(handlers(url=redis_url, channel_prefix="app", stream_prefix="s:"))
    write("renamed", ALICE)

    args = ["tail", "--url", redis_url, ALICE, "--channel-prefix", "app", "--stream-prefix", "s:"]
    assert cli.main(args) == 0
    assert capsys.readouterr().out.rstrip().endswith("app: renamed")


def test_url_defaults_to_redis_url_from_the_environment(
    write: Writer,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write("from env", ALICE)
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert cli.main(["tail", ALICE, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["message"] == "from env"


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["tail", ALICE], 2, "give --url redis://HOST:PORT/DB (or set REDIS_URL)"),
        (["tail", "--url", "redis://127.0.0.1:1/0"], 2, "give a CONTEXT to read, or --global"),
        (["tail", "--url", "http://x", ALICE], 2, "starts with " + ", ".join(SCHEMES)),
        (["tail", "--url", "DEAD", ALICE], 1, "cannot reach Redis at 127.0.0.1:"),
    ],
)
def test_failures_are_one_line_and_an_exit_status(
    args: list[str],
    status: int,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    args = [f"redis://127.0.0.1:{free_port()}/0" if arg == "DEAD" else arg for arg in args]
    assert cli.main(args) == status
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("redis-logstream tail: error: ")
    assert message in captured.err
    assert captured.err.count("\n") == 1


def test_ctrl_c_ends_the_cli_with_status_0(monkeypatch: pytest.MonkeyPatch, redis_url: str) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(tail, "tail", interrupted)
    assert cli.main(["tail", "--url", redis_url, ALICE, "-f"]) == 0


def test_help_has_subcommands_and_a_man_page_for_tail(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["--help"])
    assert exited.value.code == 0
    assert "tail" in capsys.readouterr().out

    with pytest.raises(SystemExit) as exited:
        cli.main(["tail", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    assert "\nEXAMPLES\n" in text and "\nEXIT STATUS\n" in text
    assert "      redis-logstream tail User.alice -f\n" in text
    assert "$REDIS_URL)" in text

    with pytest.raises(SystemExit) as exited:
        cli.main([])
    assert exited.value.code == 2


def test_docs_show_the_examples_of_every_help(capsys: pytest.CaptureFixture[str]) -> None:
    from redis_logstream.management.commands import purge_log_context, tail_logs

    with pytest.raises(SystemExit):
        cli.main(["tail", "--help"])
    helps = [
        capsys.readouterr().out,
        tail_logs.Command().create_parser("manage.py", "tail_logs").format_help(),
        purge_log_context.Command().create_parser("manage.py", "purge_log_context").format_help(),
    ]
    examples = [
        line.strip()
        for text in helps
        for line in text.split("\nEXAMPLES\n")[1].splitlines()
        if line.startswith(" " * 6)
    ]
    assert len(examples) == 8 + 5 + 4  # tail (with its URL examples), tail_logs, purge
    docs = (REPO / "docs" / "cli.md").read_text()
    assert [example for example in examples if example not in docs] == []


def test_an_unknown_url_scheme_names_every_scheme_accepted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli.main(["tail", "--url", "http://x", "--global"]) == 2
    err = capsys.readouterr().err
    assert [scheme for scheme in SCHEMES if scheme not in err] == []
    assert "redis+cluster://" in err and "redis+sentinel://" in err and "(not http://)" in err


# -- long histories: printed as they are read, a page at a time ------------------------


class FirstWrite(io.StringIO):
    """Notes how many reads the client had made when the first line was printed."""

    def __init__(self, client: CountingClient) -> None:
        super().__init__()
        self.client = client
        self.reads_at_first_write: int | None = None

    def write(self, text: str) -> int:
        if self.reads_at_first_write is None:
            self.reads_at_first_write = len(self.client.reads)
        return super().write(text)


@pytest.fixture
def counted(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> CountingClient:
    monkeypatch.setattr(reader, "PAGE", 100)  # a page far smaller than the stream
    return CountingClient(redis.Redis.from_url(redis_url, socket_timeout=5))


def test_tail_all_prints_a_long_stream_as_it_reads_it_a_page_at_a_time(
    counted: CountingClient,
) -> None:
    total = 20_000
    fill(counted.client, "stream:logs:global", total)
    out, err = FirstWrite(counted), io.StringIO()

    tail.tail(StreamReader(counted, Names()), tail.TailRequest(None, count=None), out, err)

    lines = out.getvalue().splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == [f"m{i}" for i in range(total)]
    assert out.reads_at_first_write is not None and out.reads_at_first_write <= 2
    assert max(count or 0 for _, count in counted.reads) <= 100
    assert err.getvalue() == ""


def test_tail_n_larger_than_a_page_never_asks_for_more_than_a_page(
    counted: CountingClient,
) -> None:
    fill(counted.client, "stream:logs:global", 5_000)
    out = FirstWrite(counted)

    request = tail.TailRequest(None, count=3_000)
    tail.tail(StreamReader(counted, Names()), request, out, io.StringIO())

    lines = out.getvalue().splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == [f"m{i}" for i in range(2_000, 5_000)]
    assert max(count or 0 for _, count in counted.reads) <= 100
    assert out.reads_at_first_write is not None and out.reads_at_first_write < len(counted.reads)


def test_tail_all_then_follow_has_no_gap_or_duplicate(counted: CountingClient) -> None:
    fill(counted.client, "stream:logs:global", 5_000)
    out, stop = io.StringIO(), threading.Event()
    request = tail.TailRequest(None, count=None, follow=True)
    follower = threading.Thread(
        target=tail.tail,
        args=(StreamReader(counted, Names(), block_ms=50), request, out, io.StringIO()),
        kwargs={"stop": stop},
    )
    follower.start()
    try:
        fill(counted.client, "stream:logs:global", 1_000, first=5_000)  # while or after reading
        wait_for(lambda: out.getvalue().endswith("m5999\n"))
    finally:
        stop.set()
        follower.join(10)
    lines = out.getvalue().splitlines()
    assert [line.rsplit(" ", 1)[1] for line in lines] == [f"m{i}" for i in range(6_000)]


# -- saying that there is nothing to show ------------------------------------------------


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--global"], "stream:logs:global is empty"),
        ([ALICE], f"stream:logs:{ALICE} is empty"),
        ([ALICE, "-n", "all"], f"stream:logs:{ALICE} is empty"),
        ([ALICE, "--level", "ERROR"], f"no records of stream:logs:{ALICE} match --level"),
        (
            ["--global", "--since", "1m", "--logger", "shop"],
            "no records of stream:logs:global match --since, --logger",
        ),
    ],
)
def test_an_empty_history_is_said_on_stderr(
    args: list[str], said: str, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["tail", "--url", redis_url, *args]) == 0
    assert capsys.readouterr() == ("", said + "\n")


def test_an_empty_history_followed_says_it_waits(write: Writer, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_timeout=5)
    out, err, stop = io.StringIO(), io.StringIO(), threading.Event()
    request = tail.TailRequest(None, follow=True)
    follower = threading.Thread(
        target=tail.tail,
        args=(StreamReader(client, Names(), block_ms=50), request, out, err),
        kwargs={"stop": stop},
    )
    follower.start()
    try:
        wait_for(err.getvalue)
        write("first")
        wait_for(lambda: out.getvalue().endswith("app: first\n"))
    finally:
        stop.set()
        follower.join(10)
    assert err.getvalue() == ("stream:logs:global is empty; waiting for records (Ctrl-C to stop)\n")


def test_nothing_is_said_when_no_history_was_asked_for_or_some_was_printed(
    write: Writer, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["tail", "--url", redis_url, "--global", "-n", "0"]) == 0
    assert capsys.readouterr() == ("", "")
    write("one")
    assert cli.main(["tail", "--url", redis_url, "--global"]) == 0
    assert capsys.readouterr().err == ""
