"""Unit tests of redis_logstream.conf: defaults < settings.REDIS_LOGSTREAM < kwargs.

No Redis: building a handler must not touch the network nor start a thread.
"""

from __future__ import annotations

import logging
import logging.config
import threading

import pytest

from redis_logstream import RedisLogHandler
from redis_logstream.conf import DEFAULTS, Options, resolve_options, site_setting

UNREACHABLE = "redis://127.0.0.1:1/0"

DESIGN_DEFAULTS = {
    "connection": "default",
    "url": None,
    "client": None,
    "channel_prefix": "logs",
    "global_channel": "global",
    "stream_prefix": "stream:",
    "stream_maxlen": 1000,
    "context_ttl": 3600,
    "global_ttl": 86400,
    "queue_size": 10000,
    "overflow": "drop-new",
    "shutdown_timeout": 2.0,
    "max_message_bytes": 65536,
}


@pytest.fixture
def no_site_settings(settings):
    """No settings.REDIS_LOGSTREAM at all."""
    if hasattr(settings, "REDIS_LOGSTREAM"):
        del settings.REDIS_LOGSTREAM
    return settings


@pytest.fixture
def handlers():
    """Handlers built by a test, closed at teardown."""
    built: list[logging.Handler] = []
    yield built
    for handler in built:
        handler.close()


# -- defaults ----------------------------------------------------------------


@pytest.mark.parametrize(("name", "value"), sorted(DESIGN_DEFAULTS.items()))
def test_default_matches_the_design_table(no_site_settings, name, value):
    assert getattr(Options(), name) == value
    assert DEFAULTS[name] == value
    assert getattr(resolve_options(), name) == value
    assert type(getattr(resolve_options(), name)) is type(value)


def test_batch_size_and_flush_interval_have_sane_defaults(no_site_settings):
    options = resolve_options()
    assert isinstance(options.batch_size, int) and options.batch_size >= 1
    assert isinstance(options.flush_interval, float) and 0 <= options.flush_interval <= 1.0
    assert options.batch_size <= options.queue_size


def test_defaults_cover_every_option_of_the_design_table():
    assert set(DESIGN_DEFAULTS) | {"batch_size", "flush_interval"} <= set(DEFAULTS)


def test_empty_site_settings_give_the_defaults(settings):
    settings.REDIS_LOGSTREAM = {}
    assert resolve_options() == Options()


# -- precedence --------------------------------------------------------------


def test_site_settings_override_defaults(settings):
    settings.REDIS_LOGSTREAM = {
        "QUEUE_SIZE": 5,
        "OVERFLOW": "drop-old",
        "CHANNEL_PREFIX": "site",
        "CONTEXT_TTL": None,
    }
    options = resolve_options()
    assert options.queue_size == 5
    assert options.overflow == "drop-old"
    assert options.channel_prefix == "site"
    assert options.context_ttl is None
    assert options.global_ttl == 86400  # untouched options keep their default


def test_handler_kwargs_override_site_settings(settings):
    settings.REDIS_LOGSTREAM = {"QUEUE_SIZE": 5, "OVERFLOW": "drop-old", "STREAM_MAXLEN": 50}
    options = resolve_options({"queue_size": 7, "overflow": "drop-new"})
    assert options.queue_size == 7
    assert options.overflow == "drop-new"
    assert options.stream_maxlen == 50  # from settings, not overridden


def test_handler_kwargs_override_site_settings_in_the_handler(settings, handlers):
    settings.REDIS_LOGSTREAM = {"QUEUE_SIZE": 5, "CHANNEL_PREFIX": "site"}
    handler = RedisLogHandler(url=UNREACHABLE, queue_size=9)
    handlers.append(handler)
    assert handler.options.queue_size == 9
    assert handler.options.channel_prefix == "site"
    assert handler.names.global_channel_name == "site:global"
    assert handler.shipper.queue_size == 9


def test_handler_kwarg_none_overrides_a_site_ttl(settings):
    settings.REDIS_LOGSTREAM = {"GLOBAL_TTL": 60}
    assert resolve_options({"global_ttl": None}).global_ttl is None


# -- unknown options ---------------------------------------------------------


def test_unknown_kwarg_raises_type_error_naming_it_and_suggesting_the_close_match():
    with pytest.raises(TypeError) as info:
        resolve_options({"queue_sise": 5})
    message = str(info.value)
    assert "queue_sise" in message
    assert "queue_size" in message.replace("queue_sise", "")


def test_unknown_site_setting_raises_type_error_naming_it_and_suggesting_the_close_match(
    settings,
):
    settings.REDIS_LOGSTREAM = {"QUEUE_SISE": 5}
    with pytest.raises(TypeError) as info:
        resolve_options()
    message = str(info.value)
    assert "queue_sise" in message.lower()
    assert "queue_size" in message.lower().replace("queue_sise", "")
    assert "REDIS_LOGSTREAM" in message


def test_unknown_option_far_from_any_name_raises_type_error_without_a_bogus_hint():
    with pytest.raises(TypeError, match="zzzzzz") as info:
        resolve_options({"zzzzzz": 1})
    assert "Did you mean" not in str(info.value)


def test_handler_with_a_misspelt_option_raises_type_error_at_construction():
    with pytest.raises(TypeError, match="queue_sise"):
        RedisLogHandler(url=UNREACHABLE, queue_sise=5)


# -- invalid values ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("queue_size", -1),
        ("queue_size", 0),
        ("queue_size", True),
        ("queue_size", 10.5),
        ("queue_size", "100"),
        ("batch_size", 0),
        ("stream_maxlen", 0),
        ("stream_maxlen", False),
        ("overflow", "drop-all"),
        ("overflow", None),
        ("flush_interval", -0.1),
        ("flush_interval", True),
        ("shutdown_timeout", -1),
        ("context_ttl", 0),
        ("global_ttl", 0),
        ("context_ttl", -5),
        ("context_ttl", True),
        ("max_message_bytes", 0),
        ("channel_prefix", ""),
        ("global_channel", ""),
        ("url", 42),
    ],
)
def test_invalid_value_raises_value_error_naming_the_option(name, value):
    with pytest.raises(ValueError, match=name):
        resolve_options({name: value})


def test_invalid_site_setting_raises_value_error_naming_the_option(settings):
    settings.REDIS_LOGSTREAM = {"QUEUE_SIZE": 0}
    with pytest.raises(ValueError, match="queue_size"):
        resolve_options()


@pytest.mark.parametrize(
    "key, value, says",
    [
        ("STREAM_HISTORY", -1, "an int >= 0"),
        ("STREAM_INBOX_BYTES", 1000, "an int >= 65536"),
        ("STREAM_HEARTBEAT", 0, "a number of seconds > 0"),
        ("CELERY", 1, "a bool"),
    ],
)
def test_a_bad_site_only_setting_says_what_it_must_be(settings, key, value, says):
    settings.REDIS_LOGSTREAM = {key: value}
    with pytest.raises(ValueError, match=f"{key}'] must be {says}, not {value!r}"):
        site_setting(key.lower())


def test_invalid_value_raises_at_handler_construction():
    with pytest.raises(ValueError, match="overflow"):
        RedisLogHandler(url=UNREACHABLE, overflow="drop-all")


@pytest.mark.parametrize("name", ["context_ttl", "global_ttl"])
def test_none_ttl_is_allowed(name):
    assert getattr(resolve_options({name: None}), name) is None


def test_zero_flush_interval_and_integer_seconds_are_allowed():
    options = resolve_options({"flush_interval": 0, "shutdown_timeout": 5})
    assert options.flush_interval == 0
    assert options.shutdown_timeout == 5


def test_options_are_frozen():
    options = resolve_options({"queue_size": 5})
    with pytest.raises(AttributeError):
        options.queue_size = 6  # type: ignore[misc]


# -- handlers: construction is cheap and silent ------------------------------


def test_constructing_a_handler_opens_no_connection_and_starts_no_thread(handlers):
    before = threading.active_count()
    handler = RedisLogHandler(url=UNREACHABLE, queue_size=5)
    handlers.append(handler)
    assert threading.active_count() == before
    assert handler.shipper._thread is None
    assert handler.shipper.sink._client is None
    assert handler.options.url == UNREACHABLE
    assert handler.options.queue_size == 5


@pytest.fixture
def restore_logging(monkeypatch):
    """Let a test run dictConfig without closing the session's handlers, and
    put the logging configuration back afterwards."""
    handlers = dict(logging._handlers)
    handler_list = list(logging._handlerList)
    loggers = {
        name: (logger.level, list(logger.handlers), logger.propagate, logger.disabled)
        for name, logger in logging.root.manager.loggerDict.items()
        if isinstance(logger, logging.Logger)
    }
    root = (logging.root.level, list(logging.root.handlers))
    # dictConfig flushes and closes every existing handler: keep them open.
    monkeypatch.setattr(logging, "shutdown", lambda handlerList=None: None)
    yield
    monkeypatch.undo()
    logging._handlers.clear()
    logging._handlers.update(handlers)
    logging._handlerList[:] = handler_list
    for name, (level, old_handlers, propagate, disabled) in loggers.items():
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.handlers[:] = old_handlers
        logger.propagate = propagate
        logger.disabled = disabled
    logging.root.setLevel(root[0])
    logging.root.handlers[:] = root[1]


def test_dictconfig_entry_builds_a_handler_with_its_options(restore_logging):
    name = "tests.test_conf.dictconfig"
    before = threading.active_count()
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "redis": {
                    "class": "redis_logstream.RedisLogHandler",
                    "level": "WARNING",
                    "url": UNREACHABLE,
                    "queue_size": 5,
                    "overflow": "drop-old",
                },
            },
            "loggers": {name: {"handlers": ["redis"], "level": "INFO", "propagate": False}},
        }
    )
    handler = logging.getLogger(name).handlers[0]
    try:
        assert isinstance(handler, RedisLogHandler)
        assert handler.level == logging.WARNING
        assert handler.options.url == UNREACHABLE
        assert handler.options.queue_size == 5
        assert handler.options.overflow == "drop-old"
        assert handler.shipper.queue_size == 5
        assert threading.active_count() == before
        assert handler.shipper._thread is None
    finally:
        handler.close()


def test_dictconfig_entry_with_a_misspelt_option_fails_naming_it(restore_logging):
    with pytest.raises(ValueError, match="redis") as info:
        logging.config.dictConfig(
            {
                "version": 1,
                "disable_existing_loggers": False,
                "handlers": {
                    "redis": {
                        "class": "redis_logstream.RedisLogHandler",
                        "url": UNREACHABLE,
                        "queue_sise": 5,
                    },
                },
            }
        )
    cause = info.value.__cause__
    assert isinstance(cause, TypeError)
    assert "queue_sise" in str(cause)
    assert "queue_size" in str(cause)


def test_a_site_setting_given_to_a_handler_says_where_it_belongs():
    with pytest.raises(TypeError, match=r"site setting.*settings\.REDIS_LOGSTREAM"):
        resolve_options({"celery": False})


def test_a_site_setting_of_the_wrong_type_is_refused(settings):
    settings.REDIS_LOGSTREAM = {"CELERY": "False"}
    with pytest.raises(ValueError, match=r"CELERY.*must be a bool"):
        site_setting("celery")
