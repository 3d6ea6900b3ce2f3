"""Huey: calling the task enqueues it; no bulk API, so bulk is a loop of calls.

Mode A is ``-k thread -w 10``, mode B ``-k process -w 2``.
"""

from __future__ import annotations

from importlib.metadata import version

from bench.procs import venv_bin
from bench.systems.base import Mode, System


class Huey(System):
    name = "huey"

    def prepare(self) -> None:
        from bench.tasks.huey_tasks import incr

        self.incr = incr
        self.version = version("huey")

    def enqueue_one(self, enqueued_at: float) -> None:
        self.incr(enqueued_at)

    def enqueue_bulk(self, n: int) -> None:
        for _ in range(n):
            self.incr(0.0)

    def worker_commands(self, mode: Mode) -> list[list[str]]:
        layout = ["-k", "thread", "-w", "10"] if mode.name == "A" else ["-k", "process", "-w", "2"]
        return [[venv_bin("huey_consumer"), "bench.tasks.huey_tasks.huey", *layout]]


SYSTEM = Huey()
