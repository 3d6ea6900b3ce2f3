"""Dramatiq: ``actor.send`` one at a time; no bulk API, so bulk is ``broker.enqueue`` in a loop.

Mode A is ``--processes 1 --threads 10``, mode B ``--processes 2 --threads 8``.
"""

from __future__ import annotations

from importlib.metadata import version

from bench.procs import venv_bin
from bench.systems.base import Mode, System


class Dramatiq(System):
    name = "dramatiq"

    def prepare(self) -> None:
        from bench.tasks.dramatiq_tasks import broker, incr

        self.broker = broker
        self.incr = incr
        self.version = version("dramatiq")

    def enqueue_one(self, enqueued_at: float) -> None:
        self.incr.send(enqueued_at)

    def enqueue_bulk(self, n: int) -> None:
        messages = [self.incr.message(0.0) for _ in range(n)]
        for message in messages:
            self.broker.enqueue(message)

    def worker_commands(self, mode: Mode) -> list[list[str]]:
        layout = (
            ["--processes", "1", "--threads", "10"]
            if mode.name == "A"
            else ["--processes", "2", "--threads", "8"]
        )
        return [[venv_bin("dramatiq"), "bench.tasks.dramatiq_tasks", *layout]]


SYSTEM = Dramatiq()
