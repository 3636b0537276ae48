"""A new ``django-admin startproject`` site built by following docs/quickstart.md.

The page's code blocks that start with a file name (``# mysite/views.py: a
new file``) are applied to that file as the line says, so the page and the
tests cannot drift: what a reader copies is what the tests run. Commands
run with the venv's interpreter and without the test session's Django
settings, as they would in a reader's shell.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "docs" / "quickstart.md"
#: The Redis the page names; the tests put their own server's URL in its place.
DOC_REDIS_URL = "redis://127.0.0.1:6379/0"

_FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.S | re.M)
_TARGET = re.compile(
    r"^(?:#|\{#)\s*(?P<path>[\w./-]+): (?P<how>add at the end|replace its contents|a new file)"
)

__all__ = ["DOC_REDIS_URL", "QUICKSTART", "Block", "code_blocks", "manage", "new_site"]


@dataclass(frozen=True)
class Block:
    """One fenced code block of a page: its language, text and target file."""

    language: str
    text: str
    path: str | None = None
    how: str | None = None


def code_blocks(page: Path) -> list[Block]:
    """Every fenced block of ``page``, with the file its first line names."""
    blocks = []
    for language, text in _FENCE.findall(page.read_text()):
        first = text.split("\n", 1)[0]
        target = _TARGET.match(first)
        if target:
            blocks.append(Block(language, text, target["path"], target["how"]))
        else:
            blocks.append(Block(language, text))
    return blocks


def site_env(**extra: str) -> dict[str, str]:
    """The environment of a reader's shell: the venv first on PATH, no test settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "PYTHONPATH")}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    return {**env, **extra}


def new_site(parent: Path, redis_url: str) -> Path:
    """``django-admin startproject mysite`` in ``parent``, then every file
    block of the quickstart applied; returns the project directory."""
    django_admin = Path(sys.executable).with_name("django-admin")
    subprocess.run(
        [str(django_admin), "startproject", "mysite"], cwd=parent, env=site_env(), check=True
    )
    site = parent / "mysite"
    for block in code_blocks(QUICKSTART):
        if block.path is None:
            continue
        text = block.text
        if block.path.endswith("settings.py"):
            assert text.count(DOC_REDIS_URL) == 1, "the settings name one Redis"
            text = text.replace(DOC_REDIS_URL, redis_url)
        target = site / block.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if block.how == "add at the end":
            assert target.exists(), f"{block.path} should exist in a new project"
            with target.open("a") as file:
                file.write("\n" + text)
        else:
            assert (block.how == "a new file") != target.exists(), (block.path, block.how)
            target.write_text(text)
    return site


def manage(
    site: Path, *args: str, settings: str | None = None, timeout: float = 60, **env: str
) -> subprocess.CompletedProcess[str]:
    """``python manage.py ARGS`` in ``site``; ``settings`` a module to use instead."""
    extra = {"DJANGO_SETTINGS_MODULE": settings} if settings else {}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=site,
        env=site_env(**extra, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
