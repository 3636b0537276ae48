"""Every import path users write keeps working, whatever the package layout."""

from __future__ import annotations

import logging
import logging.config
import subprocess
import sys
from pathlib import Path

import pytest

import redis_logstream

COMMANDS = ["consume_logs", "purge_log_context", "tail_logs"]


def test_every_name_in_all_imports():
    for name in redis_logstream.__all__:
        assert getattr(redis_logstream, name) is not None, name
    from redis_logstream import (  # noqa: F401
        RedisLogHandler,
        consume,
        get_log_context,
        get_user_context,
        job_id_factory,
        log_context,
        reset_log_context,
        set_log_context,
        user_id_context,
    )

    assert issubclass(RedisLogHandler, logging.Handler)
    assert callable(consume)
    assert set(redis_logstream.__all__) <= set(dir(redis_logstream))


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError):
        redis_logstream.no_such_name  # noqa: B018


def test_redis_handler_from_a_logging_dict():
    name = "test_public_api.dictconfig"
    logging.config.dictConfig(
        {
            "version": 1,
            "disable_existing_loggers": False,
            "handlers": {
                "redis": {
                    "class": "redis_logstream.RedisLogHandler",
                    "url": "redis://127.0.0.1:1/0",
                }
            },
            "loggers": {name: {"handlers": ["redis"], "propagate": False}},
        }
    )
    logger = logging.getLogger(name)
    try:
        (handler,) = logger.handlers
        assert isinstance(handler, redis_logstream.RedisLogHandler)
    finally:
        for handler in logger.handlers[:]:
            logger.removeHandler(handler)
            handler.close()


def test_amqp_handler():
    from redis_logstream.amqp import AmqpLogHandler
    from redis_logstream.shipping.handler import ShippingHandler

    assert issubclass(AmqpLogHandler, ShippingHandler)


def test_consumer_contract():
    from redis_logstream.consumers import Drop, Forward, HaltConsumer, LogEntry, Nack

    for value in (Drop, Forward, HaltConsumer, LogEntry, Nack):
        assert isinstance(value, type)


def test_django_and_celery_modules():
    from redis_logstream.middleware import LogContextMiddleware

    assert callable(LogContextMiddleware)
    import redis_logstream.celery
    import redis_logstream.urls

    assert redis_logstream.urls.urlpatterns
    assert callable(redis_logstream.celery.install_if_available)


def test_stream_tokens():
    from redis_logstream.tokens import InvalidStreamToken, make_stream_token, read_stream_token

    assert issubclass(InvalidStreamToken, Exception)
    assert read_stream_token(make_stream_token("job_1")) == "job_1"


def test_console_script_help():
    script = Path(sys.executable).with_name("redis-logstream")
    for command in ([str(script)], [sys.executable, "-m", "redis_logstream.cli"]):
        if command[0] == str(script) and not script.exists():
            continue  # not installed into this interpreter's bin (a bare checkout)
        done = subprocess.run(
            [*command, "--help"], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr
        assert "usage: redis-logstream" in done.stdout


def test_cli_main():
    from redis_logstream.cli import main

    assert callable(main)


@pytest.mark.parametrize("name", COMMANDS)
def test_management_commands(name):
    from django.core.management import get_commands, load_command_class

    assert get_commands()[name] == "redis_logstream"
    command = load_command_class("redis_logstream", name)
    assert "usage:" in command.create_parser("manage.py", name).format_help()


def test_amqp_does_not_load_the_redis_stack():
    code = (
        "import sys, redis_logstream.amqp\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('redis_logstream.redis'))\n"
        "assert not loaded, loaded\n"
        "assert 'redis_logstream.redis.sink' not in sys.modules\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr


def test_the_app_registers_its_system_checks():
    from django.core.checks import registry

    modules = {check.__module__ for check in registry.registry.registered_checks}
    assert "redis_logstream.checks" in modules
