"""Jobs of the flow-control tests (expiry, rate limits, concurrency limits): each reports
through a Redis key the test names, so a worker in another process can be observed."""

import time
from datetime import timedelta

from django_async_jobs import ApplicationJob, RateLimit, limit_concurrency
from django_async_jobs.broker.client import get_broker


def _redis():
    return get_broker().redis


class ExpiringJob(ApplicationJob):
    expires_in = 60

    def perform(self, key):
        _redis().rpush(key, f"ran {self.job_id}")


class ExpiryPerEnqueueJob(ApplicationJob):
    """Declares ``expires_in = None``: no deadline unless an enqueue sets one."""

    expires_in = None

    def perform(self, key):
        _redis().rpush(key, f"ran {self.job_id}")


class AsyncExpiringJob(ApplicationJob):
    expires_in = 60

    async def perform(self, key):
        _redis().rpush(key, f"ran {self.job_id}")


class FailingExpiringJob(ApplicationJob):
    expires_in = 3600
    max_retries = 1

    def perform(self, key):
        _redis().rpush(key, f"ran {self.job_id}")
        raise RuntimeError("fails, to be retried")


# -- rate limits -----------------------------------------------------------------------------------

ONE_PER_SECOND = RateLimit.window("tests-one-per-second", 1, per=1)
TEN_PER_SECOND = RateLimit.window("tests-ten-per-second", 10, per=timedelta(seconds=1))


class WindowLimitedJob(ApplicationJob):
    """Calls through ``TEN_PER_SECOND`` and records when it was let in: Redis's time (ms) just
    before asking and just after, so a test can place each call in its window."""

    def perform(self, key):
        before = _now_ms()
        with TEN_PER_SECOND.within_limit():
            _redis().rpush(key, f"{before} {_now_ms()}")


class OnePerSecondJob(ApplicationJob):
    def perform(self, key):
        _redis().rpush(key, f"try {self.job_id}")
        with ONE_PER_SECOND.within_limit():
            _redis().rpush(key, f"ran {self.job_id} {self.executions}")


class NeverLimitedTwiceJob(ApplicationJob):
    """Over the limit at once (``max_limited = 0``): the OverLimit is its failure."""

    max_limited = 0
    max_retries = 0

    def perform(self, key):
        with ONE_PER_SECOND.within_limit():
            _redis().rpush(key, f"ran {self.job_id}")


def _now_ms():
    seconds, micros = _redis().time()
    return seconds * 1000 + micros // 1000


# -- concurrency limits ----------------------------------------------------------------------------


class AccountJob(ApplicationJob):
    """At most two at once per account. Counts how many run at once for its account (INCR after
    its place is taken, DECR before it is freed) and records each count it saw."""

    limits_concurrency = limit_concurrency(to=2, key=lambda job: job.arguments[0], duration=60)

    def perform(self, account, key, seconds=0.05):
        redis = _redis()
        running = redis.incr(f"{key}:running:{account}")
        redis.rpush(f"{key}:seen", running)
        time.sleep(seconds)
        redis.decr(f"{key}:running:{account}")
        redis.rpush(f"{key}:done", self.job_id)


class GatedAccountJob(ApplicationJob):
    """One at a time per account; waits at ``gate`` (a Redis list) until the test pushes to it."""

    limits_concurrency = limit_concurrency(to=1, key=lambda job: job.arguments[0], duration=60)

    def perform(self, account, key, gate=None):
        _redis().rpush(f"{key}:start", self.job_id)
        _redis().rpush(f"{key}:log", f"start {self.job_id}")
        if gate:
            _redis().blpop(gate, timeout=20)
        _redis().rpush(f"{key}:end", self.job_id)
        _redis().rpush(f"{key}:log", f"end {self.job_id}")


class DiscardingAccountJob(GatedAccountJob):
    limits_concurrency = limit_concurrency(to=1, key=lambda job: job.arguments[0], on_conflict="discard")


class WholeClassLimitJob(ApplicationJob):
    limits_concurrency = limit_concurrency(to=1)

    def perform(self, key):
        _redis().rpush(key, self.job_id)


class ExpiringAccountJob(GatedAccountJob):
    expires_in = 60
