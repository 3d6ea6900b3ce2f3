"""Entry point: ``python bench/run.py [--quick] [--systems ours,rq,...] [--scaling] [--profile]``.

Runs inside bench/.venv (created on first use). Results go to bench/results/ as JSON and a
Markdown table; ``--scaling`` also writes docs/performance.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script: import the ``bench`` package from the repository root, not bench/ itself.
_REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == _REPO / "bench":
    sys.path[0] = str(_REPO)


def parse_args(argv: list[str]) -> argparse.Namespace:
    from bench.config import N_FULL, N_QUICK, REPEATS_FULL
    from bench.systems import ALL, EXTRA

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help=f"smoke run: N={N_QUICK}, one repeat")
    parser.add_argument(
        "--systems", default=",".join(ALL), help="comma-separated, from: " + ",".join(ALL + EXTRA)
    )
    parser.add_argument(
        "--modes", default="A,B", help="worker modes: A (1 process x 10 threads), B (2 processes)"
    )
    parser.add_argument(
        "-n", type=int, default=None, help=f"jobs per measurement (default {N_FULL})"
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help=f"repeats, medians reported (default {REPEATS_FULL})",
    )
    parser.add_argument(
        "--drain-limit", type=float, default=12.0, help="seconds before a drain counts as partial"
    )
    parser.add_argument(
        "--against",
        metavar="REF",
        help="also run our worker (and enqueue-one client) from commit REF (a git worktree) in "
        "every cell, for A/B figures; several refs separated by commas",
    )
    parser.add_argument(
        "--scaling", action="store_true", help="our drain over processes x threads, and the plot"
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy profile of our worker's hot path"
    )
    args = parser.parse_args(argv)
    args.n = args.n or (N_QUICK if args.quick else N_FULL)
    args.repeats = args.repeats or (1 if args.quick else REPEATS_FULL)
    args.system_list = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.mode_list = [m.strip().upper() for m in args.modes.split(",") if m.strip()]
    return args


def machine() -> dict[str, Any]:
    mem_kb = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            mem_kb = int(line.split()[1])
    cpu = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import subprocess

    import redis

    from bench.config import REDIS_HOST, REDIS_PORT

    server = redis.Redis(host=REDIS_HOST, port=REDIS_PORT).info("server")

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=_REPO, capture_output=True, text=True
        ).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    # The package is installed editable: uncommitted library changes are what gets measured.
    dirty = bool(git("status", "--porcelain", "--", "django_async_jobs"))
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kb / 1024**2, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "redis": server.get("redis_version"),
        "commit": commit,
        "library_uncommitted_changes": dirty,
    }


def run_comparison(args: argparse.Namespace) -> dict[str, Any]:
    from bench import harness, report
    from bench.config import LATENCY_JOBS, LATENCY_RATE
    from bench.systems import load
    from bench.systems.base import MODES

    systems = [load(name) for name in args.system_list]
    if args.against:
        from bench.systems.ours import OursAt

        for offset, ref in enumerate(r.strip() for r in args.against.split(",") if r.strip()):
            systems.insert(1 + offset, OursAt(ref, _worktree(ref)))
            args.system_list.insert(1 + offset, systems[1 + offset].name)
    for system in systems:
        system.prepare()
    cells: list[dict[str, Any]] = []
    for repeat in range(args.repeats):
        for mode_name in args.mode_list:
            mode = MODES[mode_name]
            for system in systems:  # interleaved, so drift over the run hits every system alike
                started = time.monotonic()
                budget = harness.Budget(drain=args.drain_limit)
                cell = harness.run_cell(system, mode, args.n, LATENCY_JOBS, LATENCY_RATE, budget)
                cell["repeat"] = repeat
                cell["wall_s"] = round(time.monotonic() - started, 1)
                cells.append(cell)
                print(_one_line(cell), flush=True)
    text, rows = report.table(cells, args.system_list, args.mode_list)
    print("\n" + text, flush=True)
    return {
        "table_markdown": text,
        "rows": rows,
        "cells": cells,
        "systems": {
            s.name: {
                "version": s.version,
                "workers": {m: s.describe(MODES[m]) for m in args.mode_list},
            }
            for s in systems
        },
    }


def _worktree(ref: str) -> Path:
    """A checkout of ``ref`` under bench/results/trees (made once, reused by later runs)."""
    import subprocess

    from bench.config import RESULTS_DIR

    sha = subprocess.run(
        ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"],
        cwd=_REPO, capture_output=True, text=True, check=True,
    ).stdout.strip()
    tree = RESULTS_DIR / "trees" / sha[:12]
    if not tree.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(tree), sha], cwd=_REPO, check=True
        )
    return tree


def _one_line(cell: dict[str, Any]) -> str:
    def f(key: str, spec: str) -> str:
        value = cell.get(key)
        return "n/a" if value is None else format(value, spec)

    return (
        f"[{cell['repeat'] + 1}] {cell['system']:>8} {cell['mode']}: one {f('enqueue_one', ',.0f')}/s "
        f"bulk {f('enqueue_bulk', ',.0f')}/s drain {f('drain', ',.0f')}/s "
        f"(startup {f('startup_s', '.2f')}s) p50 {f('latency_p50', '.2f')}ms p99 {f('latency_p99', '.2f')}ms "
        f"rss {f('rss_total_mb', '.1f')}/{f('rss_per_process_mb', '.1f')}MB "
        f"load {cell['load_before']:.1f} [{cell['wall_s']}s]"
    )


def main(argv: list[str]) -> int:
    from bench import venv

    venv.reexec_inside([str(Path(__file__).resolve()), *argv])
    args = parse_args(argv)
    from bench.config import RESULTS_DIR

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out: dict[str, Any] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "args": {
            "n": args.n,
            "repeats": args.repeats,
            "systems": args.system_list,
            "modes": args.mode_list,
            "quick": args.quick,
        },
    }
    if args.scaling:
        from bench import scaling

        out["scaling"] = scaling.run(quick=args.quick)
        kind = "scaling"
    elif args.profile:
        from bench import hotpath

        out["profile"] = hotpath.run(n=args.n)
        kind = "profile"
    else:
        out["comparison"] = run_comparison(args)
        kind = "comparison"
    out["run_seconds"] = round(time.monotonic() - started, 1)
    path = RESULTS_DIR / f"{kind}-{stamp}.json"
    path.write_text(json.dumps(out, indent=2, default=str))
    print(
        f"\n{kind} finished in {out['run_seconds']:.0f}s; results in {path.relative_to(_REPO)}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
