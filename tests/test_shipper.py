"""The shipper alone, driving fake sinks: batching, bounds, retries, flush, shutdown."""

from __future__ import annotations

import itertools
import logging
import struct
import threading
import time
from typing import Any

import pytest

from redis_logstream.shipping.shipper import Shipper, WriteError


class ListSink:
    """Stores batches; can be told to fail or to block."""

    def __init__(self) -> None:
        self.batches: list[list[Any]] = []
        self.fail_next = 0
        self.gate = threading.Event()
        self.gate.set()
        self.calls = 0

    def write(self, batch: list[Any]) -> None:
        self.calls += 1
        self.gate.wait()
        if self.fail_next:
            self.fail_next -= 1
            raise ConnectionError("down")
        self.batches.append(list(batch))

    @property
    def records(self) -> list[Any]:
        return [r for b in self.batches for r in b]


def make(sink: Any, **kw: Any) -> Shipper:
    kw.setdefault("flush_interval", 0.01)
    shipper = Shipper(sink, lambda item: item, **kw)
    shipper.retry_base = 0.001
    shipper.retry_cap = 0.01
    return shipper


def put(shipper: Shipper, item: Any) -> None:
    """What RedisLogHandler.emit does with a formatted record."""
    if len(shipper.buffer) < shipper.room:
        shipper.buffer.append(item)
        if shipper.idle:
            shipper.wake()
    else:
        shipper.overflow(item)


def test_no_thread_until_the_first_record() -> None:
    before = threading.active_count()
    shipper = make(ListSink())
    assert threading.active_count() == before
    put(shipper, 1)
    assert shipper.flush(2)
    assert threading.active_count() == before + 1
    shipper.shutdown(1)


def test_records_arrive_in_order_in_batches_no_larger_than_batch_size() -> None:
    sink = ListSink()
    shipper = make(sink, batch_size=7)
    for i in range(100):
        put(shipper, i)
    assert shipper.flush(5)
    assert sink.records == list(range(100))
    assert max(len(b) for b in sink.batches) <= 7
    stats = shipper.stats()
    assert stats["sent"] == stats["enqueued"] == 100
    assert stats["batches"] == len(sink.batches)
    shipper.shutdown(1)


def test_a_partial_batch_waits_at_most_flush_interval() -> None:
    sink = ListSink()
    shipper = make(sink, batch_size=1000, flush_interval=0.05)
    put(shipper, "x")
    deadline = time.monotonic() + 2
    while not sink.records and time.monotonic() < deadline:
        time.sleep(0.005)
    assert sink.records == ["x"]
    shipper.shutdown(1)


def test_flush_returns_false_when_the_sink_does_not_answer_in_time() -> None:
    sink = ListSink()
    sink.gate.clear()
    shipper = make(sink)
    put(shipper, 1)
    started = time.monotonic()
    assert shipper.flush(0.2) is False
    assert time.monotonic() - started < 1.5
    sink.gate.set()
    assert shipper.flush(2)
    shipper.shutdown(1)


def test_flush_with_no_timeout_is_bounded_by_shutdown_timeout() -> None:
    sink = ListSink()
    sink.gate.clear()
    shipper = make(sink, shutdown_timeout=0.2)
    put(shipper, 1)
    started = time.monotonic()
    assert shipper.flush() is False
    assert time.monotonic() - started < 1.5
    sink.gate.set()
    shipper.shutdown(1)


@pytest.mark.parametrize("policy", ["drop-new", "drop-old"])
def test_full_buffer_counts_every_record_exactly(policy: str) -> None:
    sink = ListSink()
    sink.gate.clear()  # the worker holds its first batch; nothing else drains
    shipper = make(sink, queue_size=50, batch_size=10, overflow=policy)
    put(shipper, -1)
    while sink.calls == 0:
        time.sleep(0.001)
    emitted = 1 + 500
    for i in range(500):
        put(shipper, i)
    stats = shipper.stats()
    assert stats["enqueued"] + stats["dropped"] == emitted
    assert stats["pending"] <= 50
    sink.gate.set()
    assert shipper.flush(5)
    stats = shipper.stats()
    assert stats["enqueued"] + stats["dropped"] == emitted
    assert stats["sent"] == stats["enqueued"] == len(sink.records)
    kept = sink.records[1:]
    if policy == "drop-new":
        assert kept == list(range(len(kept)))  # the first ones
    else:
        assert kept == list(range(500 - len(kept), 500))  # the newest ones
    shipper.shutdown(1)


def test_queue_size_bounds_the_buffer_and_the_batch_being_retried_together() -> None:
    sink = ListSink()
    sink.fail_next = 10**9
    shipper = make(sink, queue_size=30, batch_size=20)
    for i in range(20):
        put(shipper, i)
    deadline = time.monotonic() + 2
    while shipper.stats()["retries"] < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    for i in range(20, 100):
        put(shipper, i)
    stats = shipper.stats()
    assert stats["pending"] == 30
    assert stats["dropped"] == 70
    sink.fail_next = 0
    assert shipper.flush(5)
    assert sink.records == list(range(30))
    shipper.shutdown(1)


def test_failed_writes_are_retried_with_growing_backoff_and_keep_order() -> None:
    sink = ListSink()
    sink.fail_next = 6
    shipper = make(sink, batch_size=5)
    times: list[float] = []
    original = sink.write

    def timed(batch: list[Any]) -> None:
        times.append(time.monotonic())
        original(batch)

    sink.write = timed  # type: ignore[method-assign]
    for i in range(12):
        put(shipper, i)
    assert shipper.flush(5)
    assert sink.records == list(range(12))
    stats = shipper.stats()
    assert stats["retries"] == 6 and stats["errors"] == 6
    assert stats["last_error"] == "ConnectionError: down"
    gaps = [b - a for a, b in itertools.pairwise(times[:7])]
    assert gaps[-1] > gaps[0]  # backoff grows (0.001 s doubling, capped at 0.01 s)
    assert max(gaps) < 0.5
    shipper.shutdown(1)


def test_backoff_is_capped() -> None:
    shipper = make(ListSink())
    shipper.retry_base, shipper.retry_cap = 0.01, 0.05
    sink = shipper.sink
    sink.fail_next = 12
    put(shipper, 1)
    started = time.monotonic()
    assert shipper.flush(5)
    # 12 waits of at most 0.05 s each; uncapped doubling would take > 20 s.
    assert time.monotonic() - started < 1.5
    shipper.shutdown(1)


class PartialSink(ListSink):
    """Stores the first half, refuses one record for good, asks to retry the rest."""

    def __init__(self) -> None:
        super().__init__()
        self.partial_once = True

    def write(self, batch: list[Any]) -> None:
        if self.partial_once:
            self.partial_once = False
            half = len(batch) // 2
            self.batches.append(batch[:half])
            raise WriteError("OOM", remaining=batch[half + 1 :], lost=1)
        super().write(batch)


def test_a_partial_write_retries_only_what_was_not_stored() -> None:
    sink = PartialSink()
    shipper = make(sink, batch_size=10)
    for i in range(10):
        put(shipper, i)
    assert shipper.flush(5)
    # The first batch may hold fewer than 10 (the worker can start early);
    # whatever its size, its refused record is lost and nothing is repeated.
    assert len(sink.records) == 9
    assert sink.records == sorted(set(sink.records))
    assert len(set(range(10)) - set(sink.records)) == 1
    stats = shipper.stats()
    assert stats["sent"] == 9 and stats["failed"] == 1
    shipper.shutdown(1)


def test_a_record_that_cannot_be_encoded_is_counted_not_fatal() -> None:
    sink = ListSink()

    def encode(item: Any) -> Any:
        if item == "bad":
            raise ValueError("cannot")
        return item

    shipper = Shipper(sink, encode, flush_interval=0.01)
    for item in ("a", "bad", "b"):
        put(shipper, item)
    assert shipper.flush(2)
    assert sink.records == ["a", "b"]
    assert shipper.stats()["errors"] == 1
    assert "cannot encode" in shipper.stats()["last_error"]
    shipper.shutdown(1)


def test_shutdown_with_a_dead_sink_returns_within_its_timeout() -> None:
    sink = ListSink()
    sink.fail_next = 10**9
    shipper = make(sink)
    for i in range(10):
        put(shipper, i)
    started = time.monotonic()
    assert shipper.shutdown(0.3) is False
    assert time.monotonic() - started < 1.5
    assert shipper.pending() == 10


def test_shutdown_with_a_hung_sink_returns_within_its_timeout() -> None:
    sink = ListSink()
    sink.gate.clear()
    shipper = make(sink)
    put(shipper, 1)
    started = time.monotonic()
    assert shipper.shutdown(0.3) is False
    assert time.monotonic() - started < 1.5
    sink.gate.set()


def test_records_after_shutdown_start_a_new_worker() -> None:
    sink = ListSink()
    shipper = make(sink)
    put(shipper, 1)
    assert shipper.shutdown(2)
    put(shipper, 2)
    assert shipper.flush(2)
    assert sink.records == [1, 2]
    shipper.shutdown(1)


def test_worker_sleeps_without_polling_when_idle() -> None:
    sink = ListSink()
    shipper = make(sink)
    put(shipper, 1)
    assert shipper.flush(2)
    time.sleep(0.05)
    calls = sink.calls
    cpu_before = time.process_time()
    time.sleep(0.5)
    # A polling worker would spend a good part of the half second; a waiting
    # one spends nothing and leaves the idle flag up for the callers.
    assert time.process_time() - cpu_before < 0.05
    assert shipper.idle is True
    assert sink.calls == calls
    shipper.shutdown(1)


def test_after_fork_the_child_starts_empty_with_fresh_state() -> None:
    sink = ListSink()
    sink.gate.clear()
    shipper = make(sink)
    for i in range(5):
        put(shipper, i)
    forked = []
    sink.after_fork = lambda: forked.append(True)  # type: ignore[attr-defined]
    shipper.after_fork()  # what os.register_at_fork runs in a child
    assert shipper.pending() == 0
    assert shipper.idle is True
    assert shipper.stats()["enqueued"] == 0
    assert forked == [True]
    sink.gate.set()


def test_flush_waits_for_a_batch_the_worker_is_still_encoding() -> None:
    """Between taking a batch from the buffer and holding it as unsent, the
    worker encodes it: the records are pending then, not gone."""
    started, release = threading.Event(), threading.Event()

    def slow_encode(item: Any) -> Any:
        started.set()
        release.wait(5)
        return item

    sink = ListSink()
    shipper = Shipper(sink, slow_encode, flush_interval=0.01)
    put(shipper, 1)
    assert started.wait(5)  # the record is in the worker's hands, being encoded
    assert shipper.pending() == 1
    assert shipper.flush(0.2) is False  # not written yet: flush must not say it is
    release.set()
    assert shipper.flush(5) and sink.records == [1]
    shipper.shutdown(1)


# -- a record the sink can never accept ---------------------------------------


class RefusingSink(ListSink):
    """Like a broker that closes the channel on one record: what came before
    it is stored, the rest is handed back as suspect (``raw``: raises a bare
    data error instead, against the contract, after storing part)."""

    def __init__(self, poison: Any, *, raw: bool = False) -> None:
        super().__init__()
        self.poison = poison
        self.raw = raw
        self.writes: list[list[Any]] = []

    def write(self, batch: list[Any]) -> None:
        self.writes.append(list(batch))
        if self.poison not in batch:
            return super().write(batch)
        i = batch.index(self.poison)
        self.batches.append(batch[:i])
        if self.raw:
            raise struct.error("ubyte format requires 0 <= number <= 255")
        raise WriteError("the broker closed the channel", batch[i:], suspect=True)


def one_batch(shipper: Shipper, items: list[Any]) -> None:
    """Hand ``items`` to the worker as a single batch."""
    shipper.buffer.extend(items)
    shipper.wake()


def test_a_record_the_sink_never_accepts_is_skipped_and_no_neighbour_is_written_twice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sink = RefusingSink("poison")
    shipper = make(sink, batch_size=100)
    items = [*range(40), "poison", *range(40, 100)]
    with caplog.at_level(logging.WARNING, logger="redis_logstream"):
        one_batch(shipper, items)
        shipper.flush(5)
    assert sink.records == list(range(100))
    assert sink.writes.count(["poison"]) == shipper.poison_attempts  # alone, then skipped
    stats = shipper.stats()
    assert stats["sent"] == 100 and stats["failed"] == 1 and stats["pending"] == 0
    reports = [r.getMessage() for r in caplog.records if "can never be written" in r.getMessage()]
    assert len(reports) == 1 and "1 records" in reports[0]
    shipper.shutdown(1)


def test_a_data_error_after_part_of_a_batch_was_stored_repeats_no_record_more_than_once() -> None:
    sink = RefusingSink("poison", raw=True)
    shipper = make(sink, batch_size=100)
    one_batch(shipper, [*range(40), "poison", *range(40, 100)])
    shipper.flush(5)
    records = sink.records
    assert list(dict.fromkeys(records)) == list(range(100))
    assert max(records.count(r) for r in range(100)) == 2  # not once per retry, forever
    assert shipper.stats()["failed"] == 1 and shipper.pending() == 0
    shipper.shutdown(1)


class SuspectThenDownSink(ListSink):
    """One suspect failure, then a connection that fails a few times."""

    def __init__(self) -> None:
        super().__init__()
        self.suspect_once = True

    def write(self, batch: list[Any]) -> None:
        if self.suspect_once:
            self.suspect_once = False
            self.fail_next = 2 * Shipper.poison_attempts
            raise WriteError("channel closed", batch, suspect=True)
        super().write(batch)


def test_a_connection_failing_while_records_go_one_by_one_never_skips_one() -> None:
    sink = SuspectThenDownSink()
    shipper = make(sink, batch_size=10)
    one_batch(shipper, list(range(10)))
    assert shipper.flush(5)
    assert sink.records == list(range(10))
    stats = shipper.stats()
    assert stats["failed"] == 0 and stats["sent"] == 10
    shipper.shutdown(1)
