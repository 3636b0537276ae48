"""``manage.py purge_log_context``: what it deletes, what it says, how it refuses.

Exit statuses are checked through the command's real argv path
(``run_from_argv``: parse, run, CommandError -> one stderr line + exit).
"""

from __future__ import annotations

import io
import json
import tracemalloc

import pytest
import redis
from django.core.management import call_command

from redis_logstream.cli.erase import erase_entries
from redis_logstream.cli.purge import all_streams, glob_escape
from redis_logstream.management.commands.purge_log_context import Command
from redis_logstream.naming import Names
from support.servers import free_port
from support.streamlog import Writer

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

    assert purge(ALICE, BOB, "User.carol", "--streams-only") == [
        "deleted stream:logs:User.alice (3 entries)",
        "deleted stream:logs:User.bob (2 entries)",
        "stream:logs:User.carol: no such stream",
        "deleted 2 streams, 5 entries in all",
    ]
    assert list(redis_client.scan_iter("stream:logs:User.*")) == []
    assert redis_client.xlen("stream:logs:global") == 5  # --streams-only: left there


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
    assert purge(ALICE, "--global", "--dry-run", "--streams-only") == [
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


# Erasure: a context's records are also copied into the global stream and,
# when a consumer group gives up on one, into its dead-letter stream.


def dead_letter(client: redis.Redis, group: str, entry_id: bytes, fields: dict) -> None:
    """File a record in a group's dead-letter stream with the fields the
    group consumer writes there: the original ``data`` plus where it came
    from and why it was refused."""
    client.xadd(
        f"stream:logs/dead-letter/{group}",
        {
            "data": fields[b"data"],
            "stream": "stream:logs:global",
            "id": entry_id,
            "group": group,
            "consumer": "worker-1",
            "attempts": 5,
            "reason": "boom",
        },
    )


def contexts_in(client: redis.Redis, key: str) -> list[str | None]:
    return [json.loads(fields[b"data"])["context"] for _, fields in client.xrange(key)]


def test_purging_a_context_erases_it_from_the_global_and_dead_letter_streams(
    write: Writer, redis_client: redis.Redis
) -> None:
    for i in range(6):
        write(f"record {i}", (ALICE, BOB, None)[i % 3], flush=False)
    write("alice again, with a traceback", ALICE, exc_info=(ValueError, ValueError("x"), None))
    for entry_id, fields in redis_client.xrange("stream:logs:global"):
        dead_letter(redis_client, "audit", entry_id, fields)
    redis_client.xadd("stream:logs/dead-letter/billing", {"data": "not json"})

    assert purge(ALICE) == [
        "deleted stream:logs:User.alice (3 entries)",
        "removed 3 entries from stream:logs:global (7 scanned)",
        "removed 3 entries from stream:logs/dead-letter/audit (7 scanned)",
        "removed 0 entries from stream:logs/dead-letter/billing (1 scanned)",
        "deleted 1 stream and 6 entries from 3 shared streams, 9 entries in all",
    ]
    assert not redis_client.exists(f"stream:logs:{ALICE}")
    others = [BOB, None, BOB, None]
    assert contexts_in(redis_client, "stream:logs:global") == others
    assert contexts_in(redis_client, "stream:logs/dead-letter/audit") == others
    assert redis_client.xlen("stream:logs/dead-letter/billing") == 1
    assert redis_client.xlen(f"stream:logs:{BOB}") == 2


def test_dry_run_counts_exactly_what_the_erasure_then_removes(
    write: Writer, redis_client: redis.Redis
) -> None:
    for i in range(10):
        write(f"record {i}", (ALICE, BOB)[i % 2], flush=False)
    write.flush()
    for entry_id, fields in redis_client.xrange("stream:logs:global")[:4]:
        dead_letter(redis_client, "audit", entry_id, fields)
    before = redis_client.xrange("stream:logs:global")

    dry = purge(ALICE, BOB, "--dry-run")
    assert redis_client.xrange("stream:logs:global") == before
    assert redis_client.xlen("stream:logs/dead-letter/audit") == 4
    done = purge(ALICE, BOB)
    assert [
        line.replace("would delete", "deleted").replace("would remove", "removed") for line in dry
    ] == done
    assert done[-1] == "deleted 2 streams and 14 entries from 2 shared streams, 24 entries in all"
    assert redis_client.xlen("stream:logs:global") == 0
    assert redis_client.xlen("stream:logs/dead-letter/audit") == 0


def test_with_global_the_global_stream_goes_whole_and_dead_letters_are_still_erased(
    write: Writer, redis_client: redis.Redis
) -> None:
    write("a", ALICE)
    ((entry_id, fields),) = redis_client.xrange("stream:logs:global")
    dead_letter(redis_client, "audit", entry_id, fields)
    assert purge(ALICE, "--global") == [
        "deleted stream:logs:User.alice (1 entry)",
        "deleted stream:logs:global (1 entry)",
        "removed 1 entry from stream:logs/dead-letter/audit (1 scanned)",
        "deleted 2 streams and 1 entry from 1 shared stream, 3 entries in all",
    ]


def test_erasure_reads_page_by_page_to_the_end_it_saw_first(redis_client: redis.Redis) -> None:
    key = "stream:logs:global"
    for i in range(10):
        context = ALICE if i in (0, 2, 3, 8, 9) else BOB
        redis_client.xadd(key, {"data": json.dumps({"message": str(i), "context": context})})
    pages = []
    real_xrange = redis_client.xrange

    def xrange(*args, **kwargs):
        rows = real_xrange(*args, **kwargs)
        pages.append(len(rows))
        if len(pages) == 1:  # a record that arrives during the scan is not read
            redis_client.xadd(key, {"data": json.dumps({"context": ALICE})})
        return rows

    redis_client.xrange = xrange
    erasure = erase_entries(redis_client, key, [ALICE], page=3)
    assert (erasure.scanned, erasure.removed) == (10, 5)
    assert pages == [3, 3, 3, 1]
    del redis_client.xrange
    assert [json.loads(f[b"data"]).get("message") for _, f in redis_client.xrange(key)] == [
        "1",
        "4",
        "5",
        "6",
        "7",
        None,
    ]


def test_erasure_finds_records_whatever_their_json_escapes(redis_client: redis.Redis) -> None:
    """Another producer may escape any character of the context (``\\u0041``)."""
    key = "stream:logs:global"
    redis_client.xadd(key, {"data": '{"context": "User.\\u0061lice", "message": "escaped"}'})
    redis_client.xadd(key, {"data": '{"context": "User.alice2", "message": "not hers"}'})
    redis_client.xadd(key, {"data": '{"message": "User.alice named, no context"}'})
    redis_client.xadd(key, {"other": "field"})
    assert purge(ALICE)[1] == "removed 1 entry from stream:logs:global (4 scanned)"
    assert redis_client.xlen(key) == 3


def test_erasure_of_a_large_global_stream_keeps_memory_bounded(redis_client: redis.Redis) -> None:
    """100,000 entries, 1% of them alice's: every one of hers goes, and the
    purge's peak of Python memory stays far below the stream's size."""
    key, total = "stream:logs:global", 100_000
    record = {
        "message": "GET /checkout 200 " + "x" * 200,
        "level": "INFO",
        "levelno": 20,
        "timestamp": 1764028932.0151234,
        "logger": "shop.views",
        "pod": "web-1",
        "pid": 42,
    }
    pipe = redis_client.pipeline(transaction=False)
    for i in range(total):
        context = ALICE if i % 100 == 7 else f"User.u{i % 50}"
        pipe.xadd(key, {"data": json.dumps({**record, "context": context})})
        if i % 5000 == 4999:
            pipe.execute()
    pipe.execute()
    stream_bytes = redis_client.memory_usage(key)

    tracemalloc.start()
    try:
        lines = purge(ALICE)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert lines[1] == f"removed 1000 entries from stream:logs:global ({total} scanned)"
    assert redis_client.xlen(key) == total - 1000
    assert ALICE not in contexts_in(redis_client, key)
    assert peak < 16 * 2**20 < stream_bytes  # one page of 1000 entries, not the stream


def test_purged_key_names_are_printed_with_terminal_controls_escaped(
    redis_client: redis.Redis,
) -> None:
    redis_client.xadd("stream:logs:evil\x1b]0;owned\x07\u202e\x9b", {"data": "{}"})
    lines = purge("--all", "--yes")
    assert lines[0] == "deleted stream:logs:evil\\x1b]0;owned\\x07\\u202e\\x9b (1 entry)"
    assert not any(c in "".join(lines) for c in "\x1b\x07\u202e\x9b")


def test_erasure_on_a_cluster_finds_the_hash_tagged_global_stream(handlers, cluster) -> None:
    hosts = ",".join(url.split("//")[1].rsplit("/", 1)[0] for url in cluster.urls[:2])
    url = f"redis+cluster://{hosts}"
    write = Writer(handlers(url=url))
    for i in range(6):
        write(f"record {i}", (ALICE, BOB)[i % 2], flush=False)
    write.flush()
    client = cluster.client()
    (entry_id, fields), *_ = client.xrange("stream:logs:{global}")
    client.xadd("stream:logs/dead-letter/audit", {"data": fields[b"data"], "id": entry_id})

    assert purge(ALICE, "--url", url) == [
        "deleted stream:logs:{User.alice} (3 entries)",
        "removed 3 entries from stream:logs:{global} (6 scanned)",
        "removed 1 entry from stream:logs/dead-letter/audit (1 scanned)",
        "deleted 1 stream and 4 entries from 2 shared streams, 7 entries in all",
    ]
    assert contexts_in(client, "stream:logs:{global}") == [BOB] * 3
    assert client.xlen("stream:logs/dead-letter/audit") == 0


def test_all_deletes_the_dead_letter_streams_too(write: Writer, redis_client: redis.Redis) -> None:
    write("x", ALICE)
    redis_client.xadd("stream:logs/dead-letter/audit", {"data": "{}"})
    assert purge("--all", "--yes") == [
        "deleted stream:logs:User.alice (1 entry)",
        "deleted stream:logs:global (1 entry)",
        "deleted stream:logs/dead-letter/audit (1 entry)",
        "deleted 3 streams, 3 entries in all",
    ]
    assert redis_client.dbsize() == 0
