"""django-async-jobs: ``perform_later`` one at a time, ``perform_all_later`` for bulk."""

from __future__ import annotations

import os
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


class OursAt(Ours):
    """Our worker from a checkout of another commit, in the same cells as the current code
    (``--against REF``): A/B figures for the worker side (drain, idle latency, RSS) finer than
    the noise between runs. Enqueue rows time the current client code in both columns."""

    def __init__(self, ref: str, tree: Path) -> None:
        self.name = f"ours@{ref}"
        self.cwd = tree

    @property
    def db(self) -> int:
        return REDIS_DB["ours"]

    def env(self) -> dict[str, str]:
        return {**super().env(), "PYTHONPATH": str(self.cwd)}


class OursNoJobLog(Ours):
    """The same worker with ``LOG_JOBS = False``: no per-job start/finish log lines."""

    name = "ours-nolog"

    def env(self) -> dict[str, str]:
        return bench_env({"DJANGO_SETTINGS_MODULE": SETTINGS, "BENCH_LOG_JOBS": "0"})


SYSTEM = Ours()
