"""Where a worker's time per job goes: py-spy on one ``runworker -c 10`` draining N jobs.

The worker starts idle; py-spy attaches (``--gil``: only the thread holding the GIL is sampled,
which in a CPU-bound Python process is where the throughput goes); then N jobs are bulk
enqueued and drained. Besides the samples we read the worker's and Redis's CPU time over the
drain, giving CPU microseconds per job on each side, and Redis's command counts per job.
Then ``perform_later`` is profiled in-process with pyinstrument.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import redis

from bench import harness, procs
from bench.config import REDIS_HOST, REDIS_PORT, RESULTS_DIR
from bench.systems.base import MODE_A
from bench.systems.ours import SYSTEM, bulk_enqueue

RATE = 250  # samples per second

# Categories in priority order: a sample belongs to the first rule that matches any of its
# frames. (file fragment, function name or "" for any function in that file, category)
RULES: tuple[tuple[str, str, str], ...] = (
    ("bench/jobbody.py", "", "job body: INCR (redis-py round trip)"),
    ("logging/", "", "logging: per-job line"),
    ("django_async_jobs/worker/logs.py", "", "logging: per-job line"),
    ("django_async_jobs/worker/job_log.py", "", "logging: per-job line"),
    ("django_async_jobs/serialization.py", "decode_payload", "JSON decode + payload checks"),
    ("json/", "", "JSON decode + payload checks"),
    ("django/db/", "", "close_old_connections"),
    ("django/utils/connection.py", "", "close_old_connections"),
    ("django_async_jobs/worker/connections.py", "", "close_old_connections"),
    ("django/dispatch/", "", "job_started/job_succeeded signals"),
    ("django_async_jobs/signals.py", "", "job_started/job_succeeded signals"),
    ("django_async_jobs/job.py", "_check_arguments", "signature check (Signature.bind)"),
    ("inspect.py", "", "signature check (Signature.bind)"),
    ("django_async_jobs/job.py", "deserialize", "deserialize job"),
    ("django_async_jobs/broker/client.py", "fetch", "fetch: Lua call (the leading processor thread)"),
    ("django_async_jobs/broker/client.py", "settle", "settle: Lua call (acker thread)"),
    ("django_async_jobs/worker/acker.py", "add", "hand-off: processor -> acker queue"),
    ("django_async_jobs/worker/acker.py", "", "acker loop"),
    ("django_async_jobs/worker/fetcher.py", "", "fetcher: take/lead, slots, buffer, notify listener"),
    ("django_async_jobs/worker/recovery.py", "", "heartbeat, recovery, poller"),
    ("django_async_jobs/worker/poller.py", "", "heartbeat, recovery, poller"),
    ("django_async_jobs/middleware/", "", "the perform chain (middleware layers)"),
    ("django_async_jobs/retries.py", "", "the perform chain (middleware layers)"),
    ("django_async_jobs/locks.py", "", "the perform chain (middleware layers)"),
    ("django_async_jobs/idempotency.py", "", "the perform chain (middleware layers)"),
    ("django_async_jobs/callbacks.py", "", "the perform chain (middleware layers)"),
    ("django_async_jobs/job.py", "", "the perform chain (middleware layers)"),
    ("django_async_jobs/worker/processor.py", "", "process: decode, chain, settle"),
    (
        "django_async_jobs/worker/launcher.py",
        "_process_loop",
        "processor loop (busy lock)",
    ),
    ("redis/", "", "redis-py (other)"),
)


def _frames(stack: str) -> list[tuple[str, str]]:
    """``func (file:line);...`` -> [(file, func)], root first."""
    out = []
    for frame in stack.split(";"):
        name, _, rest = frame.partition(" (")
        out.append((rest.rsplit(":", 1)[0], name.strip().rsplit(".", 1)[-1]))
    return out


def categorise(frames: list[tuple[str, str]]) -> str:
    for fragment, name, category in RULES:
        for path, func in frames:
            if fragment in path and (not name or name == func):
                return category
    return "other"


def summarise(raw: Path, top: int = 15) -> dict[str, Any]:
    categories: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_txt = line.rpartition(" ")
        if not stack or not count_txt.isdigit():
            continue
        count = int(count_txt)
        frames = _frames(stack)
        total += count
        categories[categorise(frames)] += count
        path, func = frames[-1]
        leaves[f"{func} ({path.split('site-packages/')[-1].split('lib/python3.12/')[-1]})"] += count
    pct = {k: round(100 * v / total, 1) for k, v in categories.most_common()} if total else {}
    return {
        "samples": total,
        "categories_pct": pct,
        "top_self_pct": {k: round(100 * v / total, 1) for k, v in leaves.most_common(top)}
        if total
        else {},
    }


def _cpu_seconds(pids: list[int]) -> float:
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            raw = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def _redis_cpu() -> float:
    info = redis.Redis(host=REDIS_HOST, port=REDIS_PORT).info("cpu")
    return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])


def _redis_calls() -> dict[str, int]:
    """Calls per Redis command so far (server-wide; the bench's own GET polling included)."""
    stats = redis.Redis(host=REDIS_HOST, port=REDIS_PORT).info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


def _per_job(before: dict[str, int], after: dict[str, int], jobs: int) -> dict[str, float]:
    diff = {k: after[k] - before.get(k, 0) for k in after}
    return {
        k: round(v / jobs, 3)
        for k, v in sorted(diff.items(), key=lambda kv: -kv[1])
        if v / jobs >= 0.01
    }


def profile_enqueue(n: int) -> dict[str, Any]:
    """In-process pyinstrument profile of ``perform_later`` (one job per call), and its Redis calls."""
    from pyinstrument import Profiler

    from bench.djapp.jobs import IncrJob

    SYSTEM.flush()
    calls_before = _redis_calls()
    profiler = Profiler(interval=0.0005)
    start = time.perf_counter()
    with profiler:
        for _ in range(n):
            IncrJob.perform_later(0.0)
    elapsed = time.perf_counter() - start
    calls = _per_job(calls_before, _redis_calls(), n)
    SYSTEM.flush()
    text = profiler.output_text(unicode=False, color=False, show_all=False)
    (RESULTS_DIR / "profile-enqueue.txt").write_text(text)
    return {
        "jobs": n,
        "jobs_per_s_under_profiler": round(n / elapsed),
        "redis_calls_per_job": calls,
        "us_per_job_under_profiler": round(1e6 * elapsed / n, 1),
    }


PRIVATE_PORT = 6390


def run(n: int) -> dict[str, Any]:
    """Profile against a private ``redis-server`` (when installed), so Redis's command counts and
    CPU time are this worker's alone; the shared Redis serves other users of the machine."""
    if os.environ.get("BENCH_PRIVATE_REDIS") or not shutil.which("redis-server"):
        return profile(n)
    server = subprocess.Popen(
        ["redis-server", "--port", str(PRIVATE_PORT), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    out = RESULTS_DIR / "profile-summary.json"
    try:
        time.sleep(0.5)
        env = procs.bench_env({"BENCH_REDIS_PORT": str(PRIVATE_PORT), "BENCH_PRIVATE_REDIS": "1"})
        subprocess.run(
            [sys.executable, "-m", "bench.hotpath", str(n), str(out)], env=env, check=True
        )
    finally:
        server.terminate()
        server.wait(10)
    summary: dict[str, Any] = json.loads(out.read_text())
    summary["redis"] = f"private redis-server on port {PRIVATE_PORT}"
    return summary


def profile(n: int) -> dict[str, Any]:
    SYSTEM.prepare()
    from bench.djapp.jobs import IncrJob

    SYSTEM.flush()
    out_path = RESULTS_DIR / "profile-worker.txt"
    group = procs.start("profile", SYSTEM.worker_commands(MODE_A), SYSTEM.env())
    spy = None
    try:
        time.sleep(2.0)  # Django set up, threads started, a thread waiting for "ready"
        worker_pid = group.procs[0].pid
        spy = subprocess.Popen(
            [
                procs.venv_bin("py-spy"),
                "record",
                "--pid",
                str(worker_pid),
                "--gil",
                "--rate",
                str(RATE),
                "--format",
                "raw",
                "--output",
                str(out_path),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(1.0)
        cpu_before, redis_before, calls_before = (
            _cpu_seconds(group.tree()),
            _redis_cpu(),
            _redis_calls(),
        )
        spawned = time.time()
        bulk_enqueue(IncrJob, n, 0.0)
        result = harness.drain(SYSTEM, group, n, spawned, timeout=120)
        cpu_after, redis_after, calls_after = (
            _cpu_seconds(group.tree()),
            _redis_cpu(),
            _redis_calls(),
        )
        spy.send_signal(signal.SIGINT)
        _, err = spy.communicate(timeout=30)
    finally:
        if spy is not None and spy.poll() is None:
            spy.kill()
        group.stop()
        SYSTEM.flush()
    summary = (
        summarise(out_path) if out_path.exists() else {"error": err.decode(errors="replace")[-500:]}
    )
    done = result.get("drain_jobs", n)
    summary.update(
        {
            "n": n,
            "drain_under_profiler": result.get("drain"),
            "worker_cpu_us_per_job": round(1e6 * (cpu_after - cpu_before) / done, 1),
            "redis_cpu_us_per_job": round(1e6 * (redis_after - redis_before) / done, 1),
            "redis_calls_per_job": _per_job(calls_before, calls_after, done),
            "raw": str(out_path),
        }
    )
    summary["enqueue_one"] = profile_enqueue(min(n, 5_000))
    for name, value in summary.items():
        print(f"{name}: {value}", flush=True)
    return summary


if __name__ == "__main__":
    result = profile(int(sys.argv[1]))
    Path(sys.argv[2]).write_text(json.dumps(result, indent=2, default=str))
