"""Jobs the poison-payload tests name in payloads they write straight into Redis.

Their arguments are generated, so they use them for nothing outside the process: no Redis key,
no sleep. Each counts its runs in ``runs`` (the tests' worker runs in the test's process).
"""

import threading
from collections import Counter

from django_async_jobs import ApplicationJob, retry

runs: Counter = Counter()
_guard = threading.Lock()


def _ran(name: str) -> None:
    with _guard:
        runs[name] += 1


class PoisonOkJob(ApplicationJob):
    def perform(self, *args, **kwargs):
        _ran("ok")


class PoisonOneArgJob(ApplicationJob):
    def perform(self, value):
        _ran("one_arg")


class PoisonFailJob(ApplicationJob):
    """Always raises: the default policy retries it after 15 s or more."""

    def perform(self, *args, **kwargs):
        _ran("fail")
        raise ValueError("poison job failed")


class PoisonRuleJob(ApplicationJob):
    """Always raises: retried at once by its rule, then dead."""

    retry_on = [retry(ValueError, wait=0, attempts=2, jitter=0)]

    def perform(self, *args, **kwargs):
        _ran("rule")
        raise ValueError("poison rule job failed")


class PoisonTaggedJob(ApplicationJob):
    tagged_arguments = True

    def perform(self, *args, **kwargs):
        _ran("tagged")


class PoisonAsyncJob(ApplicationJob):
    """Runs on the worker's event loop; raises when given positional arguments."""

    async def perform(self, *args, **kwargs):
        _ran("async")
        if args:
            raise ValueError("poison async job failed")


class PoisonUniqueJob(ApplicationJob):
    lock = "while_executing"
    lock_ttl = 60

    def perform(self, *args, **kwargs):
        _ran("unique")


class PoisonExitJob(ApplicationJob):
    """Raises SystemExit, as a job reusing command-line code can."""

    def perform(self, *args, **kwargs):
        _ran("exit")
        raise SystemExit(3)


class PoisonAsyncExitJob(ApplicationJob):
    async def perform(self, *args, **kwargs):
        _ran("async_exit")
        raise SystemExit(4)
