"""RQ: ``Queue.enqueue`` one at a time, ``Queue.enqueue_many`` (one pipeline) for bulk.

RQ has no threaded worker: mode A runs two ``SimpleWorker`` processes (jobs in the worker
process), mode B two default ``Worker`` processes (a forked work horse per job).
"""

from __future__ import annotations

from importlib.metadata import version

from bench.config import redis_url
from bench.procs import venv_bin
from bench.systems.base import Mode, System

QUEUE = "bench"


class RQ(System):
    name = "rq"

    def prepare(self) -> None:
        from rq import Queue

        from bench.tasks.rq_tasks import incr

        self.queue = Queue(QUEUE, connection=self.redis())
        self.incr = incr
        self.version = version("rq")

    def enqueue_one(self, enqueued_at: float) -> None:
        self.queue.enqueue(self.incr, enqueued_at)

    def enqueue_bulk(self, n: int) -> None:
        from rq import Queue

        self.queue.enqueue_many([Queue.prepare_data(self.incr, (0.0,)) for _ in range(n)])

    def worker_commands(self, mode: Mode) -> list[list[str]]:
        worker_class = "rq.worker.SimpleWorker" if mode.name == "A" else "rq.worker.Worker"
        cmd = [venv_bin("rq"), "worker", "-u", redis_url(self.db), "-w", worker_class, QUEUE]
        return [cmd for _ in range(2)]


SYSTEM = RQ()
