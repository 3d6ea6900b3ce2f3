"""django-async-jobs: ``perform_later`` one at a time, ``perform_all_later`` for bulk."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

from bench.config import REDIS_DB
from bench.procs import bench_env
from bench.systems.base import Mode, System

SETTINGS = "bench.djproject.settings"


class Ours(System):
    name = "ours"

    def prepare(self) -> None:
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS)
        import django

        django.setup()
        from bench.djapp.jobs import IncrJob

        self.job = IncrJob
        self.version = version("django-async-jobs")

    def env(self) -> dict[str, str]:
        return bench_env({"DJANGO_SETTINGS_MODULE": SETTINGS})

    def enqueue_one(self, enqueued_at: float) -> None:
        self.job.perform_later(enqueued_at)

    def enqueue_bulk(self, n: int) -> None:
        bulk_enqueue(self.job, n, 0.0)

    def worker_commands(self, mode: Mode) -> list[list[str]]:
        return [worker_command(mode.processes, mode.threads)]


def bulk_enqueue(job_class: type[Any], n: int, *args: Any) -> None:
    """``n`` jobs of ``job_class(*args)`` through ``perform_all_later`` (1,000 per Redis call)."""
    job_class.perform_all_later([job_class(*args) for _ in range(n)])


def worker_command(processes: int, threads: int) -> list[str]:
    cmd = [sys.executable, "-m", "django", "runworker", "-c", str(threads)]
    if processes > 1:
        cmd += ["--processes", str(processes)]
    return cmd


# The enqueue-one loop of harness.enqueue_one_rate, run by another commit's client code.
_ENQUEUE_LOOP = """
import json, sys, time
import django
django.setup()
from bench.djapp.jobs import IncrJob
n, limit = int(sys.argv[1]), float(sys.argv[2])
for _ in range(200):
    IncrJob.perform_later(0.0)  # warm up: connection, scripts, caches
start = time.perf_counter()
deadline, done = start + limit, 0
while done < n:
    for _ in range(100):
        IncrJob.perform_later(0.0)
    done += 100
    if time.perf_counter() > deadline:
        break
print(json.dumps([done / (time.perf_counter() - start), done]))
"""


class OursAt(Ours):
    """Our worker and client from a checkout of another commit, in the same cells as the
    current code (``--against REF``): A/B figures finer than the noise between runs. The
    enqueue-one row runs that commit's client in a process of its own; the bulk row and the
    latency test's enqueues use the current client."""

    def __init__(self, ref: str, tree: Path) -> None:
        self.name = f"ours@{ref}"
        self.cwd = tree

    @property
    def db(self) -> int:
        return REDIS_DB["ours"]

    def env(self) -> dict[str, str]:
        return {**super().env(), "PYTHONPATH": str(self.cwd)}

    def enqueue_one_rate(self, n: int, limit: float) -> tuple[float, int]:
        out = subprocess.run(
            [sys.executable, "-c", _ENQUEUE_LOOP, str(n), str(limit)],
            cwd=self.cwd, env=self.env(), capture_output=True, text=True, check=True,
        ).stdout
        rate, done = json.loads(out.strip().splitlines()[-1])
        return rate, done


class OursInBatches(Ours):
    """The same worker with every bulk-enqueued job in a batch (one ``Batch`` with a ``success``
    callback per bulk call of 1,000 jobs): the drain then pays the batch bookkeeping of each
    job's settle step (``--systems ours,ours-batch``; the issue's budget is 10 % of the drain)."""

    name = "ours-batch"

    def prepare(self) -> None:
        super().prepare()
        from bench.djapp.jobs import BatchDoneJob
        from django_async_jobs import Batch

        self.batch_class = Batch
        self.callback = BatchDoneJob

    def enqueue_bulk(self, n: int) -> None:
        batch = self.batch_class(description="bench")
        batch.on("success", self.callback, "bench")
        with batch.jobs():
            bulk_enqueue(self.job, n, 0.0)


class OursNoJobLog(Ours):
    """The same worker with ``LOG_JOBS = False``: no per-job start/finish log lines."""

    name = "ours-nolog"

    def env(self) -> dict[str, str]:
        return bench_env({"DJANGO_SETTINGS_MODULE": SETTINGS, "BENCH_LOG_JOBS": "0"})


SYSTEM = Ours()
