"""Fuzzing the whole path: logging call -> RedisLogHandler -> redis-server -> JSON.

Hypothesis draws batches of logging calls: messages of any text or none at
all, %-args that do not fit (counts, types, values whose str() or repr()
raise), exc_info (instances, tuples, the active exception; chained, or whose
__str__ raises), extra fields (some break the formatter), stack_info, custom
levels, odd logger names, and log contexts set with set_log_context or
log_context (block or decorator), valid or not.  Two real handlers (default
max_message_bytes, and 256) ship each batch to the session's redis-server.
Then: no call raised and handleError was never called (raiseExceptions keeps
its default); every record is stored once, in order, in the global stream
and its context's, and published with the same bytes; each entry is UTF-8
JSON that decodes to the record (message as the formatter makes it, cut and
marked when too long, described when unformattable; level, logger, context,
timestamp, pid); an invalid context raises ValueError at once and changes
nothing; every key and channel is safe and no two contexts share one.

test_naming.py and test_wire.py fuzz the names and the encoder alone; this
file goes end to end.  ``REDIS_LOGSTREAM_FUZZ=deep`` runs 3000 random examples.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from redis_logstream import RedisLogHandler, log_context, reset_log_context, set_log_context
from redis_logstream.context import user_id_context
from redis_logstream.shipping.wire import MAX_NAME_BYTES
from support.helpers import Handlers

settings.register_profile(
    "fuzz-ci",
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz-deep", settings.get_profile("fuzz-ci"), max_examples=3000, derandomize=False
)
FUZZ = settings(settings.get_profile(f"fuzz-{os.environ.get('REDIS_LOGSTREAM_FUZZ', 'ci')}"))

WIRE_KEYS = {"message", "level", "levelno", "timestamp", "logger", "context", "pod", "pid"}
CUT = re.compile(r"(.*) \[\.\.\. (\d+) bytes cut\]", re.DOTALL)
ENCODED = re.compile(r"(?:[A-Za-z0-9._\-@:]|%[0-9A-F]{2})+")
UNSAFE = set("*?[]\\{}")
#: LogRecord attributes: extra= may not name them (logging itself raises KeyError).
STANDARD = {*logging.makeLogRecord({}).__dict__, "message", "asctime"}
PREFIXES = {"fuzz": 65536, "fuzzcut": 256}  # channel_prefix -> max_message_bytes


#: What the examples exercised, printed as a FIGURE line (hypothesis events too).
TALLY: Counter[str] = Counter()


def note(what: str) -> None:
    TALLY[what] += 1
    event(what)


def clean(text: str) -> str:
    """What the wire promises for lone surrogates: visible \\udcXX escapes."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def describe(
    value: object, renders: tuple[Callable[[object], str], ...] = (str, repr)
) -> str | None:
    """The first of ``renders`` that works on ``value``, else None."""
    for render in renders:
        try:
            return render(value)
        except Exception:
            continue
    return None


class StrRaises(Exception):
    """Also a plain value: its str() raises, its repr() works."""

    def __str__(self) -> str:
        raise RuntimeError("__str__ raised")


class Unprintable(StrRaises):
    def __repr__(self) -> str:
        raise RuntimeError("__repr__ raised")


class ExtrasFormatter(logging.Formatter):
    """A site's format plus the record's extra fields: an extra whose str()
    raises makes it fail, like a buggy formatter would."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = sorted(k for k in record.__dict__ if k not in STANDARD)
        return text + "".join(f" {k}={record.__dict__[k]}" for k in extras)


# -- strategies ------------------------------------------------------------------

characters = st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr))  # lone surrogates
text = st.text(characters, max_size=40)
values = st.one_of(
    st.integers(),
    st.floats(),
    text,
    st.binary(max_size=12),
    st.none(),
    st.booleans(),
    st.builds(Unprintable),
    st.builds(StrRaises),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.sampled_from(["a", "b"]), st.integers() | text, max_size=2),
)
directives = st.sampled_from(
    ["%s", "%d", "%r", "%(a)s", "%(b)d", "%%", "%", "%x", "%.2f", "%-5s", "%c", "%*d"]
)
formats = st.lists(text | directives, max_size=6).map("".join)
EXCEPTIONS: dict[str, Callable[[str], BaseException]] = {
    "value": ValueError,
    "key": KeyError,
    "str-raises": StrRaises,
    "nothing-prints": Unprintable,
    "os": lambda t: OSError(2, t),
    "args-unprintable": lambda t: RuntimeError(t, Unprintable()),
}


def raised(kind: str, message: str, cause: str | None) -> BaseException:
    """An exception as code meets it: raised, with a traceback, maybe chained."""
    exc = EXCEPTIONS[kind](message)
    try:
        if cause is None:
            raise exc
        try:
            raise EXCEPTIONS[cause](message[::-1])
        except BaseException as inner:
            raise exc from inner
    except BaseException as caught:
        return caught


exceptions = st.builds(
    raised,
    st.sampled_from(sorted(EXCEPTIONS)),
    text,
    st.none() | st.sampled_from(sorted(EXCEPTIONS)),
)
messages = st.one_of(formats, formats, values, exceptions)


@st.composite
def fitting(draw: st.DrawFn) -> tuple[Any, tuple[Any, ...]]:
    """A message and %-args that match in number (their str() may still fail)."""
    if draw(st.booleans()):
        return draw(text) + "%(a)s" + draw(text), (draw(st.fixed_dictionaries({"a": values})),)
    args = draw(st.lists(values, max_size=3))
    parts = [draw(text) + draw(st.sampled_from(["%s", "%r", "%-3s", "%%%s"])) for _ in args]
    return "".join(parts) + draw(text), tuple(args)


calls = st.one_of(fitting(), st.tuples(messages, st.lists(values, max_size=3).map(tuple)))
valid_contexts = st.one_of(
    st.sampled_from(
        [
            "User.alice",
            "job_1b4e",
            "a*b",
            "a%2Ab",
            "a b",
            "global ",
            "Global",
            "%",
            "%25",
            "logs:global",
            "{tag}",
            "e\u0301",
            "x" * 128,
        ]
    ),
    st.text(characters, min_size=1, max_size=128).filter(lambda c: c != "global"),
)
invalid_contexts = st.one_of(
    st.sampled_from(["", "global"]),
    st.text(characters, min_size=129, max_size=200),
    st.none(),
    st.integers(),
    st.binary(min_size=1, max_size=8),
    st.lists(st.integers()),
)


@dataclass
class Call:
    logger: str
    level: int
    msg: Any
    args: tuple[Any, ...]
    exc: BaseException | None
    exc_form: str
    extra: dict[str, Any]
    stack_info: bool
    how: str  # "" (the outer context), "with", "set", "decorator", "invalid-set", "invalid-with"
    context: Any = None


@st.composite
def batches(draw: st.DrawFn) -> tuple[str | None, list[Call]]:
    """An outer context (or none) and calls, some under contexts of a small pool."""
    pool = draw(st.lists(valid_contexts, min_size=1, max_size=4))
    outer, batch = draw(st.none() | st.sampled_from(pool)), []
    for _ in range(draw(st.integers(1, 8))):
        how = draw(
            st.sampled_from(["", "", "with", "set", "decorator", "invalid-set", "invalid-with"])
        )
        context = None
        if how.startswith("invalid"):
            context = draw(invalid_contexts)
        elif how:
            context = draw(st.sampled_from(pool))
        exc_form = draw(st.sampled_from(["none", "none", "instance", "tuple", "active"]))
        msg, args = draw(calls)
        batch.append(
            Call(
                # "fuzz.n": a name such as "fuzz..x" would not be a child of "fuzz".
                logger="fuzz.n" + draw(st.text(characters, min_size=1, max_size=12)),
                level=draw(st.sampled_from([10, 20, 30, 40, 50]) | st.integers(1, 60)),
                msg=msg,
                args=args,
                exc=None if exc_form == "none" else draw(exceptions),
                exc_form=exc_form,
                extra=draw(
                    st.dictionaries(
                        st.text(characters, min_size=1, max_size=8).filter(
                            lambda k: k not in STANDARD
                        ),
                        values,
                        max_size=3,
                    )
                ),
                stack_info=draw(st.booleans()),
                how=how,
                context=context,
            )
        )
    return outer, batch


# -- running a batch ---------------------------------------------------------------


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def perform(call: Call, outer: str | None) -> str | None:
    """Make the logging call; return the context its record must carry."""
    log, exc, how, context = logging.getLogger(call.logger), call.exc, call.how, call.context
    exc_info: Any = exc
    if exc is not None and call.exc_form == "tuple":
        exc_info = (type(exc), exc, exc.__traceback__)

    def emit() -> None:
        try:
            if exc is not None and call.exc_form == "active":
                raise exc
        except BaseException:
            log.log(
                call.level,
                call.msg,
                *call.args,
                exc_info=True,
                extra=call.extra,
                stack_info=call.stack_info,
            )
        else:
            log.log(
                call.level,
                call.msg,
                *call.args,
                exc_info=exc_info,
                extra=call.extra,
                stack_info=call.stack_info,
            )

    note(f"calls with context {how or 'outer'}")
    if exc is not None:
        note(f"calls with exc_info ({call.exc_form})")
    if how.startswith("invalid"):
        with pytest.raises(ValueError, match="context") as info:
            (set_log_context if how == "invalid-set" else log_context)(context)
        assert len(str(info.value)) > 20  # says what is wrong, not only that
        how = ""
    if how == "with":
        with log_context(context):
            emit()
    elif how == "set":
        token = set_log_context(context)
        try:
            emit()
        finally:
            reset_log_context(token)
    elif how == "decorator":
        log_context(context)(emit)()
    else:
        emit()
    return context if how else outer


@dataclass
class Rig:
    """Two handlers on the ``fuzz`` logger, a capture after them, a listener."""

    client: redis.Redis
    handlers: dict[str, RedisLogHandler]
    capture: Capture
    pubsub: Any
    handle_errors: list[logging.LogRecord] = field(default_factory=list)
    owners: dict[str, str] = field(default_factory=dict)  # channel -> its one context

    def published(self, count: int = 1 << 30, wait: float = 10.0) -> list[tuple[str, bytes]]:
        """(channel, data) of the next ``count`` messages, or those within ``wait`` s."""
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + wait
        while len(got) < count:
            message = self.pubsub.get_message(timeout=min(wait, 0.5))
            if message and message["type"] == "pmessage":
                got.append((message["channel"].decode("ascii"), message["data"]))
            elif message is None and time.monotonic() >= deadline:
                break
        return got

    def stream(self, key: str) -> list[bytes]:
        """The ``data`` of each entry of a stream, oldest first."""
        entries: Any = self.client.xrange(key)
        return [fields[b"data"] for _, fields in entries]

    def keys(self, pattern: str) -> set[str]:
        found: Any = self.client.keys(pattern)  # the test's own server: KEYS is fine
        return {key.decode("ascii") for key in found}

    def stray(self, wait: float = 0.005) -> list[tuple[str, bytes]]:
        return self.published(wait=wait)

    def attach(self) -> None:
        """Only ours on "fuzz": pytest adds its capture handler to every logger that
        does not propagate when a test starts, and that one raises on bad records."""
        logger = logging.getLogger("fuzz")
        logger.handlers[:] = [*self.handlers.values(), self.capture]
        logger.setLevel(1)
        logger.propagate = False


@pytest.fixture
def rig(handlers: Handlers, redis_url: str, redis_client: redis.Redis) -> Iterator[Rig]:
    formatter = ExtrasFormatter("%(levelname)s %(name)s: %(message)s")
    made = {
        prefix: handlers(url=redis_url, channel_prefix=prefix, max_message_bytes=limit)
        for prefix, limit in PREFIXES.items()
    }
    pubsub = redis_client.pubsub()
    pubsub.psubscribe(*(f"{prefix}:*" for prefix in PREFIXES))
    rig = Rig(redis_client, made, Capture(), pubsub)
    for handler in made.values():
        handler.setFormatter(formatter)
        handler.handleError = rig.handle_errors.append  # type: ignore[method-assign,assignment]
    try:
        yield rig
    finally:
        logging.getLogger("fuzz").handlers.clear()
        pubsub.close()


def check_name(name: str, prefix: str) -> None:
    assert name.isascii() and name.isprintable(), name
    assert not UNSAFE & set(name) and " " not in name, name
    assert name.startswith(prefix + ":") and ENCODED.fullmatch(name[len(prefix) + 1 :]), name


def check_entry(
    raw: bytes,
    record: logging.LogRecord,
    context: str | None,
    limit: int,
    formatter: logging.Formatter,
) -> None:
    entry = json.loads(raw.decode("utf-8"), parse_constant=lambda c: pytest.fail(c))
    assert set(entry) in (WIRE_KEYS, WIRE_KEYS | {"truncated"}), entry
    for value in entry.values():
        if isinstance(value, str):
            value.encode("utf-8")  # no lone surrogate: any consumer can read it
    assert entry["levelno"] == record.levelno
    assert entry["level"] == clean(logging.getLevelName(record.levelno))
    assert entry["logger"] == clean(record.name)
    assert entry["context"] == (None if context is None else clean(context))
    assert entry["timestamp"] == record.created
    assert entry["pid"] == os.getpid() and isinstance(entry["pod"], str)
    message: str = entry["message"]
    assert len(message.encode("utf-8")) <= limit
    try:
        full: str | None = clean(formatter.format(record))
    except Exception:
        full = None  # the handler ships a description of the record instead
    note(
        f"records {'described' if full is None else 'formatted'} ({limit} bytes max)"
        + (", cut" if entry.get("truncated") else "")
    )
    cut = CUT.fullmatch(message) if entry.get("truncated") else None
    assert (cut is not None) == ("truncated" in entry), message
    kept = cut.group(1) if cut else message
    if full is not None:
        if cut:
            assert full.startswith(kept)
            assert len(kept.encode()) + int(cut.group(2)) == len(full.encode()) > limit
        else:
            assert message == full
    else:
        name = describe(record.msg)
        head = f"<unprintable {type(record.msg).__name__}>" if name is None else clean(name)
        assert kept.startswith(head) or head.startswith(kept), (message, head)
        assert cut or "unformattable" in message


def run_batch(rig: Rig, outer: str | None, calls: list[Call]) -> None:
    rig.attach()
    rig.client.flushall()
    assert rig.stray() == []  # nothing from the last example arrived late
    rig.capture.records.clear()
    token = None if outer is None else set_log_context(outer)
    try:
        contexts = [perform(call, outer) for call in calls]
    finally:
        if token is not None:
            reset_log_context(token)
    records = rig.capture.records
    assert len(records) == len(calls)
    for handler in rig.handlers.values():
        assert handler.flush(10), handler.stats()
    assert rig.handle_errors == []
    expected: dict[str, list[bytes]] = {}
    published = rig.published(sum(len(PREFIXES) * (1 + (c is not None)) for c in contexts))
    for prefix, handler in rig.handlers.items():
        names = handler.names
        stats = handler.stats()
        assert (stats["errors"], stats["failed"], stats["dropped"]) == (0, 0, 0), stats
        stored = rig.stream(names.global_stream)
        assert len(stored) == len(records)
        streams: dict[str, list[bytes]] = {names.global_stream: stored}
        expected[names.global_channel_name] = stored
        for raw, record, context in zip(stored, records, contexts, strict=True):
            check_entry(
                raw,
                record,
                context,
                handler.options.max_message_bytes,
                handler.formatter or logging.Formatter(),
            )
            if context is not None:
                streams.setdefault(names.stream(context), []).append(raw)
                expected.setdefault(names.channel(context), []).append(raw)
                owner = rig.owners.setdefault(names.channel(context), context)
                assert owner == context, f"{owner!r} and {context!r} share a channel"
        keys = rig.keys(f"stream:{prefix}:*")
        assert keys == set(streams)
        for key, wanted in streams.items():
            check_name(key.removeprefix("stream:"), prefix)
            assert rig.stream(key) == wanted
    by_channel: dict[str, list[bytes]] = {}
    for channel, data in published:
        check_name(channel, channel.split(":", 1)[0])
        by_channel.setdefault(channel, []).append(data)
    assert by_channel == expected


def test_any_logging_call_stores_its_record_as_json_on_safe_channels(rig: Rig) -> None:
    assert logging.raiseExceptions  # the default: a swallowed error would be printed

    TALLY.clear()

    @FUZZ
    @given(batch=batches())
    def run(batch: tuple[str | None, list[Call]]) -> None:
        note("batches")
        run_batch(rig, *batch)

    started = time.monotonic()
    run()
    print(
        f"\nFIGURE fuzz: {time.monotonic() - started:.1f} s, "
        + ", ".join(f"{n} {what}" for what, n in sorted(TALLY.items()))
    )


@FUZZ
@given(
    value=st.one_of(
        valid_contexts,
        invalid_contexts,
        st.builds(StrRaises),
        st.floats(),
        st.tuples(st.integers()),
        st.dictionaries(text, st.integers()),
    )
)
def check_raw_context(rig: Rig, value: Any) -> None:
    rig.attach()
    rig.client.flushall()
    rig.stray(wait=0)  # what the last example published: not looked at here
    handler = rig.handlers["fuzz"]
    before = handler.stats()["failed"]
    log = logging.getLogger("fuzz.raw")
    token = user_id_context.set(value)  # around the helpers: the variable is public
    try:
        log.warning("raw %s", "context")
    finally:
        user_id_context.reset(token)
    for each in rig.handlers.values():
        assert each.flush(10)
    assert rig.handle_errors == []
    stored = rig.stream(handler.names.global_stream)
    as_text = describe(value, (str,))  # what the encoder names a raw value by
    if as_text is None:  # nothing to name it by: a counted error, not an exception
        assert stored == [] and handler.stats()["failed"] == before + 1
        return
    assert len(stored) == 1
    shown = json.loads(stored[0])["context"]
    if value is None or len(clean(as_text).encode()) <= MAX_NAME_BYTES:
        assert shown == (None if value is None else clean(as_text))
    else:  # cut like a long message, and marked
        cut = CUT.fullmatch(shown)
        assert cut and clean(as_text).startswith(cut.group(1)), shown
        assert len(shown.encode()) <= MAX_NAME_BYTES and json.loads(stored[0])["truncated"]
    valid = isinstance(value, str) and 0 < len(value) <= 128 and value != "global"
    keys = rig.keys("stream:fuzz:*")
    context_keys = {handler.names.stream(value)} if valid else set()
    assert keys == {handler.names.global_stream} | context_keys


def test_a_context_variable_set_around_the_helpers_reaches_the_global_stream(rig: Rig) -> None:
    check_raw_context(rig)
