"""The Makefile as a newcomer meets it: what ``make demo`` says before it waits.

``make -n`` prints the commands a fresh checkout would run, in order,
without running them; a venv path of its own makes every step due.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from support.streamlog import REPO


@pytest.mark.parametrize("target", ["demo", "install"])
def test_the_first_run_says_what_it_installs_before_pip_runs(target: str, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    result = subprocess.run(
        ["make", "-n", "-C", str(REPO), target, f"VENV={venv}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    # The venv's recipe is one shell script: what it says comes before pip.
    script = result.stdout
    said = script.find("Installing the package and its dependencies into " + str(venv))
    pip = script.find(" -m pip install ")
    assert 0 <= said < pip, script
    assert "about a minute" in script[said:pip]


def test_the_readme_names_every_system_package_make_test_installs() -> None:
    makefile = (REPO / "Makefile").read_text()
    packages = re.findall(r"\$\(call ensure_apt,[^,]+,([^)]+)\)", makefile)
    assert "redis-server" in packages and len(packages) >= 4
    top = (REPO / "README.md").read_text().split("\n---\n", 1)[0]
    assert [package for package in packages if f"`{package.strip()}`" not in top] == []
