"""Celery: ``apply_async`` one at a time; bulk is ``apply_async`` on one shared producer.

Mode A is the threads pool with 10 threads, mode B the prefork pool with 2 children.
"""

from __future__ import annotations

from importlib.metadata import version

from bench.procs import venv_bin
from bench.systems.base import Mode, System


class Celery(System):
    name = "celery"

    def prepare(self) -> None:
        from bench.tasks.celery_tasks import app, incr

        self.app = app
        self.incr = incr
        self.version = version("celery")

    def enqueue_one(self, enqueued_at: float) -> None:
        self.incr.apply_async((enqueued_at,))

    def enqueue_bulk(self, n: int) -> None:
        with self.app.producer_or_acquire() as producer:
            for _ in range(n):
                self.incr.apply_async((0.0,), producer=producer)

    def worker_commands(self, mode: Mode) -> list[list[str]]:
        pool = (
            ["--pool", "threads", "-c", "10"]
            if mode.name == "A"
            else ["--pool", "prefork", "-c", "2"]
        )
        return [[venv_bin("celery"), "-A", "bench.tasks.celery_tasks", "worker", *pool]]


SYSTEM = Celery()
