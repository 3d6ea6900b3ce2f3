"""Our drain throughput over processes x threads, a sleeping-job case, and the plot.

Each point: flush, bulk-enqueue the backlog, start ``runworker`` with that layout, time from
the first job's start until the counter reaches the backlog (start-up excluded), stop.
"""

from __future__ import annotations

import time
from typing import Any

from bench import harness, procs
from bench.config import REPO_DIR
from bench.systems.ours import SYSTEM, bulk_enqueue, worker_command

PROCESSES = (1, 2, 4)
THREADS = (1, 5, 10, 25)
SLEEP_SECONDS = 0.01
SLEEP_LAYOUTS = ((1, 10), (1, 25), (2, 25), (4, 25))
PLOT_PATH = REPO_DIR / "docs" / "performance.png"


def drain_point(
    processes: int, threads: int, n: int, job: type[Any], arg: float, limit: float
) -> dict[str, Any]:
    SYSTEM.flush()
    bulk_enqueue(job, n, arg)
    spawned = time.time()
    group = procs.start(
        f"scaling-{processes}x{threads}", [worker_command(processes, threads)], SYSTEM.env()
    )
    try:
        result = harness.drain(SYSTEM, group, n, spawned, limit)
        result.update(procs.memory(group))
    finally:
        group.stop()
        SYSTEM.flush()
    result.update({"processes": processes, "threads": threads})
    return result


def run(quick: bool = False) -> dict[str, Any]:
    from bench.djapp.jobs import IncrJob, SleepIncrJob

    SYSTEM.prepare()
    n = 2_000 if quick else 20_000
    n_sleep = 1_000 if quick else 5_000
    points = []
    for processes in PROCESSES:
        for threads in THREADS:
            point = drain_point(processes, threads, n, IncrJob, 0.0, limit=30)
            points.append(point)
            print(f"incr  {processes}x{threads:<2}: {point['drain']:,.0f} jobs/s", flush=True)
    sleeping = []
    for processes, threads in SLEEP_LAYOUTS:
        point = drain_point(processes, threads, n_sleep, SleepIncrJob, SLEEP_SECONDS, limit=30)
        point["ideal"] = processes * threads / SLEEP_SECONDS
        sleeping.append(point)
        print(
            f"sleep {processes}x{threads:<2}: {point['drain']:,.0f} jobs/s (ideal {point['ideal']:,.0f})",
            flush=True,
        )
    plot(points, sleeping)
    return {
        "n": n,
        "n_sleep": n_sleep,
        "sleep_seconds": SLEEP_SECONDS,
        "incr": points,
        "sleep": sleeping,
        "plot": str(PLOT_PATH.relative_to(REPO_DIR)),
        "table_markdown": table(points, sleeping),
    }


def table(points: list[dict[str, Any]], sleeping: list[dict[str, Any]]) -> str:
    by = {(p["processes"], p["threads"]): p["drain"] for p in points}
    lines = [
        "| processes \\ threads | " + " | ".join(str(t) for t in THREADS) + " |",
        "|---" * (len(THREADS) + 1) + "|",
    ]
    for processes in PROCESSES:
        lines.append(
            f"| {processes} | " + " | ".join(f"{by[(processes, t)]:,.0f}" for t in THREADS) + " |"
        )
    lines += [
        "",
        "| sleeping job (10 ms) layout | jobs/s | ideal (threads / 10 ms) | of ideal |",
        "|---|---|---|---|",
    ]
    for p in sleeping:
        lines.append(
            f"| {p['processes']} x {p['threads']} | {p['drain']:,.0f} | {p['ideal']:,.0f} | {p['drain'] / p['ideal']:.0%} |"
        )
    return "\n".join(lines)


def plot(points: list[dict[str, Any]], sleeping: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for processes in PROCESSES:
        row = [p for p in points if p["processes"] == processes]
        left.plot(
            [p["threads"] for p in row],
            [p["drain"] for p in row],
            marker="o",
            label=f"{processes} process" + ("es" if processes > 1 else ""),
        )
    left.set_xscale("log")
    left.set_xticks(THREADS, [str(t) for t in THREADS])
    left.set_xlabel("threads per process")
    left.set_ylabel("drain throughput (jobs/s)")
    left.set_title("INCR job: drain throughput")
    left.set_ylim(bottom=0)
    left.grid(alpha=0.3)
    left.legend()

    labels = [f"{p['processes']}x{p['threads']}" for p in sleeping]
    xs = range(len(sleeping))
    right.bar(xs, [p["drain"] for p in sleeping], label="measured")
    right.scatter(
        xs, [p["ideal"] for p in sleeping], color="black", marker="_", s=400, label="ideal"
    )
    right.set_xticks(list(xs), labels)
    right.set_xlabel("processes x threads")
    right.set_ylabel("jobs/s")
    right.set_title(f"Job sleeping {SLEEP_SECONDS * 1000:.0f} ms")
    right.grid(alpha=0.3, axis="y")
    right.legend()
    fig.suptitle("django-async-jobs worker scaling (2-core machine, Redis 7 on localhost)")
    fig.tight_layout()
    PLOT_PATH.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT_PATH, dpi=110)
    plt.close(fig)
