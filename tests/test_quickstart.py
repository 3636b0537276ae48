"""docs/quickstart.md followed literally, in a new ``django-admin startproject`` site.

The site is built from the page's own code blocks (``quickstart_site``), its
commands run as the page gives them, and a user signs in through the login
page it adds, opens the console's stream and sees the record a view logs
arrive, as the page promises.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from http.cookiejar import CookieJar
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit
from urllib.request import HTTPCookieProcessor, build_opener

import pytest

from support.quickstart_site import QUICKSTART, ROOT, code_blocks, manage, new_site, site_env
from support.servers import LOOPBACK, free_port
from support.sse_client import SSEClient

PASSWORD = "quick-start-1"


def install_line(page: Path) -> str:
    return next(
        line.split("#")[0].strip()
        for line in page.read_text().splitlines()
        if line.startswith("pip install")
    )


def test_readme_and_quickstart_install_the_same_extra() -> None:
    readme, quickstart = install_line(ROOT / "README.md"), install_line(QUICKSTART)
    assert readme == quickstart == 'pip install "django-redis-logstream[django]"'


def python_blocks(page: Path) -> list[str]:
    return [b.text for b in code_blocks(page) if b.language == "python" and b.path is None]


@pytest.mark.parametrize("page", ["README.md", "docs/quickstart.md", "docs/django.md"])
def test_the_python_examples_define_every_name_they_use(page: str) -> None:
    """Names a reader would copy without their import are a NameError later."""
    ruff = Path(sys.executable).with_name("ruff")
    for text in python_blocks(ROOT / page):
        result = subprocess.run(
            [
                str(ruff),
                "check",
                "--no-cache",
                "--isolated",
                "--select",
                "F821",
                "--output-format",
                "concise",
                "--stdin-filename",
                "example.py",
                "-",
            ],
            input=text,
            capture_output=True,
            text=True,
        )
        assert result.returncode == 0, f"{page}:\n{text}\n{result.stdout}"


def test_the_quickstart_names_a_file_for_each_piece_of_the_site() -> None:
    targets = {b.path: b.how for b in code_blocks(QUICKSTART) if b.path}
    assert targets == {
        "mysite/settings.py": "add at the end",
        "mysite/views.py": "a new file",
        "mysite/urls.py": "replace its contents",
        "templates/registration/login.html": "a new file",
    }


def shell_commands(page: Path) -> list[list[str]]:
    """The commands of the page's ``sh`` blocks, without their comments."""
    commands = []
    for block in code_blocks(page):
        if block.language == "sh":
            for line in block.text.splitlines():
                words = shlex.split(line, comments=True)
                if words:
                    commands.append(words)
    return commands


class _Forms(HTMLParser):
    """The first form of a page: its action and its inputs' names and values."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.inputs: dict[str, str] = {}
        self.links: list[str] = []
        self.stream_url: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {name: value or "" for name, value in attrs}
        if tag == "form" and self.action is None:
            self.action = values.get("action", "")
        elif tag == "input" and "name" in values:
            self.inputs[values["name"]] = values.get("value", "")
        elif tag in ("script", "link") and (values.get("src") or values.get("href")):
            self.links.append(values.get("src") or values["href"])
        if "data-stream-url" in values:
            self.stream_url = values["data-stream-url"]


def parse(html: str) -> _Forms:
    parser = _Forms()
    parser.feed(html)
    return parser


@pytest.fixture
def quickstart_server(tmp_path: Path, redis_url: str) -> Iterator[tuple[Path, str]]:
    """The site of the quickstart, set up and served by the page's commands."""
    site = new_site(tmp_path, redis_url)
    commands = shell_commands(QUICKSTART)
    assert ["django-admin", "startproject", "mysite"] in commands
    run = [c[2:] for c in commands if c[:2] == ["python", "manage.py"]]
    assert run[:3] == [["migrate"], ["createsuperuser"], ["runserver"]]
    migrated = manage(site, "migrate")
    assert migrated.returncode == 0, migrated.stderr
    user = ["--noinput", "--username", "alice", "--email", "alice@example.com"]
    created = manage(site, "createsuperuser", *user, DJANGO_SUPERUSER_PASSWORD=PASSWORD)
    assert created.returncode == 0, created.stderr
    port = free_port()
    log = (tmp_path / "runserver.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"{LOOPBACK}:{port}", "--noreload"],
        cwd=site,
        env=site_env(),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://{LOOPBACK}:{port}"
    try:
        opener = build_opener()
        deadline = time.monotonic() + 30
        while True:
            try:
                opener.open(f"{base}/admin/login/", timeout=5).close()
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "runserver.log"
                ).read_text()
                time.sleep(0.1)
        yield site, base
    finally:
        server.terminate()
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
        log.close()


def test_a_signed_in_user_watches_their_own_records_in_a_new_project(
    quickstart_server: tuple[Path, str],
) -> None:
    site, base = quickstart_server
    jar = CookieJar()
    browser = build_opener(HTTPCookieProcessor(jar))

    # Not signed in: the console sends the visitor to a login page that exists.
    with browser.open(f"{base}/logs/", timeout=10) as page:
        login_url, login = page.url, parse(page.read().decode())
    assert urlsplit(login_url).path == "/accounts/login/"
    assert login.inputs.get("next") == "/logs/" and "csrfmiddlewaretoken" in login.inputs
    form = {**login.inputs, "username": "alice", "password": PASSWORD}
    action = urljoin(login_url, login.action or "")
    with browser.open(action, data=urlencode(form).encode(), timeout=10) as page:
        console_url, console = page.url, parse(page.read().decode())
    assert urlsplit(console_url).path == "/logs/", "signing in leads back to the console"
    assert console.stream_url == "/logs/stream/?context=User.alice"
    for asset in console.links:  # the console's script and style are served
        with browser.open(urljoin(base, asset), timeout=10) as response:
            assert response.status == 200, asset

    cookies = "; ".join(f"{c.name}={c.value}" for c in jar)
    with SSEClient(base + console.stream_url, headers={"Cookie": cookies}) as stream:
        assert stream.status == 200
        stream.wait_for(lambda event: event.event == "ready")
        with browser.open(f"{base}/checkout/", timeout=10) as response:
            assert response.status == 200
        seen = stream.wait_for(
            lambda event: event.event == "log" and event.json["message"] == "checkout started"
        )
    record = seen[-1].json
    assert record["context"] == "User.alice" and record["logger"] == "mysite.views"

    with browser.open(f"{base}/export/", timeout=10) as response:
        job = json.loads(response.read())["watch"]
    assert re.fullmatch(r"export_[0-9a-f]{32}", job)
    tail = manage(site, "tail_logs", job)  # the page's "Watch" step, without -f
    assert tail.returncode == 0, tail.stderr
    assert "export queued" in tail.stdout and "row 2 exported" in tail.stdout
