"""Where a handler's instructions go, per record, from the benchmark's callgrind runs.

bench_handler.py gives one number per thread.  When that number moves, this
says which C functions moved it: the per-function difference between the
long and the short run of one handler, divided by the difference in records,
so that start-up and warm-up cancel as they do in the benchmark.  With
``--against`` the same is computed for a second handler (format-only, say)
and subtracted, leaving what the first one adds.

    .venv/bin/python bench/callgrind_diff.py bench/out/callgrind/ours-{1000,6000}
    .venv/bin/python bench/callgrind_diff.py bench/out/callgrind/ours-{1000,6000} --thread 2
    .venv/bin/python bench/callgrind_diff.py bench/out/callgrind/ours-{1000,6000} \\
        --against bench/out/callgrind/format-only-{1000,6000}

CPython's own functions are what callgrind sees: Python-level functions show
up only through the C functions they call (``bytes_mod`` for ``b"%b" % ...``,
``py_encode_basestring`` for json's string escaper, ``formatfloat`` and
``_Py_dg_dtoa`` for ``b"%.7f" % ...`` or ``repr(float)``), which is usually
enough to tell which line is responsible.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

# Run as a script, bench/ is sys.path[0]: add the repository (bench.lib) and tests/ (support).
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))
sys.path.insert(2, str(Path(__file__).resolve().parents[1] / "tests"))

from bench.lib.callgrind_files import records_of, thread_files

_LINE = re.compile(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*)")
_BUILD_PREFIX = re.compile(r"/tmp/python-build[^ ]*?/Python-[\d.]+/")


def function_costs(path: Path, inclusive: bool) -> dict[str, int]:
    """Instructions per function in one callgrind file (every function, no threshold)."""
    proc = subprocess.run(
        [
            "callgrind_annotate",
            f"--inclusive={'yes' if inclusive else 'no'}",
            "--threshold=100",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    costs: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        match = _LINE.match(line)
        if match is None or "PROGRAM TOTALS" in line:
            continue
        name = _BUILD_PREFIX.sub("", match.group(2))
        name = re.sub(r" \[[^]]*\]$", "", name)  # the object file
        costs[name] = costs.get(name, 0) + int(match.group(1).replace(",", ""))
    return costs


def thread_file(rundir: Path, thread: int) -> Path:
    """The callgrind file of one thread of a run (1: the logging thread)."""
    path = thread_files(rundir).get(thread)
    if path is None:
        raise SystemExit(f"{rundir}: no callgrind file for thread {thread}")
    return path


def per_record(short: Path, long: Path, thread: int, inclusive: bool) -> dict[str, float]:
    """(cost in the long run - cost in the short run) / (records difference), per function."""
    span = records_of(long) - records_of(short)
    if span <= 0:
        raise SystemExit(f"{long} must have more records than {short}")
    before = function_costs(thread_file(short, thread), inclusive)
    after = function_costs(thread_file(long, thread), inclusive)
    return {
        name: (after.get(name, 0) - before.get(name, 0)) / span
        for name in before.keys() | after.keys()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("short", type=Path, help="run directory of the short run")
    parser.add_argument("long", type=Path, help="run directory of the long run")
    parser.add_argument(
        "--against",
        nargs=2,
        type=Path,
        metavar=("SHORT", "LONG"),
        help="subtract another handler's per-record costs",
    )
    parser.add_argument(
        "--thread",
        type=int,
        default=1,
        help="1: the logging thread (default), 2: the shipper or listener",
    )
    parser.add_argument(
        "--inclusive",
        action="store_true",
        help="costs including callees (default: each function's own)",
    )
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    if shutil.which("callgrind_annotate") is None:
        print("callgrind_annotate not found (it comes with valgrind)", file=sys.stderr)
        return 2

    costs = per_record(args.short, args.long, args.thread, args.inclusive)
    if args.against:
        base = per_record(*args.against, args.thread, args.inclusive)
        costs = {
            name: costs.get(name, 0.0) - base.get(name, 0.0) for name in costs.keys() | base.keys()
        }
    rows = sorted(costs.items(), key=lambda item: -abs(item[1]))
    if not args.inclusive:
        print(f"{sum(costs.values()):>12,.0f}  total per record")
    for name, value in rows[: args.top]:
        print(f"{value:>12,.0f}  {name[:140]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
