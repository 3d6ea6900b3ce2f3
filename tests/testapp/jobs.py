"""Jobs the test suite runs. They report through Redis so a worker in another process can be
observed; the key comes from the test, so tests never share state."""

import os
import time

from django_async_jobs import ApplicationJob
from django_async_jobs.broker.client import get_broker


def _redis():
    return get_broker().redis


class IncrJob(ApplicationJob):
    def perform(self, key, amount=1):
        _redis().incrby(key, amount)
        return amount


class RecordJob(ApplicationJob):
    queue_as = "default"

    def perform(self, key, *values, **options):
        import json

        _redis().rpush(key, json.dumps({"args": list(values), "kwargs": options, "executions": self.executions,
                                        "queue": self.queue_name, "pid": os.getpid()}))


class SleepJob(ApplicationJob):
    def perform(self, key, seconds):
        _redis().rpush(key, f"start:{os.getpid()}")
        time.sleep(seconds)
        _redis().rpush(key, f"done:{os.getpid()}")


class FailJob(ApplicationJob):
    def perform(self, key):
        _redis().incr(key)
        raise RuntimeError("boom")
