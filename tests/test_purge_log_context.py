"""``manage.py purge_log_context``: what it deletes, what it says, how it refuses.

Exit statuses are checked through the command's real argv path
(``run_from_argv``: parse, run, CommandError -> one stderr line + exit).
"""

from __future__ import annotations

import io

import pytest
import redis
from django.core.management import call_command

from redis_logstream.management.commands.purge_log_context import Command
from redis_logstream.naming import Names
from redis_logstream.purge import all_streams, glob_escape
from streamlog import Writer

from servers import free_port

ALICE, BOB = "User.alice", "User.bob"


@pytest.fixture
def write(handlers, redis_url: str) -> Writer:
    return Writer(handlers(url=redis_url))


def purge(*args: str, **options: object) -> list[str]:
    out = io.StringIO()
    call_command("purge_log_context", *args, stdout=out, **options)
    return out.getvalue().splitlines()


def run_from_argv(*args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run like ``manage.py purge_log_context ARGS``: (exit status, stdout, stderr)."""
    with pytest.raises(SystemExit) as exited:
        Command().run_from_argv(["manage.py", "purge_log_context", *args])
        raise SystemExit(0)
    captured = capsys.readouterr()
    return exited.value.code, captured.out, captured.err


def test_deletes_named_streams_and_reports_their_entries(
    write: Writer, redis_client: redis.Redis
) -> None:
    for _ in range(3):
        write("a", ALICE, flush=False)
    for _ in range(2):
        write("b", BOB, flush=False)
    write.flush()

    assert purge(ALICE, BOB, "User.carol") == [
        "deleted stream:logs:User.alice (3 entries)",
        "deleted stream:logs:User.bob (2 entries)",
        "stream:logs:User.carol: no such stream",
        "deleted 2 streams, 5 entries in all",
    ]
    assert list(redis_client.scan_iter("stream:logs:User.*")) == []
    assert redis_client.xlen("stream:logs:global") == 5  # only with --global


def test_global_option_deletes_the_global_stream_too(
    write: Writer, redis_client: redis.Redis
) -> None:
    write("one", ALICE)
    assert purge(ALICE, "--global") == [
        "deleted stream:logs:User.alice (1 entry)",
        "deleted stream:logs:global (1 entry)",
        "deleted 2 streams, 2 entries in all",
    ]
    assert not redis_client.exists("stream:logs:global")


def test_contexts_are_named_as_the_handler_encodes_them(
    write: Writer, redis_client: redis.Redis
) -> None:
    write("x", "Dept A/B")
    assert purge("Dept A/B")[0] == "deleted stream:logs:Dept%20A%2FB (1 entry)"
    assert not redis_client.exists("stream:logs:Dept%20A%2FB")


def test_dry_run_deletes_nothing(write: Writer, redis_client: redis.Redis) -> None:
    write("keep me", ALICE)
    assert purge(ALICE, "--global", "--dry-run") == [
        "would delete stream:logs:User.alice (1 entry)",
        "would delete stream:logs:global (1 entry)",
        "would delete 2 streams, 2 entries in all",
    ]
    assert redis_client.xlen(f"stream:logs:{ALICE}") == 1
    assert redis_client.xlen("stream:logs:global") == 1


def test_all_without_yes_is_refused(
    write: Writer, redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    write("keep me", ALICE)
    status, out, err = run_from_argv("--all", capsys=capsys)
    assert status == 2
    assert out == ""
    assert err == "CommandError: --all deletes every log stream: add --yes to confirm\n"
    assert redis_client.xlen(f"stream:logs:{ALICE}") == 1


def test_all_with_yes_finds_streams_with_scan_never_keys(
    write: Writer, redis_client: redis.Redis
) -> None:
    for context in (ALICE, BOB, "job_1"):
        write("x", context)
    redis_client.set("stream:logs:not-a-stream", "v")
    redis_client.xadd("stream:other:thing", {"data": "{}"})
    redis_client.config_resetstat()

    assert purge("--all", "--yes") == [
        "deleted stream:logs:User.alice (1 entry)",
        "deleted stream:logs:User.bob (1 entry)",
        "deleted stream:logs:global (3 entries)",
        "deleted stream:logs:job_1 (1 entry)",
        "deleted 4 streams, 6 entries in all",
    ]
    stats = redis_client.info("commandstats")
    assert "cmdstat_scan" in stats
    assert "cmdstat_keys" not in stats
    assert sorted(redis_client.scan_iter()) == [b"stream:logs:not-a-stream", b"stream:other:thing"]


def test_all_treats_glob_characters_in_prefixes_literally(redis_client: redis.Redis) -> None:
    names = Names(stream_prefix="s*[x]:")
    redis_client.xadd("s*[x]:logs:a", {"data": "{}"})
    redis_client.xadd("sQx:logs:b", {"data": "{}"})  # what the unescaped pattern would match

    assert glob_escape("s*[x]?\\") == "s\\*\\[x\\]\\?\\\\"
    assert all_streams(redis_client, names) == [b"s*[x]:logs:a"]
    assert purge("--all", "--yes", "--stream-prefix", "s*[x]:") == [
        "deleted s*[x]:logs:a (1 entry)",
        "deleted 1 stream, 1 entry in all",
    ]
    assert redis_client.exists("sQx:logs:b")
    assert not redis_client.exists("s*[x]:logs:a")


def test_all_deletes_a_stream_whose_key_is_not_utf8(redis_client: redis.Redis) -> None:
    """Another producer's key, shown with an escape, is deleted by its bytes."""
    redis_client.xadd(b"stream:logs:caf\xe9", {"data": "{}"})
    assert purge("--all", "--yes") == [
        "deleted stream:logs:caf\\xe9 (1 entry)",
        "deleted 1 stream, 1 entry in all",
    ]
    assert not redis_client.exists(b"stream:logs:caf\xe9")


def test_other_key_types_are_left_alone(redis_client: redis.Redis) -> None:
    redis_client.set(f"stream:logs:{ALICE}", "not mine")
    assert purge(ALICE)[0] == "stream:logs:User.alice: left alone, it is a string, not a stream"
    assert redis_client.get(f"stream:logs:{ALICE}") == b"not mine"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("global",), "invalid context: 'global' is reserved"),
        ((), "give CONTEXT..., --global, or --all --yes"),
        (("--all", "--yes", ALICE), "--all already covers every stream"),
    ],
)
def test_wrong_arguments_exit_2_with_one_line(
    args: tuple[str, ...], message: str, capsys: pytest.CaptureFixture[str], redis_url: str
) -> None:
    status, _out, err = run_from_argv(*args, capsys=capsys)
    assert status == 2
    assert err.startswith(f"CommandError: {message}")
    assert err.count("\n") == 1


def test_unreachable_redis_exits_1_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    status, out, err = run_from_argv(ALICE, "--url", url, capsys=capsys)
    assert status == 1
    assert out == ""
    assert err.startswith("CommandError: cannot reach Redis at 127.0.0.1:")
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_help_reads_like_a_man_page() -> None:
    text = Command().create_parser("manage.py", "purge_log_context").format_help()
    assert "\nEXIT STATUS\n" in text
    assert "\nEXAMPLES\n" in text
    assert "      manage.py purge_log_context --all --yes\n" in text
    assert "(default: --all refuses to run)" in text
