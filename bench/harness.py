"""One measurement cell: a system in a worker mode, every metric, from a clean database.

Order inside a cell: enqueue one at a time (timed, then flushed); bulk enqueue N (timed; this
is the backlog); start the workers on that backlog and time the drain; with the same, now
idle, workers run the latency test; read their peak RSS; stop them; flush.

Every timed phase is time-boxed (``Budget``) so the slowest peers cannot stretch the run past
its time limit: a rate is always jobs done / seconds taken, whether or not it reached N.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

from bench import procs
from bench.config import COUNTER_KEY, FIRST_KEY, LATENCY_KEY
from bench.metrics import percentile
from bench.systems.base import Mode, System

POLL = 0.002  # seconds between counter reads while draining
BULK_CHUNK = 1000  # jobs per bulk call (our dispatch also sends 1,000 per Redis call)
STARTUP_ALLOWANCE = 10.0  # seconds a worker command may take to run its first job


@dataclass(frozen=True)
class Budget:
    """Upper bounds, in seconds, for each timed phase of a cell."""

    enqueue_one: float = 2.5
    enqueue_bulk: float = 4.0
    drain: float = 12.0  # plus STARTUP_ALLOWANCE, since the clock starts at the spawn


def enqueue_one_rate(system: System, n: int, limit: float) -> tuple[float, int]:
    """Jobs per second of single enqueues, over N jobs or ``limit`` seconds, whichever is first.

    A system whose client code is not this process's (``ours@REF``) times its own loop."""
    own = getattr(system, "enqueue_one_rate", None)
    if own is not None:
        return own(n, limit)
    start = time.perf_counter()
    deadline = start + limit
    done = 0
    while done < n:
        for _ in range(100):
            system.enqueue_one(0.0)
        done += 100
        if time.perf_counter() > deadline:
            break
    return done / (time.perf_counter() - start), done


def enqueue_bulk_rate(system: System, n: int, limit: float) -> tuple[float, int]:
    """Jobs per second of bulk enqueues in chunks of ``BULK_CHUNK``; also how many went in."""
    start = time.perf_counter()
    deadline = start + limit
    done = 0
    while done < n:
        size = min(BULK_CHUNK, n - done)
        system.enqueue_bulk(size)
        done += size
        if time.perf_counter() > deadline:
            break
    return done / (time.perf_counter() - start), done


def wait_for_count(
    system: System, target: int, timeout: float, group: procs.WorkerGroup
) -> dict[str, float]:
    """Poll the counter until ``target``; note when it crossed 10 % and 90 % of the way."""
    conn = system.redis()
    base = int(conn.get(COUNTER_KEY) or 0)
    todo = target - base
    marks: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    count = base
    while True:
        count = int(conn.get(COUNTER_KEY) or 0)
        now = time.time()
        done = count - base
        if "p10" not in marks and done >= 0.1 * todo:
            marks["p10"] = now
        if "p90" not in marks and done >= 0.9 * todo:
            marks["p90"] = now
        if count >= target:
            marks["end"] = now
            break
        if time.monotonic() > deadline or not group.alive():
            marks["end"] = now
            break
        time.sleep(POLL)
    marks["count"] = count
    return marks


def drain(
    system: System, group: procs.WorkerGroup, n: int, spawned: float, timeout: float
) -> dict[str, Any]:
    marks = wait_for_count(system, n, timeout, group)
    first_raw = system.redis().get(FIRST_KEY)
    if first_raw is None:
        return {"drain": float("nan"), "drain_complete": False, "startup_s": float("nan")}
    first = float(first_raw)
    done = int(marks["count"])
    elapsed = marks["end"] - first
    steady = (
        n * 0.8 / (marks["p90"] - marks["p10"])
        if "p90" in marks and marks["p90"] > marks["p10"]
        else float("nan")
    )
    return {
        "drain": done / elapsed if elapsed > 0 else float("nan"),
        "drain_complete": done >= n,
        "drain_jobs": done,
        "drain_seconds": round(elapsed, 3),
        "drain_steady": steady,
        "startup_s": round(first - spawned, 3),
    }


def idle_latency(
    system: System, group: procs.WorkerGroup, jobs: int, rate: float
) -> dict[str, float]:
    """``jobs`` jobs at ``rate`` per second to idle workers; each reports start - enqueue time."""
    conn = system.redis()
    conn.delete(LATENCY_KEY)
    target = int(conn.get(COUNTER_KEY) or 0) + jobs
    time.sleep(0.5)  # let the workers go idle (blocking fetch / waiting on a notification)
    start = time.perf_counter()
    for i in range(jobs):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        system.enqueue_one(time.time())
    wait_for_count(system, target, timeout=30, group=group)
    samples = [float(v) * 1000 for v in conn.lrange(LATENCY_KEY, 0, -1)]
    return {
        "latency_p50": percentile(samples, 50),
        "latency_p99": percentile(samples, 99),
        "latency_max": max(samples, default=float("nan")),
        "latency_samples": len(samples),
    }


def _warm_up(system: System, group: procs.WorkerGroup) -> bool:
    """One job through freshly started workers, so the latency test does not time start-up."""
    conn = system.redis()
    target = int(conn.get(COUNTER_KEY) or 0) + 1
    system.enqueue_one(0.0)
    return (
        wait_for_count(system, target, timeout=STARTUP_ALLOWANCE, group=group).get("count", 0)
        >= target
    )


def _merge_memory(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: max(a.get(k, 0.0), b.get(k, 0.0)) for k in a.keys() | b.keys()}


def run_cell(
    system: System, mode: Mode, n: int, latency_jobs: int, latency_rate: float, budget: Budget
) -> dict[str, Any]:
    result: dict[str, Any] = {
        "system": system.name,
        "mode": mode.name,
        "n": n,
        "load_before": os.getloadavg()[0],
    }
    system.flush()
    result["enqueue_one"], result["enqueue_one_jobs"] = enqueue_one_rate(
        system, n, budget.enqueue_one
    )
    system.flush()
    result["enqueue_bulk"], backlog = enqueue_bulk_rate(system, n, budget.enqueue_bulk)
    result["backlog"] = backlog

    name = f"{system.name}-{mode.name}"
    spawned = time.time()
    group = procs.start(name, system.worker_commands(mode), system.env(), system.cwd)
    try:
        result.update(drain(system, group, backlog, spawned, budget.drain + STARTUP_ALLOWANCE))
        memory = procs.memory(group)
        if not result["drain"] >= 1.5 * latency_rate:  # also False for NaN
            result["latency_note"] = (
                f"skipped: workers slower than 1.5 x the offered {latency_rate:g} jobs/s"
            )
        else:
            if not result.get("drain_complete"):
                # Time-boxed drain: restart the workers on an empty queue for the latency test.
                group.stop()
                system.flush()
                group = procs.start(name, system.worker_commands(mode), system.env(), system.cwd)
                if not _warm_up(system, group):
                    raise RuntimeError(f"{name}: restarted workers did not run a job")
            result.update(idle_latency(system, group, latency_jobs, latency_rate))
            memory = _merge_memory(memory, procs.memory(group))
        result.update(memory)
    finally:
        group.stop()
        system.flush()
    result["load_after"] = os.getloadavg()[0]
    return result
