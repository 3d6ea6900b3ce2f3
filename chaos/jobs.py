"""The suite's jobs. Each records its run in the ledger, a redis-server of its own that no fault
touches, so the harness counts every run exactly: ``<key>:runs`` (job id -> runs) and
``<key>:first`` (job id -> when its first run ended)."""

import os
import time

import redis

from django_async_jobs import ApplicationJob

# One client per process, made at import: it connects on first use, shared by every thread.
_ledger = redis.Redis.from_url(os.environ.get("CHAOS_LEDGER_URL", "redis://127.0.0.1:1"))


def record(job_id: str) -> None:
    key = os.environ["CHAOS_LEDGER_KEY"]
    with _ledger.pipeline(transaction=False) as pipe:
        pipe.hincrby(f"{key}:runs", job_id, 1)
        pipe.hsetnx(f"{key}:first", job_id, repr(time.time()))
        pipe.execute()


class ChaosJob(ApplicationJob):
    """A normal job: works ``seconds``, then records its run."""

    def perform(self, seconds: float = 0.0) -> None:
        if seconds:
            time.sleep(seconds)
        record(self.job_id)


class DoomedJob(ApplicationJob):
    """Records its run, then fails with no retry left: a dead job at its first run."""

    max_retries = 0

    def perform(self) -> None:
        record(self.job_id)
        raise RuntimeError("doomed by the fault suite")
