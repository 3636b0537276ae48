"""System checks: misconfiguration is reported by id, with a hint."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError

from support.quickstart_site import ROOT, code_blocks, manage, new_site


def ids(settings) -> list[str]:
    return [message.id for message in run_checks(tags=["redis_logstream"])]


def with_handler(settings, **options) -> None:
    logging_config = copy.deepcopy(settings.LOGGING)
    logging_config["handlers"]["redis"] = {
        "class": "redis_logstream.RedisLogHandler",
        "level": "INFO",
        **options,
    }
    settings.LOGGING = logging_config


def test_the_testproject_passes_every_check(settings) -> None:
    assert ids(settings) == []


def test_a_handler_without_a_usable_connection_is_e001(settings) -> None:
    with_handler(settings, connection="nosuch")
    (message,) = run_checks(tags=["redis_logstream"])
    assert message.id == "redis_logstream.E001"
    assert "nosuch" in message.msg
    assert "url=" in message.hint
    assert message.obj == "LOGGING['handlers']['redis']"


def test_a_cache_alias_outside_django_redis_caches_is_e001_too(settings) -> None:
    settings.REDIS_LOGSTREAM = {"CONNECTION": "elsewhere"}
    assert ids(settings) == ["redis_logstream.E001"]


def test_a_cache_alias_that_is_not_redis_is_e001(settings) -> None:
    settings.CACHES = {
        **settings.CACHES,
        "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    }
    settings.REDIS_LOGSTREAM = {"CONNECTION": "local"}
    assert ids(settings) == ["redis_logstream.E001"]


def test_an_unknown_option_is_e002_with_the_close_match(settings) -> None:
    with_handler(settings, queue_sise=10)
    (message,) = run_checks(tags=["redis_logstream"])
    assert message.id == "redis_logstream.E002"
    assert "queue_size" in message.msg


def test_an_unknown_site_setting_is_e002(settings) -> None:
    settings.REDIS_LOGSTREAM = {"STREAM_MAXLENGTH": 10}
    assert ids(settings) == ["redis_logstream.E002"]


@pytest.mark.parametrize(
    "options",
    [{"queue_size": -1}, {"overflow": "drop-all"}, {"batch_size": 0}, {"global_ttl": 0}],
)
def test_an_invalid_value_is_e003(settings, options) -> None:
    with_handler(settings, **options)
    (message,) = run_checks(tags=["redis_logstream"])
    assert message.id == "redis_logstream.E003"
    assert next(iter(options)) in message.msg


def test_site_only_settings_are_not_handler_options(settings) -> None:
    settings.REDIS_LOGSTREAM = {"CONNECTION": "default", "CELERY": False}
    assert ids(settings) == []


def test_the_middleware_before_authentication_is_w001(settings) -> None:
    middleware = [m for m in settings.MIDDLEWARE if "LogContextMiddleware" not in m]
    settings.MIDDLEWARE = ["redis_logstream.middleware.LogContextMiddleware", *middleware]
    assert ids(settings) == ["redis_logstream.W001"]


def test_manage_py_check_fails_on_errors(settings) -> None:
    with_handler(settings, overflow="drop-all")
    with pytest.raises(SystemCheckError, match=r"redis_logstream\.E003"):
        call_command("check")


@pytest.mark.parametrize(
    "key, value",
    [
        ("STREAM_HISTORY", -1),
        ("STREAM_HISTORY", "100"),
        ("STREAM_HEARTBEAT", 0),
        ("STREAM_MAX_AGE", True),
        ("CELERY", "yes"),
        ("STREAM_INBOX_BYTES", 0),
        ("STREAM_WRITE_TIMEOUT", 0),
        ("STREAM_USER_LIMIT", -1),
    ],
)
def test_a_bad_site_setting_is_e003_naming_it(settings, key, value) -> None:
    settings.REDIS_LOGSTREAM = {"CONNECTION": "default", key: value}
    messages = [m for m in run_checks(tags=["redis_logstream"]) if m.id.endswith("E003")]
    assert messages and key in messages[0].msg


def deploy_ids(settings, **options) -> list[str]:
    settings.REDIS_LOGSTREAM = {"CONNECTION": "default", **options}
    settings.LOGGING = {**settings.LOGGING, "handlers": {}}
    return [m.id for m in run_checks(tags=["redis_logstream"], include_deployment_checks=True)]


def test_the_defaults_pass_the_deploy_checks(settings) -> None:
    assert deploy_ids(settings) == []


@pytest.mark.parametrize(
    "options, expected",
    [
        ({"QUEUE_SIZE": 100}, "redis_logstream.W002"),
        ({"CONTEXT_TTL": None}, "redis_logstream.W003"),
        ({"GLOBAL_TTL": 10}, "redis_logstream.W004"),
        ({"SHUTDOWN_TIMEOUT": 0}, "redis_logstream.W005"),
        ({"URL": "rediss://cache.internal:6380/0?ssl_cert_reqs=none"}, "redis_logstream.W006"),
    ],
)
def test_risky_settings_are_deploy_warnings(settings, options, expected) -> None:
    assert deploy_ids(settings, **options) == [expected]


def test_a_cache_alias_without_certificate_checking_is_a_deploy_warning(settings) -> None:
    settings.CACHES = {
        **settings.CACHES,
        "tls": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": "rediss://cache.internal:6380/0?ssl_cert_reqs=CERT_NONE",
        },
    }
    assert deploy_ids(settings, CONNECTION="tls") == ["redis_logstream.W006"]


def test_deploy_warnings_stay_out_of_the_everyday_check(settings) -> None:
    settings.REDIS_LOGSTREAM = {"CONNECTION": "default", "QUEUE_SIZE": 100}
    assert "redis_logstream.W002" not in ids(settings)


def test_a_redis_logstream_setting_that_is_not_a_dict_is_e003(settings) -> None:
    settings.REDIS_LOGSTREAM = ["CONNECTION", "default"]
    settings.LOGGING = {**settings.LOGGING, "handlers": {}}
    (message,) = [m for m in run_checks(tags=["redis_logstream"]) if m.id.endswith("E003")]
    assert "must be a dict" in message.msg


# What docs/django.md ("Start-up and checks") says happens, run in a new
# project made by following docs/quickstart.md.
DJANGO_DOC = ROOT / "docs" / "django.md"
_ROW = re.compile(r"^\| `(?P<code>[^`]+)` \| (?P<outcome>.+) \|$")


def documented_cases() -> list[tuple[str, str]]:
    _before, _header, after = DJANGO_DOC.read_text().partition(
        "| added to the quickstart's settings |"
    )
    table = after.split("\n\n", 1)[0]
    return [(m["code"], m["outcome"]) for m in map(_ROW.match, table.splitlines()) if m]


def documented_startup_error() -> list[str]:
    """The lines of the doc's example output, without its prompt and elisions."""
    block = next(b.text for b in code_blocks(DJANGO_DOC) if b.text.startswith("$ python manage.py"))
    return [line for line in block.splitlines()[1:] if line.strip() not in ("", "...")]


@pytest.fixture(scope="module")
def quickstart_site(tmp_path_factory, redis_server) -> Path:
    return new_site(tmp_path_factory.mktemp("checks"), redis_server.url)


def check_with(site: Path, code: str) -> subprocess.CompletedProcess[str]:
    """``manage.py check`` with ``code`` added to the quickstart's settings."""
    name = f"case_{abs(hash(code)):x}"
    (site / f"{name}.py").write_text(f"from mysite.settings import *  # noqa: F403\n{code}\n")
    return manage(site, "check", settings=name)


def test_the_quickstart_site_passes_every_check(quickstart_site: Path) -> None:
    result = check_with(quickstart_site, "")
    assert result.returncode == 0, result.stderr
    assert "System check identified no issues" in result.stdout


def test_the_doc_covers_start_up_and_the_checks() -> None:
    outcomes = [outcome for _code, outcome in documented_cases()]
    assert sum(o.startswith("start-up stops") for o in outcomes) >= 4
    assert {re.search(r"E00\d", o)[0] for o in outcomes if "manage.py check" in o} == {
        "E001",
        "E002",
        "E003",
    }


@pytest.mark.parametrize("code, outcome", documented_cases(), ids=lambda text: text[:40])
def test_what_the_doc_says_happens_happens(quickstart_site: Path, code: str, outcome: str) -> None:
    result = check_with(quickstart_site, code)
    assert result.returncode == 1, result.stdout + result.stderr
    if outcome.startswith("start-up stops: "):
        message = outcome.removeprefix("start-up stops: ").strip("`")
        assert message in result.stderr
        assert "System check" not in result.stdout + result.stderr  # no check ran
    else:
        check_id = re.fullmatch(r"`manage.py check` fails: `(redis_logstream\.E00\d)`", outcome)
        assert check_id, outcome
        assert f"({check_id[1]})" in result.stderr
        assert "System check identified" in result.stderr


def test_a_misspelt_handler_option_stops_start_up_as_the_doc_shows(quickstart_site: Path) -> None:
    result = check_with(quickstart_site, 'LOGGING["handlers"]["redis"]["stream_maxln"] = 5000')
    assert result.returncode == 1
    lines = result.stderr.splitlines()
    position = 0
    for expected in documented_startup_error():
        position = lines.index(expected, position) + 1  # each line, in this order
