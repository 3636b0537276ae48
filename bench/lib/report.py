"""What a run prints and publishes: machine and source, table, thresholds, chart.

Kept apart from the measurements so that the figures in results.json can be
rendered again, and the thresholds read, without measuring anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from bench.lib.instructions import source_fingerprint
from bench.lib.subjects import HANDLERS, LABELS
from bench.lib.timing import IDLE_SECONDS

ROOT = Path(__file__).resolve().parents[2]
#: Where a full run publishes its chart (a --quick run keeps it in <out>).
DOCS_CHART = ROOT / "docs" / "benchmark.png"

#: Thresholds (ours / format-only) beyond which the run fails.
MAX_MAIN_RATIO = 1.08
MAX_ALL_RATIO = 1.35
MAX_BURST_RATIO = 1.5
MAX_IDLE_CPU_MS = 50.0


def cpu_model() -> str:
    """The processor's name, as /proc/cpuinfo gives it."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return model


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = cpu_model()
    valgrind = subprocess.run(
        ["valgrind", "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "redis_py": redis.__version__,
        "valgrind": valgrind,
        "platform": platform.platform(),
    }


def source_revision() -> dict[str, Any]:
    """Which commit was measured, and whether the package had local changes."""

    def git(*args: str) -> str:
        proc = subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False, timeout=30
        )
        return proc.stdout.strip() if proc.returncode == 0 else ""

    return {
        "commit": git("rev-parse", "--short", "HEAD") or None,
        "src_dirty": bool(git("status", "--porcelain", "--", "src")),
        "fingerprint": source_fingerprint(),
    }


def render_table(results: dict[str, Any]) -> str:
    """One table, one row per handler, each figure with its ratio to format-only."""
    instr = results["instructions"]
    wall = results["wall_clock"]
    burst = results["burst"]
    base_main = instr["format-only"]["main"]
    base_wall = wall["format-only"]["median"]
    base = burst["format-only"]
    base_time = base["seconds_median"] / base["records"]
    base_cpu = base["process_cpu_us_per_record"]
    header = (
        f"{'handler':<16} {'instr/rec main':>14} {'x':>5} {'instr/rec all':>13} {'x':>5} "
        f"{'emit us':>7} {'x':>5} {'burst rec/s':>11} {'x':>5} {'cpu us':>6} {'x':>5} "
        f"{'redis us':>8} {'drops':>5}"
    )
    lines = [header, "-" * len(header)]
    for name in HANDLERS:
        i, w, b = instr[name], wall[name], burst[name]
        redis_us = b.get("redis_cpu_us_per_record")
        drops = b.get("dropped")
        cpu_us = b["process_cpu_us_per_record"]
        lines.append(
            f"{LABELS[name]:<16} {i['main']:>14,.0f} {i['main'] / base_main:>5.2f} "
            f"{i['all']:>13,.0f} {i['all'] / base_main:>5.2f} "
            f"{w['median'] * 1e6:>7.1f} {w['median'] / base_wall:>5.2f} "
            f"{b['records_per_s']:>11,.0f} "
            f"{b['seconds_median'] / b['records'] / base_time:>5.2f} "
            f"{cpu_us:>6.1f} {cpu_us / base_cpu:>5.2f} "
            f"{'-' if redis_us is None else f'{redis_us:.1f}':>8} "
            f"{'-' if drops is None else drops:>5}"
        )
    config = results["config"]
    ours = burst["ours"]
    spread = ", ".join(f"{ratio:.2f}" for ratio in ours["round_ratios"])
    load = burst["loadavg_1min"]
    lines += [
        "",
        "instr/rec: callgrind instructions per record, logging thread and all threads "
        f"({config['callgrind_records'][1]:,} - {config['callgrind_records'][0]:,} records).",
        f"emit us: wall-clock of the logging call, median of {config['wall_rounds']} rounds of "
        f"{config['wall_records']:,}.",
        f"burst: {ours['records']:,} records (naive {burst['naive']['records']:,}) until "
        f"delivered, median of {len(ours['rounds'])} rounds; cpu us: this process's CPU per "
        "record (all threads); redis us: redis-server's CPU per record.",
        "x: ratio to format-only (instructions: to its logging thread).",
        f"ours burst/format-only per round: {spread} (1-min load average {load[0]:.2f} before, "
        f"{load[1]:.2f} after).",
    ]
    rpb = instr["ours"].get("records_per_batch")
    if rpb:
        lines.append(f"ours under callgrind: {rpb:.0f} records per batch on average.")
    idle = results["idle"]
    lines.append(
        f"idle: {idle['cpu_ms']:.1f} ms CPU in the {idle['seconds']:.0f} s after one "
        f"record (its delivery included), {idle['quiet_cpu_ms']:.1f} ms in the next "
        f"{idle['seconds']:.0f} s."
    )
    return "\n".join(lines)


def check_thresholds(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The regressions that fail the run; figures in between are only reported."""
    instr = results["instructions"]
    base = instr["format-only"]["main"]
    main_ratio = instr["ours"]["main"] / base
    all_ratio = instr["ours"]["all"] / base
    burst_ratio = results["burst"]["ours"]["ratio_to_format_only"]
    drops = results["burst"]["ours"]["dropped"]
    idle = results["idle"]["cpu_ms"]
    return [
        {
            "check": f"ours logging-thread instructions/record <= {MAX_MAIN_RATIO}x format-only",
            "value": f"{main_ratio:.3f}x",
            "ok": main_ratio <= MAX_MAIN_RATIO,
        },
        {
            "check": f"ours all-threads instructions/record <= {MAX_ALL_RATIO}x format-only",
            "value": f"{all_ratio:.3f}x",
            "ok": all_ratio <= MAX_ALL_RATIO,
        },
        {
            "check": f"ours burst time <= {MAX_BURST_RATIO}x format-only loop time",
            "value": f"{burst_ratio:.3f}x",
            "ok": burst_ratio <= MAX_BURST_RATIO,
        },
        {"check": "ours burst drops == 0", "value": str(drops), "ok": drops == 0},
        {
            "check": f"ours idle CPU < {MAX_IDLE_CPU_MS:.0f} ms over {IDLE_SECONDS:.0f} s",
            "value": f"{idle:.1f} ms",
            "ok": idle < MAX_IDLE_CPU_MS,
        },
    ]


def print_summary(results: dict[str, Any], out: Path, chart: Path) -> None:
    """Machine, source, table and checks, as the end of a run prints them."""
    m = results["machine"]
    print()
    print(
        f"{m['nproc']} x {m['cpu']}, Python {m['python']}, redis-server {m['redis_server']},"
        f" redis-py {m['redis_py']}, {m['valgrind']}"
    )
    src = results["source"]
    print(
        f"measured: commit {src['commit']}{' + local changes in src' if src['src_dirty'] else ''}"
        f", source {src['fingerprint']}"
    )
    if src["changed_during_run"]:
        print("WARNING: the package's source changed during the run: the figures mix versions")
    print(results["table"])
    print()
    for check in results["checks"]:
        print(f"{'PASS' if check['ok'] else 'FAIL'}  {check['check']}: {check['value']}")
    print(f"\nresults: {out / 'results.json'}  chart: {chart}  ({results['seconds']:.0f} s)")


def finish_run(results: dict[str, Any], out: Path, versions: str) -> int:
    """The end of a side benchmark (cluster, consumer, RabbitMQ): write
    ``<out>/results.json``, print what was measured, the table and the
    checks; return the exit status (1 when a check failed)."""
    (out / "results.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    src = results["source"]
    print(
        f"\nmeasured: commit {src['commit']}"
        f"{' + local changes in src' if src['src_dirty'] else ''}, {versions}"
    )
    if src.get("changed_during_run"):
        print("WARNING: the package's source changed during the run: the figures mix versions")
    print(results["table"] + "\n")
    for check in results["checks"]:
        print(f"{'PASS' if check['ok'] else 'FAIL'}  {check['check']}: {check['value']}")
    print(f"\nresults: {out / 'results.json'}  ({results['seconds']:.0f} s)")
    return 0 if all(check["ok"] for check in results["checks"]) else 1


def guarded(run: Callable[[], int], errors: tuple[type[BaseException], ...]) -> int:
    """``run()``'s status, or 2 (and one line) when the benchmark could not run."""
    try:
        return run()
    except errors as exc:
        print(f"benchmark could not run: {exc!r}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the servers and processes were stopped", file=sys.stderr)
        return 2


def draw_chart(results: dict[str, Any], path: Path) -> None:
    """Instructions per record (both threads' views) and burst throughput.

    The naive handler costs several times the others; its bars are cut at
    the top of the axis and labelled, so that the 1.08x and 1.35x lines stay
    readable next to the handlers that matter.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    instr = results["instructions"]
    burst = results["burst"]
    base = instr["format-only"]["main"]
    labels = [LABELS[name] for name in HANDLERS]
    mains = [instr[name]["main"] / 1000 for name in HANDLERS]
    alls = [instr[name]["all"] / 1000 for name in HANDLERS]
    top = max(
        v
        for name, m, a in zip(HANDLERS, mains, alls, strict=True)
        if name != "naive"
        for v in (m, a)
    )
    top = max(top, base / 1000 * MAX_ALL_RATIO) * 1.35

    fig, (left, right) = plt.subplots(
        1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1.5, 1]}
    )
    xs = range(len(HANDLERS))
    width = 0.38
    for offset, values, label, color in (
        (-width / 2, mains, "logging thread", "#4c72b0"),
        (width / 2, alls, "all threads", "#dd8452"),
    ):
        bars = left.bar(
            [x + offset for x in xs], [min(v, top) for v in values], width, label=label, color=color
        )
        for bar, value in zip(bars, values, strict=True):
            centre = bar.get_x() + bar.get_width() / 2
            if value > top:  # label inside the cut bar, below the axis top
                left.annotate(
                    f"{value:,.0f}k\n(cut)",
                    (centre, top),
                    ha="center",
                    va="top",
                    fontsize=8,
                    color="white",
                    xytext=(0, -4),
                    textcoords="offset points",
                )
            else:
                left.annotate(
                    f"{value:,.0f}k",
                    (centre, value),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
    for ratio, style in ((MAX_MAIN_RATIO, "--"), (MAX_ALL_RATIO, ":")):
        left.axhline(
            base / 1000 * ratio,
            color="black",
            linestyle=style,
            linewidth=1,
            label=f"{ratio}x format-only",
        )
    left.set_ylim(0, top)
    left.set_xticks(list(xs), labels)
    left.set_ylabel("thousand instructions per record (callgrind)")
    left.set_title("Instructions per record (callgrind)", fontsize=10)
    left.legend(fontsize=8, loc="upper left")

    rates = [burst[name]["records_per_s"] / 1000 for name in HANDLERS]
    bars = right.bar(list(xs), rates, color=["#8c8c8c", "#55a868", "#c44e52", "#4c72b0"])
    for bar, value in zip(bars, rates, strict=True):
        right.annotate(
            f"{value:,.0f}k",
            (bar.get_x() + bar.get_width() / 2, value),
            ha="center",
            va="bottom",
            fontsize=8,
            xytext=(0, 2),
            textcoords="offset points",
        )
    right.set_xticks(list(xs), labels, fontsize=8)
    right.set_ylabel("thousand records per second")
    right.set_title(f"Burst of {burst['ours']['records']:,} records, until delivered", fontsize=10)
    fig.text(
        0.5,
        0.005,
        "format-only: the bare loop; QueueHandler: until the listener took the "
        "last; naive / RedisLogHandler: until the last is stored in Redis "
        f"(naive: {burst['naive']['records']:,} records)",
        ha="center",
        fontsize=8,
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
