"""Jobs for the batch tests. Each records what happened in Redis under the key it is given."""

import json
import os
import time

from django_async_jobs import ApplicationJob, Batch, retry
from django_async_jobs.broker.client import get_broker


class Flaky(Exception):
    pass


class Unwanted(Exception):
    pass


def _redis():
    return get_broker().redis


class MemberJob(ApplicationJob):
    """A batch member: fails its first ``fail`` executions (into a retry at once), raises
    ``Unwanted`` (discarded) with ``discard``, and dies with ``die`` (its retries used up)."""

    retry_on = [retry(Flaky, wait=0, attempts=3, jitter=0)]
    discard_on = [Unwanted]

    def perform(self, key, name, fail=0, die=False, discard=False, seconds=0.0):
        _redis().rpush(key, f"run:{name}")
        if seconds:
            time.sleep(seconds)
        if discard:
            raise Unwanted(name)
        if die or self.executions <= fail:
            raise Flaky(name)


class SpawnJob(ApplicationJob):
    """A batch member that adds ``count`` members to its own batch, or opens a child batch."""

    def perform(self, key, count, child=False):
        _redis().rpush(key, "run:spawn")
        if child:
            inner = Batch(description="child")
            inner.on("success", CallbackRecordJob, key, "child-success")
            with inner.jobs():
                MemberJob.perform_bulk([(key, f"child{i}") for i in range(count)])
        else:
            with self.batch.jobs():
                MemberJob.perform_bulk([(key, f"added{i}") for i in range(count)])


class CancelAwareJob(ApplicationJob):
    """Records whether it sees its batch cancelled."""

    def perform(self, key, gate):
        _redis().rpush(key, "start")
        _redis().blpop(gate, timeout=20)
        deadline = time.monotonic() + 5
        while not self.batch.cancelled and time.monotonic() < deadline:
            time.sleep(0.1)
        _redis().rpush(key, f"cancelled:{self.batch.cancelled}")


class CallbackRecordJob(ApplicationJob):
    """A callback: records the event, the batch that fired it and its status then."""

    def perform(self, key, event, **options):
        status = Batch.status(self.batch_id) if self.batch_id else None
        _redis().rpush(f"{key}:callbacks", json.dumps({
            "event": event, "batch_id": self.batch_id, "options": options, "pid": os.getpid(),
            "status": status and {k: status[k] for k in ("total", "pending", "failures", "dead")},
        }))


class StepJob(ApplicationJob):
    """A chain step: records its name; fails for good with ``die``."""

    retry_on = [retry(Flaky, wait=0, attempts=1, jitter=0)]

    def perform(self, key, name, die=False):
        _redis().rpush(key, f"step:{name}")
        if die:
            raise Flaky(name)


class AsyncMemberJob(ApplicationJob):
    """A batch member on the worker's event loop."""

    async def perform(self, key, name):
        _redis().rpush(key, f"run:{name}")
