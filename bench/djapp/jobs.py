"""The bench jobs for django-async-jobs (found by the app's ``jobs`` autodiscovery)."""

from __future__ import annotations

from bench.config import REDIS_DB
from bench.jobbody import record, sleep_then_record
from django_async_jobs import ApplicationJob

DB = REDIS_DB["ours"]


class IncrJob(ApplicationJob):
    def perform(self, enqueued_at: float) -> None:
        record(DB, enqueued_at)


class SleepIncrJob(ApplicationJob):
    def perform(self, seconds: float) -> None:
        sleep_then_record(DB, seconds)


class BatchDoneJob(ApplicationJob):
    """A batch's callback in the ``ours-batch`` cells: records nothing, so the drain's count is
    the batch's jobs only."""

    def perform(self, description: str) -> None:
        pass
