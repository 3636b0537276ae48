"""The console page in a real browser: Debian's Chromium driven by Playwright.

The site runs under runserver in a child process with its own database
(alice / secret); the browser reaches it through a TCP proxy that can cut
every connection, as a restart or a flaky network would. Records come
from the site's own RedisLogHandler (``/work/`` logs under the signed-in
user's context) or are written to the stream the way the handler writes.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from playwright.sync_api import Browser, Page, sync_playwright

from redis_logstream.console.tokens import make_stream_token
from redis_logstream.naming import Names
from support.servers import RedisServer, no_retry
from support.tcp_proxy import TcpProxy
from support.web_servers import WebServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ALICE = "User.alice"


@pytest.fixture(scope="module")
def site(redis_server: RedisServer) -> Iterator[WebServer]:
    web = WebServer("runserver", redis_server.url, users={"alice": "secret"})
    yield web
    web.stop()


@pytest.fixture
def proxy(site: WebServer) -> Iterator[TcpProxy]:
    through = TcpProxy(site.port)
    yield through
    through.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not shutil.which(CHROMIUM):
        raise RuntimeError(f"{CHROMIUM} is missing: `make test` installs Debian's chromium")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_server.url, socket_timeout=5, retry=no_retry())
    client.delete(Names().stream(ALICE))
    yield client
    client.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    tab = context.new_page()
    tab.dialogs = []  # type: ignore[attr-defined]
    tab.on("dialog", lambda dialog: (tab.dialogs.append(dialog.message), dialog.dismiss()))
    yield tab
    context.close()


def sign_in(page: Page, base: str, path: str = "/logs/") -> None:
    page.goto(base + path)
    assert "/accounts/login/" in page.url  # the page sends anonymous visitors to log in
    page.fill("#id_username", "alice")
    page.fill("#id_password", "secret")
    page.click("button[type=submit]")
    page.wait_for_url(f"**{path}")
    wait_live(page)


def wait_live(page: Page) -> None:
    page.wait_for_selector(".rls-status[data-state=live]", timeout=10_000)


def lines(page: Page) -> list[dict[str, str]]:
    return page.eval_on_selector_all(
        ".rls-lines .rls-line",
        "els => els.map(e => ({id: e.dataset.id, level: e.dataset.level,"
        " msg: e.querySelector('.rls-msg').textContent}))",
    )


def add(store: redis.Redis, context: str, message: str, level: str = "INFO") -> str:
    levelno = {"INFO": 20, "ERROR": 40}.get(level, 0)
    record = {
        "message": message,
        "level": level,
        "levelno": levelno,
        "logger": "tests",
        "timestamp": time.time(),
        "context": context,
    }
    return store.xadd(Names().stream(context), {"data": json.dumps(record)}).decode()


def test_the_history_shows_on_load(page, site, store):
    ids = [add(store, ALICE, f"before the page {i}") for i in range(20)]
    sign_in(page, site.url)
    page.wait_for_function("document.querySelectorAll('.rls-line').length >= 20")
    shown = lines(page)
    assert [line["id"] for line in shown] == ids
    assert shown[0]["msg"] == "before the page 0"


def test_a_record_logged_by_the_server_appears_within_a_second(page, site, store):
    sign_in(page, site.url)
    sent = time.monotonic()
    answer = page.request.get(site.url + "/work/?steps=1")
    assert answer.json()["context"] == ALICE
    page.wait_for_selector(".rls-line:has-text('work finished for alice')", timeout=5_000)
    assert time.monotonic() - sent < 1.0
    assert page.text_content(".rls-title") == f"Logs: {ALICE}"


def test_html_in_a_record_shows_as_text_and_runs_nothing(page, site, store):
    sign_in(page, site.url)
    payloads = [
        "<img src=x onerror=alert(1)>",
        "<script>alert(2)</script>",
        '"><svg onload="window.__xss=1"></svg>',
    ]
    for payload in payloads:
        add(store, ALICE, payload, level="<b>ERROR</b>")
    page.wait_for_function("document.querySelectorAll('.rls-line').length >= 3")
    page.wait_for_timeout(300)  # let anything that would run, run
    assert [line["msg"] for line in lines(page)] == payloads
    assert (
        page.eval_on_selector_all(
            ".rls-console img, .rls-console script, .rls-console svg", "els => els.length"
        )
        == 0
    )
    assert page.evaluate("window.__xss") is None
    assert page.dialogs == []  # type: ignore[attr-defined]


def test_the_page_reconnects_after_a_dropped_connection_and_shows_each_record_once(
    page, proxy, site, store
):
    sign_in(page, proxy.url)
    written: list[str] = []
    stop = threading.Event()

    def writer() -> None:
        n = 0
        while not stop.is_set() and n < 400:
            written.append(add(store, ALICE, f"record {n}"))
            n += 1
            time.sleep(0.01)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        for _ in range(2):
            time.sleep(1.2)
            assert proxy.drop_all() >= 1
            page.wait_for_selector(".rls-status:not([data-state=live])", timeout=5_000)
            wait_live(page)  # reconnected by itself
    finally:
        thread.join()
    page.wait_for_function(
        f"document.querySelectorAll('.rls-line').length >= {len(written)}", timeout=10_000
    )
    page.wait_for_timeout(500)  # nothing more (no duplicate) arrives
    assert [line["id"] for line in lines(page)] == written


def test_a_token_opens_a_job_view_without_signing_in(page, site, store):
    job = "job_browser_token"
    store.delete(Names().stream(job))
    add(store, job, "job step 1")
    page.goto(f"{site.url}/logs/?token={make_stream_token(job, max_age=60)}")
    wait_live(page)
    page.wait_for_selector(".rls-line:has-text('job step 1')")
    add(store, job, "job step 2")
    page.wait_for_selector(".rls-line:has-text('job step 2')", timeout=2_000)
    assert page.text_content(".rls-title") == f"Logs: {job}"


def test_the_level_filter_and_search_hide_lines(page, site, store):
    for level, message in [
        ("INFO", "checkout ok"),
        ("ERROR", "payment failed"),
        ("INFO", "checkout again"),
    ]:
        add(store, ALICE, message, level=level)
    sign_in(page, site.url)
    page.wait_for_function("document.querySelectorAll('.rls-line').length >= 3")
    page.select_option(".rls-level-filter", "40")
    visible = page.eval_on_selector_all(
        ".rls-line", "els => els.filter(e => e.offsetParent !== null).map(e => e.dataset.level)"
    )
    assert visible == ["ERROR"]
    page.select_option(".rls-level-filter", "0")
    page.fill(".rls-search", "again")
    visible = page.eval_on_selector_all(
        ".rls-line",
        "els => els.filter(e => e.offsetParent !== null)"
        ".map(e => e.querySelector('.rls-msg').textContent)",
    )
    assert visible == ["checkout again"]


def test_a_page_that_saw_no_record_yet_loses_nothing_across_a_cut(page, proxy, site, store):
    """More records than the history (100) arrive while the page is away: it
    resumes from the ready event's id, not from a fresh history."""
    sign_in(page, proxy.url)  # alice's stream is empty
    assert proxy.drop_all() >= 1
    written = [add(store, ALICE, f"while away {n}") for n in range(150)]
    page.wait_for_function("document.querySelectorAll('.rls-line').length >= 150", timeout=10_000)
    page.wait_for_timeout(300)  # nothing more (no duplicate) arrives
    assert [line["id"] for line in lines(page)] == written
