"""A recurring job for the tests (imported by jobs.py, so worker subprocesses know it)."""

import json
import os

from django_async_jobs import ApplicationJob, after_enqueue, before_enqueue
from django_async_jobs.broker.client import get_broker


class CronTickJob(ApplicationJob):
    """Records the tick it was enqueued for, when, and by which process it ran."""

    def perform(self, key):
        cron = self.payload.get("cron") or {}
        get_broker().redis.rpush(key, json.dumps({
            "tick": cron.get("tick"), "entry": cron.get("name"),
            "enqueued_at": self.payload.get("enqueued_at"), "pid": os.getpid(),
        }))


class UniqueCronJob(CronTickJob):
    """A recurring job that must not pile up: one enqueued or running at a time."""

    lock = "until_executed"


class GuardedCronJob(CronTickJob):
    """Enqueue callbacks: refuses while ``<key>:closed`` is set, notes each enqueued job id."""

    @before_enqueue
    def closed(self):
        return not get_broker().redis.exists(f"{self.arguments[0]}:closed")

    @after_enqueue
    def note(self):
        get_broker().redis.rpush(f"{self.arguments[0]}:enqueued", self.job_id)
