"""Unit tests of redis_logstream.context: the log context variable and its helpers.

No Redis and no network: these tests only touch the context variable.
"""

from __future__ import annotations

import asyncio
import re
import threading

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.utils.functional import SimpleLazyObject

from redis_logstream import (
    get_log_context,
    get_user_context,
    job_id_factory,
    log_context,
    reset_log_context,
    set_log_context,
    user_id_context,
)
from redis_logstream.context import MAX_CONTEXT_LENGTH, internal_context

INVALID_CONTEXTS = [
    pytest.param(None, id="None"),
    pytest.param(42, id="int"),
    pytest.param(b"User.alice", id="bytes"),
    pytest.param("", id="empty"),
    pytest.param("x" * 129, id="129-chars"),
    pytest.param("global", id="reserved-global"),
]


@pytest.fixture(autouse=True)
def _no_context_leaks():
    """Every test starts and must end outside any context."""
    assert user_id_context.get() is None
    yield
    assert user_id_context.get() is None, "a test left a log context behind"


class Member:
    """A custom user model look-alike whose USERNAME_FIELD is ``email``."""

    USERNAME_FIELD = "email"
    is_anonymous = False
    is_authenticated = True

    def __init__(self, email: str) -> None:
        self.email = email

    def get_username(self) -> str:
        return getattr(self, self.USERNAME_FIELD)


# -- set / reset / get -------------------------------------------------------


def test_get_log_context_is_none_outside_any_context():
    assert get_log_context() is None


def test_set_log_context_sets_and_reset_restores_the_previous_value():
    token = set_log_context("User.alice")
    try:
        assert get_log_context() == "User.alice"
        assert user_id_context.get() == "User.alice"
        inner = set_log_context("job_1")
        assert get_log_context() == "job_1"
        reset_log_context(inner)
        assert get_log_context() == "User.alice"
    finally:
        reset_log_context(token)
    assert get_log_context() is None


def test_set_log_context_returns_a_token_of_the_public_variable():
    token = set_log_context("User.alice")
    try:
        assert token.var is user_id_context
        assert token.old_value is token.MISSING
    finally:
        reset_log_context(token)


# -- validation --------------------------------------------------------------


@pytest.mark.parametrize("value", INVALID_CONTEXTS)
def test_set_log_context_rejects_invalid_values_at_once(value):
    with pytest.raises(ValueError):
        set_log_context(value)
    assert get_log_context() is None


@pytest.mark.parametrize("value", INVALID_CONTEXTS)
def test_log_context_rejects_invalid_values_when_built(value):
    with pytest.raises(ValueError):
        log_context(value)


@pytest.mark.parametrize("value", INVALID_CONTEXTS)
def test_log_context_decorator_rejects_invalid_values_at_decoration_time(value):
    called = []
    with pytest.raises(ValueError):

        @log_context(value)
        def job() -> None:  # pragma: no cover - never decorated
            called.append(True)

    assert called == []


def test_set_log_context_rejects_none_with_a_hint():
    with pytest.raises(ValueError) as info:
        set_log_context(None)  # type: ignore[arg-type]
    message = str(info.value)
    assert "token" in message
    assert "log_context" in message


def test_set_log_context_rejects_the_global_name_naming_it():
    with pytest.raises(ValueError, match="global"):
        set_log_context("global")


def test_set_log_context_rejects_129_characters_naming_the_limit():
    with pytest.raises(ValueError, match="128"):
        set_log_context("a" * 129)


def test_set_log_context_accepts_exactly_128_characters():
    value = "a" * MAX_CONTEXT_LENGTH
    assert MAX_CONTEXT_LENGTH == 128
    token = set_log_context(value)
    try:
        assert get_log_context() == value
    finally:
        reset_log_context(token)


def test_set_log_context_accepts_one_character_and_unsafe_characters():
    for value in ("a", "User.bob smith", "*?[]{}%\n", "Ünïcødé 🎉", "GLOBAL", "global2"):
        token = set_log_context(value)
        try:
            assert get_log_context() == value
        finally:
            reset_log_context(token)


# -- log_context as a context manager ----------------------------------------


def test_log_context_sets_the_context_inside_the_block_and_returns_it():
    with log_context("User.alice") as value:
        assert value == "User.alice"
        assert get_log_context() == "User.alice"
    assert get_log_context() is None


def test_log_context_nests_and_restores_each_outer_value():
    with log_context("outer"):
        with log_context("middle"):
            with log_context("inner"):
                assert get_log_context() == "inner"
            assert get_log_context() == "middle"
        assert get_log_context() == "outer"
    assert get_log_context() is None


def test_log_context_restores_the_previous_context_on_exception():
    with log_context("outer"):
        with pytest.raises(RuntimeError, match="boom"), log_context("inner"):
            assert get_log_context() == "inner"
            raise RuntimeError("boom")
        assert get_log_context() == "outer"
    assert get_log_context() is None


def test_log_context_does_not_swallow_exceptions():
    with pytest.raises(KeyError), log_context("User.alice"):
        raise KeyError("x")


def test_log_context_instance_can_be_reentered():
    ctx = log_context("User.alice")
    with log_context("outer"):
        with ctx:
            with ctx:
                assert get_log_context() == "User.alice"
            assert get_log_context() == "User.alice"
        assert get_log_context() == "outer"
        with ctx:
            assert get_log_context() == "User.alice"
        assert get_log_context() == "outer"


# -- log_context as a decorator ----------------------------------------------


def test_log_context_decorates_a_sync_function():
    seen = []

    @log_context("nightly-import")
    def job(a: int, *, b: int) -> int:
        seen.append(get_log_context())
        return a + b

    assert job(1, b=2) == 3
    assert seen == ["nightly-import"]
    assert get_log_context() is None


def test_log_context_decorator_keeps_the_function_name_and_doc():
    @log_context("job")
    def my_job() -> None:
        """Docs of my job."""

    assert my_job.__name__ == "my_job"
    assert my_job.__doc__ == "Docs of my job."


def test_log_context_decorated_sync_function_restores_context_on_exception():
    @log_context("failing-job")
    def job() -> None:
        assert get_log_context() == "failing-job"
        raise ValueError("bad")

    with log_context("caller"):
        with pytest.raises(ValueError, match="bad"):
            job()
        assert get_log_context() == "caller"


def test_log_context_decorated_function_sets_the_context_on_every_call():
    calls = []

    @log_context("job")
    def job() -> None:
        calls.append(get_log_context())

    job()
    with log_context("caller"):
        job()
    job()
    assert calls == ["job", "job", "job"]


def test_log_context_decorates_an_async_function_across_awaits():
    seen = []

    @log_context("async-job")
    async def job(x: int) -> int:
        seen.append(get_log_context())
        await asyncio.sleep(0)
        seen.append(get_log_context())
        await asyncio.sleep(0.001)
        seen.append(get_log_context())
        return x * 2

    assert asyncio.iscoroutinefunction(job)
    assert asyncio.run(job(21)) == 42
    assert seen == ["async-job"] * 3
    assert get_log_context() is None


def test_log_context_decorated_async_function_restores_the_callers_context():
    @log_context("async-job")
    async def job() -> str | None:
        return get_log_context()

    async def main() -> tuple[str | None, str | None, str | None]:
        with log_context("caller"):
            before = get_log_context()
            inside = await job()
            after = get_log_context()
        return before, inside, after

    assert asyncio.run(main()) == ("caller", "async-job", "caller")


def test_log_context_decorated_async_function_restores_context_on_exception():
    @log_context("async-job")
    async def job() -> None:
        await asyncio.sleep(0)
        raise LookupError("gone")

    async def main() -> str | None:
        with log_context("caller"):
            with pytest.raises(LookupError):
                await job()
            return get_log_context()

    assert asyncio.run(main()) == "caller"


# -- isolation between threads and tasks ------------------------------------


def test_contexts_are_isolated_between_threads():
    barrier = threading.Barrier(2, timeout=5)
    seen: dict[str, list[str | None]] = {}
    errors: list[BaseException] = []

    def worker(name: str) -> None:
        try:
            seen[name] = [get_log_context()]
            with log_context(f"User.{name}"):
                barrier.wait()  # both threads are inside their own context now
                seen[name].append(get_log_context())
                barrier.wait()
            seen[name].append(get_log_context())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    with log_context("main-thread"):
        threads = [threading.Thread(target=worker, args=(n,)) for n in ("alice", "bob")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert get_log_context() == "main-thread"
    assert errors == []
    assert seen == {
        "alice": [None, "User.alice", None],
        "bob": [None, "User.bob", None],
    }


def test_contexts_are_isolated_between_asyncio_tasks():
    async def task(name: str, started: asyncio.Event, other_started: asyncio.Event) -> list:
        with log_context(f"User.{name}"):
            started.set()
            await other_started.wait()  # the other task has set its own context
            await asyncio.sleep(0)
            return [get_log_context()]

    async def main() -> tuple[list, list, str | None]:
        a_started, b_started = asyncio.Event(), asyncio.Event()
        with log_context("parent"):
            a = asyncio.create_task(task("alice", a_started, b_started))
            b = asyncio.create_task(task("bob", b_started, a_started))
            results = await asyncio.gather(a, b)
            return results[0], results[1], get_log_context()

    assert asyncio.run(main()) == (["User.alice"], ["User.bob"], "parent")


def test_a_task_inherits_the_context_it_was_created_in_but_cannot_change_the_parents():
    async def child() -> str | None:
        seen = get_log_context()
        set_log_context("changed-in-child")  # the token dies with the task's context copy
        return seen

    async def main() -> tuple[str | None, str | None]:
        with log_context("parent"):
            inherited = await asyncio.create_task(child())
            return inherited, get_log_context()

    assert asyncio.run(main()) == ("parent", "parent")


# -- internal context --------------------------------------------------------


def test_get_log_context_is_none_inside_internal_context():
    with log_context("User.alice"):
        with internal_context():
            assert get_log_context() is None
            assert user_id_context.get() is not None  # the marker, not a context
        assert get_log_context() == "User.alice"


def test_internal_context_restores_on_exception():
    with log_context("User.alice"):
        with pytest.raises(RuntimeError), internal_context():
            raise RuntimeError
        assert get_log_context() == "User.alice"


# -- users -------------------------------------------------------------------


def test_get_user_context_names_model_class_and_username():
    assert get_user_context(User(username="alice")) == "User.alice"


def test_get_user_context_sees_through_request_users_lazy_wrapper():
    user = User(username="alice")
    lazy = SimpleLazyObject(lambda: user)
    assert type(lazy).__name__ == "SimpleLazyObject"
    assert get_user_context(lazy) == "User.alice"


def test_get_user_context_uses_the_custom_username_field():
    assert get_user_context(Member("x@y.z")) == "Member.x@y.z"


def test_get_user_context_uses_the_custom_username_field_through_the_lazy_wrapper():
    assert get_user_context(SimpleLazyObject(lambda: Member("x@y.z"))) == "Member.x@y.z"


def test_get_user_context_rejects_the_anonymous_user():
    with pytest.raises(ValueError, match="anonymous"):
        get_user_context(AnonymousUser())


def test_get_user_context_rejects_the_anonymous_user_through_the_lazy_wrapper():
    with pytest.raises(ValueError):
        get_user_context(SimpleLazyObject(AnonymousUser))


def test_get_user_context_rejects_a_user_without_username():
    with pytest.raises(ValueError):
        get_user_context(User(username=""))


def test_get_user_context_result_can_be_set_as_context():
    with log_context(get_user_context(User(username="alice"))):
        assert get_log_context() == "User.alice"


# -- jobs --------------------------------------------------------------------


def test_job_id_factory_returns_job_and_32_hex_digits():
    assert re.fullmatch(r"job_[0-9a-f]{32}", job_id_factory())


def test_job_id_factory_honours_the_prefix():
    assert re.fullmatch(r"import_[0-9a-f]{32}", job_id_factory("import"))
    assert re.fullmatch(r"import_[0-9a-f]{32}", job_id_factory(prefix="import"))


def test_job_id_factory_returns_unique_ids():
    ids = {job_id_factory() for _ in range(1000)}
    assert len(ids) == 1000


def test_job_id_factory_result_is_a_valid_context():
    with log_context(job_id_factory()) as value:
        assert get_log_context() == value
