"""A recurring job for the tests (imported by jobs.py, so worker subprocesses know it)."""

import json
import os

from django_async_jobs import ApplicationJob
from django_async_jobs.broker.client import get_broker


class CronTickJob(ApplicationJob):
    """Records the tick it was enqueued for, when, and by which process it ran."""

    def perform(self, key):
        cron = self.payload.get("cron") or {}
        get_broker().redis.rpush(key, json.dumps({
            "tick": cron.get("tick"), "entry": cron.get("name"),
            "enqueued_at": self.payload.get("enqueued_at"), "pid": os.getpid(),
        }))
