"""Jobs for the enqueue-after-commit, test-helper, bulk and async tests. Each reports through
Redis under a key the test gives it, so a worker thread's effects can be observed."""

import asyncio
import json
import time

from django.contrib.auth.models import User

from django_async_jobs import ApplicationJob, before_enqueue, discard, retry
from django_async_jobs.broker.client import get_broker


class Flaky(Exception):
    pass


class Unwanted(Exception):
    pass


class NoteJob(ApplicationJob):
    """Appends its arguments to the Redis list ``key``."""

    def perform(self, key, *values, **options):
        get_broker().redis.rpush(key, json.dumps({"args": list(values), "kwargs": options}))


class ImmediateNoteJob(NoteJob):
    enqueue_after_commit = False


class HaltedJob(NoteJob):
    @before_enqueue
    def refuse(self):
        return False


class UserEmailJob(ApplicationJob):
    """Reads a row: it must run only once the row is committed."""

    def perform(self, key, user_id):
        get_broker().redis.rpush(key, User.objects.get(pk=user_id).email)


class CountingJob(ApplicationJob):
    """Counts its executions in memory (test mode runs jobs in the test's thread)."""

    queue_as = "low"
    runs: list = []

    def perform(self, value, fail_times=0, error="flaky"):
        CountingJob.runs.append(value)
        if len([v for v in CountingJob.runs if v == value]) <= fail_times:
            raise {"flaky": Flaky, "unwanted": Unwanted, "other": RuntimeError}[error](value)
        return value


class RetryingJob(CountingJob):
    retry_on = [retry(Flaky, wait=30, attempts=3, jitter=0)]
    discard_on = [discard(Unwanted)]


class ChainJob(ApplicationJob):
    """Enqueues a follow-up job, as real jobs often do."""

    def perform(self, value):
        CountingJob.set(wait=60).perform_later(value + 1)


class SlowAsyncJob(ApplicationJob):
    """An async job that sleeps without holding a worker thread: ``seconds``, or, given a
    ``gate`` key, until the test sets it (``seconds`` at most)."""

    async def perform(self, key, seconds, gate=None):
        redis = get_broker().redis
        redis.rpush(key, f"start:{time.monotonic()}")
        if gate is None:
            await asyncio.sleep(seconds)
        else:
            deadline = time.monotonic() + seconds
            while not redis.exists(gate) and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        redis.rpush(key, f"done:{time.monotonic()}")
        return seconds


class FailingAsyncJob(ApplicationJob):
    retry_on = [retry(Flaky, wait=30, attempts=2, jitter=0)]

    async def perform(self, key):
        get_broker().redis.incr(key)
        await asyncio.sleep(0)
        raise Flaky("async failure")


class UniqueCountingJob(CountingJob):
    lock = "until_executed"
