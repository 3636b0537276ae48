"""How the benchmark runs parts of itself in processes of their own.

Part A runs each handler under callgrind, which must watch that handler and
nothing else; part D measures the CPU of an idle handler, which must not
include other handlers' threads.  Both re-run bench_handler.py (with
``--child`` or ``--idle-child``), in the same environment every time so that
the runs compare.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: The benchmark's entry point, which dispatches the child modes.
ENTRY_POINT = Path(__file__).resolve().parents[1] / "bench_handler.py"


def child_command(*args: str) -> list[str]:
    """The command line of a child run of the benchmark."""
    return [sys.executable, str(ENTRY_POINT), *args]


def child_env() -> dict[str, str]:
    """The same environment for every child: fixed hash seed, no Django site."""
    env = dict(os.environ)
    env["PYTHONHASHSEED"] = "0"
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env.pop("PYTHONMALLOC", None)
    return env
