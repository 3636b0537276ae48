"""The shared reader: history, since, filters, follow without gap, restarts.

Records are written by a real RedisLogHandler to a real redis-server; the
follow tests run the follower in a thread while records keep arriving.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest
import redis

from redis_logstream.naming import Names
from redis_logstream.reading.reader import (
    Entry,
    EntryFilter,
    StreamReader,
    client_for_url,
    decode_entry,
    parse_entry_id,
    parse_level,
    parse_since,
)
from support.helpers import wait_for
from support.servers import RedisServer
from support.streamlog import CountingClient, Writer, fill

ALICE = "User.alice"


@pytest.fixture
def write(handlers, redis_url: str) -> Writer:
    return Writer(handlers(url=redis_url))


@pytest.fixture
def reader(redis_url: str) -> StreamReader:
    return StreamReader(client_for_url(redis_url, block_ms=100), Names(), block_ms=100)


def messages(entries: list[Entry]) -> list[str]:
    return [entry.message for entry in entries]


def test_history_is_the_last_n_entries_oldest_first(write: Writer, reader: StreamReader) -> None:
    for i in range(30):
        write(f"m{i}", ALICE, flush=False)
    write.flush()

    assert messages(reader.history(ALICE, 5)) == [f"m{i}" for i in range(25, 30)]
    assert messages(reader.history(ALICE, None)) == [f"m{i}" for i in range(30)]
    assert reader.history(ALICE, 0) == []


def test_history_of_no_context_is_the_global_stream(write: Writer, reader: StreamReader) -> None:
    write("for alice", ALICE)
    write("for nobody")

    assert messages(reader.history(None, 10)) == ["for alice", "for nobody"]
    assert messages(reader.history(ALICE, 10)) == ["for alice"]
    assert reader.history("User.bob", 10) == []


def test_entries_carry_the_stored_record_and_bytes(
    write: Writer, reader: StreamReader, redis_client: redis.Redis
) -> None:
    write("hello", ALICE, level=logging.WARNING, logger="shop.views")

    [entry] = reader.history(ALICE, 1)
    [(entry_id, fields)] = redis_client.xrange(f"stream:logs:{ALICE}")
    assert entry.id == entry_id.decode()
    assert entry.raw == fields[b"data"]
    assert entry.record == json.loads(fields[b"data"])
    assert (entry.level, entry.levelno, entry.logger, entry.context) == (
        "WARNING",
        30,
        "shop.views",
        ALICE,
    )


def test_since_an_entry_id_excludes_that_entry(write: Writer, reader: StreamReader) -> None:
    for i in range(6):
        write(f"m{i}", ALICE, flush=False)
    write.flush()
    entries = reader.history(ALICE, None)

    assert messages(reader.history(ALICE, None, since=entries[2].id)) == ["m3", "m4", "m5"]
    assert messages(reader.history(ALICE, 2, since=entries[2].id)) == ["m4", "m5"]
    assert reader.history(ALICE, None, since=entries[-1].id) == []


def test_since_a_duration_counts_back_from_the_redis_clock(
    write: Writer, reader: StreamReader, redis_client: redis.Redis
) -> None:
    now = reader.now_ms()
    key = f"stream:logs:{ALICE}"
    for minutes_ago in (120, 30):
        record = {"message": f"{minutes_ago} min ago", "level": "INFO", "levelno": 20}
        redis_client.xadd(key, {"data": json.dumps(record)}, id=f"{now - minutes_ago * 60_000}-0")
    write("just now", ALICE)

    assert messages(reader.history(ALICE, None, since="10m")) == ["just now"]
    assert messages(reader.history(ALICE, None, since="1h")) == ["30 min ago", "just now"]
    assert len(reader.history(ALICE, None, since="1h59m")) == 2
    assert len(reader.history(ALICE, None, since="2h1m")) == 3


def test_since_durations_and_ids_parse_or_say_why_not() -> None:
    now = 10_000_000
    assert parse_since("1h30m", lambda: now) == f"{now - 5_400_000 - 1}-{2**64 - 1}"
    assert parse_since("30s", lambda: now) == f"{now - 30_000 - 1}-{2**64 - 1}"
    assert parse_since("1764028888123-7", lambda: now) == "1764028888123-7"
    assert parse_since("1000d", lambda: now) == "0-0"
    for bad in ("10", "10 minutes", "-5m", "1764028888123", "yesterday", ""):
        with pytest.raises(ValueError, match="duration"):
            parse_since(bad, lambda: now)
    with pytest.raises(ValueError, match="entry id"):
        parse_entry_id("$")


def test_levels_parse_by_name_or_number() -> None:
    assert [parse_level(text) for text in ("debug", "WARN", "Error", "critical", "25")] == [
        10,
        30,
        40,
        50,
        25,
    ]
    with pytest.raises(ValueError, match="unknown level"):
        parse_level("loud")


def test_level_filter_counts_matching_entries(write: Writer, reader: StreamReader) -> None:
    for i in range(600):  # more than a page: the reader pages backwards
        level = logging.ERROR if i % 200 == 0 else logging.INFO
        write(f"m{i}", ALICE, level=level, flush=False)
    write.flush()

    errors = EntryFilter(min_level=logging.ERROR)
    assert messages(reader.history(ALICE, 2, match=errors)) == ["m200", "m400"]
    assert messages(reader.history(ALICE, None, match=errors)) == ["m0", "m200", "m400"]


def test_logger_filter_follows_the_logger_hierarchy(write: Writer, reader: StreamReader) -> None:
    for name in ("shop", "shop.views", "shopping", "other.shop"):
        write(f"from {name}", ALICE, logger=name, flush=False)
    write.flush()

    shop = EntryFilter(logger="shop")
    assert messages(reader.history(ALICE, 10, match=shop)) == ["from shop", "from shop.views"]
    tolerant = EntryFilter(logger="shop.")  # a trailing dot means the same subtree
    assert messages(reader.history(ALICE, 10, match=tolerant)) == [
        "from shop",
        "from shop.views",
    ]


def test_invalid_entries_become_records_with_level_question_mark(
    write: Writer, reader: StreamReader, redis_client: redis.Redis
) -> None:
    key = f"stream:logs:{ALICE}"
    redis_client.xadd(key, {"data": b"\xff not json"})
    redis_client.xadd(key, {"data": b"[1, 2]"})
    redis_client.xadd(key, {"data": b"[" * 100_000})
    redis_client.xadd(key, {"other": b"field"})
    write("fine", ALICE)

    entries = reader.history(ALICE, None, match=EntryFilter(min_level=logging.ERROR))
    assert [entry.level for entry in entries] == ["?", "?", "?", "?"]  # unknown levels pass
    assert [entry.valid for entry in entries] == [False] * 4
    assert entries[0].message == "\\xff not json"
    assert entries[1].message == "[1, 2]"
    assert entries[3].message == "other=field"
    assert messages(reader.history(ALICE, 1)) == ["fine"]


def test_entry_properties_never_raise_on_odd_records() -> None:
    entry = decode_entry(
        b"1764028888123-0",
        {b"data": b'{"levelno": "x", "level": 5, "timestamp": "nan", "message": [1]}'},
    )
    assert entry.levelno is None
    assert entry.level == "5"
    assert entry.timestamp == 1764028888.123
    assert entry.message == "[1]"
    assert entry.logger == ""
    assert entry.context is None
    assert decode_entry("1-0", {"data": '{"level": "error"}'}).levelno == 40  # str clients


def test_follow_joins_history_without_gap_or_duplicate(write: Writer, reader: StreamReader) -> None:
    total = 300
    started, snapshot_taken = threading.Event(), threading.Event()

    def produce() -> None:
        for i in range(total):
            write(f"m{i}", ALICE, flush=False)
            if i == 50:
                started.set()
            if i == 150:  # the snapshot lands somewhere in 50..150, not after the end
                snapshot_taken.wait(5)
            time.sleep(0.0005)
        write.flush()

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        assert started.wait(5)
        wait_for(lambda: reader.history(ALICE, 1))
        snapshot = reader.snapshot(ALICE, None)
        snapshot_taken.set()
        seen = messages(snapshot.entries)
        assert 0 < len(seen) <= 151, "the switch must happen while records arrive"
        for entry in reader.follow(ALICE, snapshot.cursor, timeout=10):
            seen.append(entry.message)
            if entry.message == f"m{total - 1}":
                break
    finally:
        snapshot_taken.set()
        producer.join()

    assert seen == [f"m{i}" for i in range(total)]


def test_cursor_passes_entries_the_filter_hid(write: Writer, reader: StreamReader) -> None:
    write("an error", ALICE, level=logging.ERROR)
    write("chatter", ALICE)
    errors = EntryFilter(min_level=logging.ERROR)

    snapshot = reader.snapshot(ALICE, 5, match=errors)
    assert messages(snapshot.entries) == ["an error"]
    assert snapshot.cursor == reader.history(ALICE, 1)[0].id
    assert list(reader.follow(ALICE, snapshot.cursor, timeout=0.05)) == []


def test_snapshot_of_an_empty_stream_follows_from_the_start(
    write: Writer, reader: StreamReader
) -> None:
    snapshot = reader.snapshot(ALICE, 20)
    assert snapshot == type(snapshot)([], "0-0")
    write("first", ALICE)
    assert next(reader.follow(ALICE, snapshot.cursor, timeout=5)).message == "first"


def test_follow_stops_when_the_event_is_set(reader: StreamReader) -> None:
    stop = threading.Event()
    done = threading.Event()

    def run() -> None:
        list(reader.follow(ALICE, "0-0", stop=stop))
        done.set()

    threading.Thread(target=run, daemon=True).start()
    time.sleep(0.05)
    assert not done.is_set()
    stop.set()
    assert done.wait(2)


def test_ticks_report_idle_blocks_for_heartbeats(write: Writer, reader: StreamReader) -> None:
    ticks = reader.ticks(ALICE, "0-0", timeout=5, block_ms=20)
    assert next(ticks) is None  # nothing within one block
    write("news", ALICE)
    assert next(item for item in ticks if item is not None).message == "news"
    ticks.close()


def test_ticks_report_a_busy_stream_whose_entries_the_filter_hides(
    write: Writer, reader: StreamReader
) -> None:
    """A heartbeat must still get its turn while a filter hides every new entry."""
    write("chatter", ALICE)
    ticks = reader.ticks(ALICE, "0-0", timeout=5, block_ms=5000, match=lambda entry: False)
    started = time.monotonic()
    assert next(ticks) is None
    assert time.monotonic() - started < 1  # the batch, not the 5 s block
    ticks.close()


def test_follow_survives_a_redis_restart(handlers, own_redis: RedisServer) -> None:
    write = Writer(handlers(url=own_redis.url))
    reader = StreamReader(client_for_url(own_redis.url, block_ms=100), block_ms=100)
    seen: list[str] = []
    notes: list[str] = []
    stop = threading.Event()

    def follow() -> None:
        for entry in reader.follow(ALICE, "0-0", stop=stop, notify=notes.append):
            seen.append(entry.message)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    try:
        write("before", ALICE)
        wait_for(lambda: seen == ["before"])
        own_redis.restart()
        write("after", ALICE)
        wait_for(lambda: seen == ["before", "after"])
    finally:
        stop.set()
        follower.join(5)
    assert not follower.is_alive()
    # redis-py may reconnect by itself when the follower was between reads
    # during the restart; when the reader saw the loss, it said both things.
    assert notes == [] or ("lost Redis" in notes[0] and "back" in notes[1] and len(notes) == 2)


def test_block_fits_in_the_clients_socket_timeout(redis_url: str) -> None:
    short = redis.Redis.from_url(redis_url, socket_timeout=0.2)
    assert StreamReader(short, block_ms=5000).block_ms == 150
    patient = client_for_url(redis_url, block_ms=5000)
    assert StreamReader(patient, block_ms=5000).block_ms == 5000
    assert patient.connection_pool.connection_kwargs["socket_timeout"] > 5


@pytest.mark.parametrize(("decode_responses", "protocol"), [(True, 2), (False, 3), (True, 3)])
def test_clients_of_any_reply_shape_read_the_same(
    write: Writer, redis_url: str, decode_responses: bool, protocol: int
) -> None:
    write("hello", ALICE)
    client = redis.Redis.from_url(redis_url, decode_responses=decode_responses, protocol=protocol)
    reader = StreamReader(client, block_ms=100)
    [entry] = reader.history(ALICE, 5)
    assert entry.message == "hello"
    assert json.loads(entry.raw) == entry.record
    write("more", ALICE)
    assert next(reader.follow(ALICE, entry.id, timeout=5)).message == "more"
    client.close()


# -- long histories: a page at a time ----------------------------------------------


@pytest.fixture
def counted(redis_url: str) -> CountingClient:
    return CountingClient(redis.Redis.from_url(redis_url, socket_timeout=5))


PAGE_SIZE = 500


def test_the_whole_history_is_read_a_page_at_a_time_as_it_is_consumed(
    counted: CountingClient,
) -> None:
    total = 20_000
    fill(counted.client, f"stream:logs:{ALICE}", total)
    reader = StreamReader(counted, Names(), block_ms=100, page=PAGE_SIZE)

    window = reader.window(ALICE, None)
    entries = iter(window.entries)
    assert next(entries).message == "m0"
    assert len(counted.reads) <= 2  # the newest id, then the first page: not the whole stream
    seen = ["m0"] + [entry.message for entry in entries]

    assert seen == [f"m{i}" for i in range(total)]  # every entry once, in order
    assert max(count for _, count in counted.reads) <= PAGE_SIZE
    assert len(counted.reads) >= total // PAGE_SIZE
    assert window.cursor == counted.client.xrevrange(f"stream:logs:{ALICE}", count=1)[0][0].decode()


@pytest.mark.parametrize("errors_only", [False, True], ids=["all", "errors"])
def test_a_count_larger_than_a_page_is_read_a_page_at_a_time(
    counted: CountingClient, errors_only: bool
) -> None:
    total, count = 20_000, 5_000
    fill(counted.client, f"stream:logs:{ALICE}", total)
    reader = StreamReader(counted, Names(), block_ms=100, page=PAGE_SIZE)
    match = EntryFilter(min_level=logging.ERROR) if errors_only else None

    window = reader.window(ALICE, count, match=match)
    entries = iter(window.entries)
    first = next(entries)
    reads_before_first = len(counted.reads)
    seen = [first.message] + [entry.message for entry in entries]

    wanted = [f"m{i}" for i in range(total) if not errors_only or i % 3 == 0][-count:]
    assert seen == wanted
    assert max(count for _, count in counted.reads) <= PAGE_SIZE
    # The walk back counts without keeping; the entries come forwards, page by page.
    assert reads_before_first <= len(counted.reads) - count // PAGE_SIZE + 1


def test_follow_after_a_paged_history_has_no_gap_or_duplicate(
    counted: CountingClient,
) -> None:
    key = f"stream:logs:{ALICE}"
    fill(counted.client, key, 3_000)
    reader = StreamReader(counted, Names(), block_ms=100, page=PAGE_SIZE)

    window = reader.window(ALICE, None)
    seen = [next(window.entries).message]
    fill(counted.client, key, 1_000, first=3_000)  # arrives while the history is read
    seen += [entry.message for entry in window.entries]
    assert seen == [f"m{i}" for i in range(3_000)]  # the history ends where it began
    for entry in reader.follow(ALICE, window.cursor, timeout=10):
        seen.append(entry.message)
        if entry.message == "m3999":
            break
    assert seen == [f"m{i}" for i in range(4_000)]


def test_a_window_of_nothing_is_empty_with_the_cursor_of_a_snapshot(
    counted: CountingClient,
) -> None:
    reader = StreamReader(counted, Names(), block_ms=100, page=PAGE_SIZE)
    for count in (None, 0, 5, 5_000):
        window = reader.window(ALICE, count)
        assert (list(window.entries), window.cursor) == ([], "0-0")
    fill(counted.client, f"stream:logs:{ALICE}", 10)
    newest = counted.client.xrevrange(f"stream:logs:{ALICE}", count=1)[0][0].decode()
    assert reader.window(ALICE, None, since=newest).cursor == newest
    assert list(reader.window(ALICE, None, since=newest).entries) == []
