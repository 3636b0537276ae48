"""``redis-logstream tail``: the same reader with a URL and no Django project."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from redis_logstream import cli, tail
from streamlog import REPO, Writer

from servers import free_port

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
        (["tail", "--url", "http://x", ALICE], 2, "Redis URL must specify one of the following"),
        (["tail", "--url", "DEAD", ALICE], 1, "cannot reach Redis at 127.0.0.1:"),
    ],
)
def test_failures_are_one_line_and_an_exit_status(
    args: list[str], status: int, message: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.delenv("REDIS_URL", raising=False)
    args = [f"redis://127.0.0.1:{free_port()}/0" if arg == "DEAD" else arg for arg in args]
    assert cli.main(args) == status
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("redis-logstream tail: error: ")
    assert message in captured.err
    assert captured.err.count("\n") == 1


def test_ctrl_c_ends_the_cli_with_status_0(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
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
