"""Resumable jobs for tests/test_resumable.py. Each writes what it does to Redis lists named
after its first argument, so a test sees every item done, whichever process did it:

* ``<key>``: one ``"<item> <time>"`` entry per item done (the time it was done);
* ``<key>:builds``: the cursor each execution started from;
* ``<key>:events``: anything else worth knowing (a step's start, ``self.cancelled``)."""

import json
import time

from django.db import transaction

from django_async_jobs import ApplicationJob, IterableJob, retry
from django_async_jobs.broker.client import get_broker
from django_async_jobs.resumable import CheckpointError


def _redis():
    return get_broker().redis


class Flaky(Exception):
    pass


def _fails_once(key, item, fail_at):
    """True the first time ``item`` is ``fail_at``: the job raises there once."""
    return item == fail_at and _redis().set(f"{key}:failed:{item}", 1, nx=True)


class ItemsJob(IterableJob):
    """``count`` items (0, 1, ...), each taking ``seconds``; item ``fail_at`` raises once."""

    retry_on = [retry(Flaky, wait=0, attempts=3, jitter=0)]

    def build_enumerator(self, key, count, seconds=0.0, fail_at=None, *, cursor):
        _redis().rpush(f"{key}:builds", json.dumps(cursor))
        return self.list_enumerator(list(range(count)), cursor=cursor)

    def each_iteration(self, item, key, count, seconds=0.0, fail_at=None):
        if seconds:
            time.sleep(seconds)
        if _fails_once(key, item, fail_at):
            raise Flaky(f"item {item}")
        _redis().rpush(key, f"{item} {time.time()}")


class ShortRunsJob(ItemsJob):
    """``ItemsJob`` that puts itself back after half a second of running."""

    max_iteration_runtime = 0.5


class ErrorsJob(IterableJob):
    """Records every third item as an error in its progress row; puts itself back after 0.3 s
    of running (its items take 0.03 s each)."""

    max_iteration_runtime = 0.3

    def build_enumerator(self, key, count, *, cursor):
        _redis().rpush(f"{key}:builds", json.dumps(cursor))
        return self.list_enumerator(list(range(count)), cursor=cursor)

    def each_iteration(self, item, key, count):
        time.sleep(0.03)
        if item % 3 == 0:
            self.progress.error(row=item, error=f"item {item} refused")
        _redis().rpush(key, f"{item} {time.time()}")


class StepsJob(ApplicationJob):
    """Three steps: ``first``, ``rows`` (``rows`` items, each taking ``seconds``; row
    ``fail_at`` raises once), ``last``."""

    retry_on = [retry(Flaky, wait=0, attempts=3, jitter=0)]

    def perform(self, key, rows, fail_at=None, seconds=0.0):
        self.key, self.count, self.fail_at, self.seconds = key, rows, fail_at, seconds
        _redis().rpush(f"{key}:events", f"execution {self.executions} resumptions {self.resumptions}")
        self.step(self.first)
        self.step(self.rows, start=0)
        self.step(self.last)
        return "done"

    def first(self):
        _redis().rpush(self.key, "first")

    def rows(self, step):
        _redis().rpush(f"{self.key}:builds", json.dumps(step.cursor))
        for row in range(step.cursor, self.count):
            if self.seconds:
                time.sleep(self.seconds)
            if _fails_once(self.key, row, self.fail_at):
                raise Flaky(f"row {row}")
            _redis().rpush(self.key, f"row {row}")
            step.advance()

    def last(self):
        _redis().rpush(self.key, "last")


class WatchJob(ApplicationJob):
    """A plain job that polls ``self.cancelled`` for up to 30 s."""

    def perform(self, key):
        _redis().rpush(f"{key}:events", "started")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.cancelled:
                _redis().rpush(f"{key}:events", "saw cancelled")
                return "stopped"
            time.sleep(0.02)
        return "ran out"


class AtomicStepsJob(ApplicationJob):
    """Advances its step inside ``transaction.atomic()``: refused, before the cursor moves; its
    retry waits ten minutes in the retry set."""

    retry_on = [retry(CheckpointError, wait=600, attempts=2)]

    def perform(self, key):
        self.step(self.rows, start=0)

    def rows(self, step):
        with transaction.atomic():
            _redis().rpush(self.arguments[0], "row 0")
            step.advance()


class AsyncWatchJob(ApplicationJob):
    """``WatchJob`` on the worker's event loop."""

    async def perform(self, key):
        import asyncio

        from asgiref.sync import sync_to_async

        await sync_to_async(_redis().rpush)(f"{key}:events", "started")
        for _ in range(1500):
            if self.cancelled:
                await sync_to_async(_redis().rpush)(f"{key}:events", "saw cancelled")
                return "stopped"
            await asyncio.sleep(0.02)
        return "ran out"
