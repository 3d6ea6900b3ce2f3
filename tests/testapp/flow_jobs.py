"""Jobs of the flow-control tests (expiry, rate limits, concurrency limits): each reports
through a Redis key the test names, so a worker in another process can be observed."""

from django_async_jobs import ApplicationJob
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
