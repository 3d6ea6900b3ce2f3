"""Unique jobs for the tests (imported by jobs.py, so worker subprocesses know them too).

Each records ``start:<name>`` / ``done:<name>`` on the test's key and, given a gate, waits until
the test pushes to it: a test decides exactly when a job is running and when it ends.
"""

import os

from django_async_jobs import ApplicationJob, retry
from django_async_jobs.broker.client import get_broker


class GatedJob(ApplicationJob):
    """Lock on the first argument only: every call of a test conflicts, whatever the name."""

    @classmethod
    def lock_args(cls, key, *args, **kwargs):
        return [key]

    def perform(self, key, name, gate=None):
        redis = get_broker().redis
        redis.rpush(key, f"start:{name}:{os.getpid()}")
        if gate:
            redis.blpop(gate, timeout=10)
        redis.rpush(key, f"done:{name}")


class UntilExecutingJob(GatedJob):
    lock = "until_executing"


class UntilExecutedJob(GatedJob):
    lock = "until_executed"


class UntilAndWhileExecutingJob(GatedJob):
    lock = "until_and_while_executing"
    on_conflict = "reschedule"


class WhileExecutingJob(GatedJob):
    lock = "while_executing"
    on_conflict = "reschedule"


class WhileExecutingDropJob(GatedJob):
    lock = "while_executing"


class ShortTtlUntilExecutedJob(GatedJob):
    """Its lock_ttl is shorter than the runs the tests give it: the heartbeat must renew it."""

    lock = "until_executed"
    lock_ttl = 1.5


class ShortTtlWhileExecutingJob(GatedJob):
    lock = "while_executing"
    lock_ttl = 1.5


class RaisingUniqueJob(GatedJob):
    lock = "until_executed"
    on_conflict = "raise"


class ExpiringJob(GatedJob):
    lock = "until_expired"
    lock_ttl = 4  # long enough that it outlives the job (and the test's look) on a loaded machine


class FailingUniqueJob(ApplicationJob):
    """Fails every time: one quick retry (lock kept), then dead (lock released)."""

    lock = "until_executed"
    retry_on = [retry(LookupError, wait=0.3, attempts=2, jitter=0)]

    def perform(self, key):
        get_broker().redis.incr(key)
        raise LookupError("always")
