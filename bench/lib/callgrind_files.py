"""The layout of one callgrind run directory, for the benchmark and callgrind_diff.py.

The benchmark runs each child with ``--separate-threads=yes`` and
``--callgrind-out-file=<rundir>/cg.%p``, so callgrind writes one file per
thread, ``cg.<pid>-NN`` (01: the main, logging thread; 02: the shipper or
listener), and the child writes what it did to ``<rundir>/child.json``.
Both scripts read these files; this module is where their names are known.
"""

from __future__ import annotations

import json
from pathlib import Path

#: callgrind's --callgrind-out-file, relative to the run directory.
OUT_FILE = "cg.%p"
#: What the child did (handler, records, warm-up, delivered, stats).
CHILD_RESULT = "child.json"


def thread_files(rundir: Path) -> dict[int, Path]:
    """The callgrind file of each thread of a run, by thread number."""
    files: dict[int, Path] = {}
    for path in sorted(rundir.glob("cg.*-*")):
        files.setdefault(int(path.name.rsplit("-", 1)[1]), path)
    return files


def thread_totals(rundir: Path) -> dict[int, int]:
    """Instructions per thread, from the summary/totals line of each file."""
    totals: dict[int, int] = {}
    for thread, path in thread_files(rundir).items():
        value = None
        with path.open("rb") as lines:
            for line in lines:
                if line.startswith((b"summary:", b"totals:")):
                    value = int(line.split()[1])
                    if line.startswith(b"totals:"):
                        break
        if value is None:
            raise RuntimeError(f"no summary/totals line in {path}")
        totals[thread] = value
    if 1 not in totals:
        raise RuntimeError(f"no callgrind file for the main thread in {rundir}")
    return totals


def records_of(rundir: Path) -> int:
    """How many records the run measured (warm-up excluded; it cancels)."""
    return int(json.loads((rundir / CHILD_RESULT).read_text())["records"])
