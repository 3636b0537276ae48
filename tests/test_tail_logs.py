"""``manage.py tail_logs``: output, filters, errors, follow and Ctrl-C.

In-process through call_command where output is what matters; the real
``manage.py`` in a subprocess where the exit status or a signal is.
"""

from __future__ import annotations

import io
import json
import logging
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

import amqp
import pytest
import redis
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import override_settings

from redis_logstream import log_context
from redis_logstream.amqp import AmqpLogHandler
from redis_logstream.cli.tail import TailRequest, tail
from redis_logstream.management.commands.tail_logs import Command
from redis_logstream.naming import Names
from redis_logstream.reading.reader import StreamReader, client_for_url, decode_entry
from redis_logstream.reading.render import INDENT, Renderer, safe
from support.helpers import wait_for
from support.servers import free_port
from support.streamlog import Writer, manage

ALICE = "User.alice"
LINE = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (\S+) +(\S+) (\S+): (.*)$")


@pytest.fixture
def write(handlers, redis_url: str) -> Writer:
    return Writer(handlers(url=redis_url))


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def tail_logs(*args: str, stdout: io.StringIO | None = None, **options: object) -> str:
    out = stdout if stdout is not None else io.StringIO()
    call_command("tail_logs", *args, stdout=out, stderr=io.StringIO(), **options)
    return out.getvalue()


def shown(output: str) -> list[str]:
    """The messages of readable output lines."""
    return [LINE.match(line).group(4) for line in output.splitlines()]


def test_prints_the_last_n_records_as_readable_lines(write: Writer) -> None:
    for i in range(25):
        write(f"message {i}", ALICE, logger="shop.views", flush=False)
    write.flush()

    lines = tail_logs(ALICE, "-n", "3").splitlines()
    assert [LINE.match(line).groups() for line in lines] == [
        ("INFO", ALICE, "shop.views", f"message {i}") for i in (22, 23, 24)
    ]
    assert len(tail_logs(ALICE).splitlines()) == 20  # the default


def test_global_shows_records_with_and_without_context(write: Writer) -> None:
    write("alice's", ALICE)
    write("nobody's", level=logging.WARNING)

    lines = [LINE.match(line).groups() for line in tail_logs("--global").splitlines()]
    assert lines == [("INFO", ALICE, "app", "alice's"), ("WARNING", "-", "app", "nobody's")]


def test_json_prints_the_stored_json(write: Writer, redis_client: redis.Redis) -> None:
    write("one", ALICE)
    write('two "quoted"\nand a second line', ALICE)

    stored = redis_client.xrange(f"stream:logs:{ALICE}")
    assert tail_logs(ALICE, "--json").splitlines() == [f[b"data"].decode() for _, f in stored]


def test_tracebacks_keep_their_continuation_lines_indented(write: Writer) -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        write("it failed", ALICE, level=logging.ERROR, exc_info=True)

    first, *rest = tail_logs(ALICE).splitlines()
    assert first.endswith("app: it failed")
    assert rest[0] == f"{INDENT}Traceback (most recent call last):"
    assert rest[-1] == f"{INDENT}RuntimeError: boom"
    assert all(line.startswith(INDENT) for line in rest)


def test_colour_only_on_a_terminal(write: Writer, monkeypatch: pytest.MonkeyPatch) -> None:
    write("careful", ALICE, level=logging.WARNING)

    assert "\x1b[" not in tail_logs(ALICE)
    assert "\x1b[33mWARNING" in tail_logs(ALICE, stdout=Terminal())
    assert "\x1b[" not in tail_logs(ALICE, "--no-color", stdout=Terminal())
    assert "\x1b[33mWARNING" in tail_logs(ALICE, "--force-color")
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\x1b[" not in tail_logs(ALICE, stdout=Terminal())


def test_messages_cannot_drive_the_terminal(write: Writer) -> None:
    write("evil \x1b[2J\rover\u202ewritten", ALICE)

    output = tail_logs(ALICE, stdout=Terminal(), no_color=True)
    assert "\x1b" not in output and "\r" not in output and "\u202e" not in output
    assert "evil \\x1b[2J\\x0dover\\u202ewritten" in output


def test_level_and_logger_options_filter(write: Writer) -> None:
    write("info", ALICE, logger="shop")
    write("error", ALICE, logger="shop.views", level=logging.ERROR)
    write("other error", ALICE, logger="shopping", level=logging.ERROR)

    assert shown(tail_logs(ALICE, "--level", "error")) == ["error", "other error"]
    assert shown(tail_logs(ALICE, "--logger", "shop")) == ["info", "error"]
    assert tail_logs(ALICE, "--level", "WARNING", "--logger", "shop").count("\n") == 1


def test_since_option_takes_an_entry_id(write: Writer, redis_client: redis.Redis) -> None:
    for i in range(3):
        write(f"m{i}", ALICE, flush=False)
    write.flush()
    first_id = redis_client.xrange(f"stream:logs:{ALICE}", count=1)[0][0].decode()

    output = tail_logs(ALICE, "--since", first_id, "--json")
    assert [json.loads(line)["message"] for line in output.splitlines()] == ["m1", "m2"]
    assert tail_logs(ALICE, "--since", "1h", "-n", "all").count("\n") == 3


def test_invalid_entries_are_shown_not_fatal(write: Writer, redis_client: redis.Redis) -> None:
    redis_client.xadd(f"stream:logs:{ALICE}", {"data": b"\xffgarbage"})
    write("fine", ALICE)

    lines = tail_logs(ALICE).splitlines()
    assert LINE.match(lines[0]).groups() == ("?", "-", "-", "\\xffgarbage")
    assert lines[1].endswith("app: fine")
    assert json.loads(tail_logs(ALICE, "--json").splitlines()[0]) == {
        "message": "\\xffgarbage",
        "level": "?",
    }


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ((), "give a CONTEXT to read, or --global"),
        ((ALICE, "--global"), "not both"),
        (("global",), "invalid context: 'global' is reserved"),
        (("x" * 200,), "invalid context: A log context is at most 128"),
        ((ALICE, "--since", "yesterday"), "give a duration"),
        ((ALICE, "--level", "loud"), "unknown level"),
    ],
)
def test_wrong_arguments_are_command_errors(args: tuple[str, ...], reason: str) -> None:
    with pytest.raises(CommandError, match=re.escape(reason)) as caught:
        tail_logs(*args)
    assert caught.value.returncode == 2


def test_unreachable_redis_exits_1_with_one_line(redis_url: str) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    proc = manage("tail_logs", "--global", "--url", dead, redis_url=redis_url)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, err
    assert out == ""
    assert err.count("\n") == 1, err
    assert err.startswith(f"CommandError: cannot reach Redis at 127.0.0.1:{dead.split(':')[2]}")
    assert "Connection refused" in err


def test_reads_where_and_as_the_sites_handler_writes(handlers, redis_url: str) -> None:
    site = {"URL": redis_url, "CHANNEL_PREFIX": "app", "STREAM_PREFIX": "s:"}
    with override_settings(REDIS_LOGSTREAM=site):
        Writer(handlers())("renamed", ALICE)  # the handler takes its options from settings
        assert shown(tail_logs(ALICE)) == ["renamed"]


def test_the_sites_cache_alias_unreachable_is_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    dead = {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": f"redis://127.0.0.1:{free_port()}/0",
    }
    with override_settings(CACHES={"default": dead}), pytest.raises(SystemExit) as exited:
        Command().run_from_argv(["manage.py", "tail_logs", ALICE])
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("CommandError: cannot reach Redis at 127.0.0.1:")
    assert err.count("\n") == 1


def test_follow_prints_new_records_until_stopped(write: Writer, redis_url: str) -> None:
    write("old", ALICE)
    out, err, stop = io.StringIO(), io.StringIO(), threading.Event()
    reader = StreamReader(client_for_url(redis_url, block_ms=100), Names(), block_ms=100)
    request = TailRequest(context=ALICE, follow=True)
    follower = threading.Thread(target=lambda: tail(reader, request, out, err, stop=stop))
    follower.start()
    try:
        wait_for(lambda: "old" in out.getvalue())
        write("new", ALICE)
        write("elsewhere", "User.bob")
        wait_for(lambda: "new" in out.getvalue())
    finally:
        stop.set()
        follower.join(5)
    assert not follower.is_alive()
    assert [line.rsplit(": ", 1)[1] for line in out.getvalue().splitlines()] == ["old", "new"]


def test_follow_then_ctrl_c_exits_0_without_traceback(write: Writer, redis_url: str) -> None:
    write("before", ALICE)
    proc = manage("tail_logs", ALICE, "-f", redis_url=redis_url)
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        assert lines.get(timeout=20).rstrip().endswith("app: before")
        write("while following", ALICE)
        assert lines.get(timeout=10).rstrip().endswith("app: while following")
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = proc.stderr.read()
    assert proc.returncode == 0, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err


def test_help_reads_like_a_man_page() -> None:
    text = Command().create_parser("manage.py", "tail_logs").format_help()
    assert "\n    HH:MM:SS.mmm LEVEL    context logger: message\n" in text  # kept as written
    assert "(default: 20)" in text
    assert "\nEXIT STATUS\n" in text
    assert "\nEXAMPLES\n" in text
    assert "      manage.py tail_logs User.alice -f\n" in text
    # Django's common options come after the command's own.
    assert text.index("--json") < text.index("--verbosity")


def test_renderer_keeps_lines_whole_and_the_timestamp_readable() -> None:
    entry = decode_entry(
        "1764028888123-0",
        {b"data": b'{"message": "a\\r\\nb\\n\\n", "timestamp": 1764028888.5, "level": "INFO"}'},
    )
    text = Renderer(utc=True).text(entry)
    assert text == f"00:01:28.500 INFO     - -: a\n{INDENT}b\n"
    assert safe("tab\tstays") == "tab\tstays"
    assert Renderer(json_lines=True)(entry) == entry.raw.decode() + "\n"


def test_json_lines_stay_one_per_record_for_other_producers() -> None:
    pretty = decode_entry("1-0", {b"data": b'{\n  "message": "pretty"\n}'})
    assert Renderer(json_lines=True)(pretty) == '{"message": "pretty"}\n'


def test_follow_reports_a_lost_redis_on_stderr_and_goes_on(handlers, own_redis) -> None:
    write = Writer(handlers(url=own_redis.url))
    out, err, stop = io.StringIO(), io.StringIO(), threading.Event()
    reader = StreamReader(client_for_url(own_redis.url, block_ms=100), block_ms=100)
    request = TailRequest(context=None, follow=True, json=True)
    follower = threading.Thread(target=lambda: tail(reader, request, out, err, stop=stop))
    follower.start()
    try:
        write("before the restart")  # the follower is past its history: it is following
        wait_for(lambda: "before the restart" in out.getvalue())
        own_redis.restart()
        write("after the restart")
        wait_for(lambda: "after the restart" in out.getvalue())
    finally:
        stop.set()
        follower.join(5)
    notes = err.getvalue().splitlines()
    assert any("lost Redis" in note for note in notes)
    assert notes[-1] == "Redis is back; following again"


def test_a_lone_surrogate_from_another_producer_prints_as_an_escape() -> None:
    entry = decode_entry("1-0", {b"data": b'{"message": "x \\ud800 y", "level": "INFO"}'})
    text = Renderer(utc=True).text(entry)
    assert "x \\ud800 y" in text
    text.encode("utf-8")  # printable on any UTF-8 terminal


#: A title change (OSC 0 ... BEL), a one-character CSI (U+009B), a right-to-left
#: override, the bidi marks and isolates: nothing here may reach a terminal raw.
HOSTILE = (
    "set \x1b]0;owned\x07 csi \x9b31m rlo \u202eevil\u202c lrm \u200e alm \u061c "
    "fsi \u2068x\u2069 del \x7f"
)
RAW_CONTROLS = re.compile(
    "[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
)


def test_json_output_escapes_terminal_controls_and_decodes_to_the_stored_text(
    write: Writer, redis_client: redis.Redis
) -> None:
    write(HOSTILE, ALICE, logger=f"evil\u202e.{chr(0x9B)}")
    # Another producer's entries: raw ESC inside a JSON string (not strict
    # JSON, so shown whole as the message), and a payload that is no JSON.
    key = f"stream:logs:{ALICE}"
    lax = '{"message": "raw \x1b]0;t\x07 \u202e", "level": "INFO"}'
    redis_client.xadd(key, {"data": lax})
    redis_client.xadd(key, {"data": "plain \x1b[2J\x9b\u202e text"})

    lines = tail_logs(ALICE, "--json").splitlines()
    assert len(lines) == 3
    assert not any(RAW_CONTROLS.search(line) for line in lines)
    records = [json.loads(line) for line in lines]
    assert records[0]["message"] == HOSTILE
    assert records[0]["logger"] == f"evil\u202e.{chr(0x9B)}"
    assert records[1] == {"message": lax, "level": "?"}
    assert records[2]["message"] == "plain \x1b[2J\x9b\u202e text"
    assert "\\u001b]0;owned\\u0007" in lines[0] and "\\u009b" in lines[0]


def test_text_output_shows_c1_and_bidi_controls_as_escapes(write: Writer) -> None:
    write(HOSTILE, ALICE, logger=f"evil\u202e.{chr(0x9B)}")

    output = tail_logs(ALICE, stdout=Terminal(), no_color=True)
    assert not RAW_CONTROLS.search(output.replace("\n", ""))
    assert (
        "set \\x1b]0;owned\\x07 csi \\x9b31m rlo \\u202eevil\\u202c lrm \\u200e alm \\u061c "
        "fsi \\u2068x\\u2069 del \\x7f"
    ) in output
    assert "evil\\u202e.\\x9b:" in output


def test_console_script_output_is_escaped_in_both_modes(
    write: Writer, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from redis_logstream.cli import main

    write(HOSTILE, ALICE)
    assert main(["tail", "--url", redis_url, ALICE, "--json"]) == 0
    assert main(["tail", "--url", redis_url, ALICE, "--no-color"]) == 0
    as_json, as_text = capsys.readouterr().out.splitlines()
    assert not RAW_CONTROLS.search(as_json + as_text)
    assert json.loads(as_json)["message"] == HOSTILE
    assert "\\x1b]0;owned\\x07" in as_text


def test_tail_amqp_output_is_escaped_too(rabbit_url: str) -> None:
    """``redis-logstream tail --amqp`` prints through the same renderer."""
    exchange = f"test-logs-{uuid.uuid4().hex[:10]}"
    broker = amqp.Connection("127.0.0.1:5672")
    broker.connect()
    channel = broker.channel()
    channel.exchange_declare(exchange, "topic", durable=False, auto_delete=False)
    handler = AmqpLogHandler(url=rabbit_url, exchange=exchange, flush_interval=0.01)
    logger = logging.Logger("shop", logging.DEBUG)
    logger.addHandler(handler)
    outputs = []
    try:
        for mode in ("--json", "--no-color"):
            tail = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "redis_logstream.cli",
                    "tail",
                    "--amqp",
                    rabbit_url,
                    "--exchange",
                    exchange,
                    mode,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                assert "listening to" in tail.stderr.readline()
                with log_context(ALICE):
                    logger.error(HOSTILE)
                assert handler.flush(5)
                time.sleep(0.5)  # published: give the listener time to print it
            finally:
                tail.send_signal(signal.SIGINT)
                out, err = tail.communicate(timeout=10)
            assert tail.returncode == 0, err
            outputs.append(out)
    finally:
        handler.close()
        channel.exchange_delete(exchange)
        broker.close()
    as_json, as_text = outputs
    assert not RAW_CONTROLS.search(as_json + as_text.replace("\n", ""))
    assert json.loads(as_json)["message"] == HOSTILE
    assert "\\x1b]0;owned\\x07" in as_text and "\\u202eevil" in as_text
