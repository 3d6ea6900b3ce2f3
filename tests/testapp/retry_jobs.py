"""Jobs with retry and discard rules. Each records its executions in Redis under the key it is
given, so the tests can count them exactly."""

from datetime import timedelta

from django_async_jobs import ApplicationJob, discard, polynomially_longer, retry
from django_async_jobs.broker.client import get_broker


class Transient(Exception):
    pass


class RateLimited(Exception):
    pass


class ClientError(Exception):
    pass


class SpecificClientError(ClientError):
    pass


def _count(key: str) -> int:
    return get_broker().redis.incr(key)


class FailingJob(ApplicationJob):
    """Raises the named exception every time."""

    retry_on = [
        retry(Transient, wait=timedelta(seconds=5), attempts=3, jitter=0),
        retry(TimeoutError, wait=polynomially_longer, attempts=5, jitter=0),
        retry(RateLimited, wait=lambda executions: executions * 10, attempts=5, jitter=0),
        retry(ConnectionError, wait=0, attempts=3, jitter=0),
        retry(OSError, wait=7, attempts=2, jitter=0, queue="low", priority=5),
        retry(KeyError, wait=0, attempts="unlimited", jitter=0),
    ]
    discard_on = [ClientError]

    def perform(self, key, error, stop_after=None):
        count = _count(key)
        if stop_after is not None and count >= stop_after:
            return "ok"
        raise {
            "transient": Transient,
            "timeout": TimeoutError,
            "rate": RateLimited,
            "connection": ConnectionError,
            "os": PermissionError,
            "key": KeyError,
            "client": SpecificClientError,
            "other": ValueError,
        }[error]("failed")

    def after_discard(self, exc):
        get_broker().redis.set(f"{self.arguments[0]}:discarded", type(exc).__name__)


def _exhausted(job, exc):
    get_broker().redis.set(f"{job.arguments[0]}:exhausted", type(exc).__name__)


def _discarded(job, exc):
    get_broker().redis.set(f"{job.arguments[0]}:on_discard", type(exc).__name__)


class CallbackJob(ApplicationJob):
    retry_on = [retry(Transient, wait=0, attempts=2, jitter=0, on_exhausted=_exhausted)]
    discard_on = [discard(ClientError, on_discard=_discarded)]

    def perform(self, key, error):
        _count(key)
        raise {"transient": Transient, "client": ClientError}[error]("failed")


class DefaultPolicyJob(ApplicationJob):
    def perform(self, key):
        _count(key)
        raise ValueError("no rule for me")


class NoRetryJob(ApplicationJob):
    max_retries = 0

    def perform(self, key):
        _count(key)
        raise ValueError("die at once")


class RetryFalseJob(ApplicationJob):
    retry_by_default = False

    def perform(self, key):
        _count(key)
        raise ValueError("die at once")


class ManualRetryJob(ApplicationJob):
    """The guide's manual control: re-enqueue itself instead of raising."""

    def perform(self, key, how):
        count = _count(key)
        if count > 1:
            return
        if how == "retry_job":
            self.retry_job(wait=0.2)
        else:
            self.__class__.set(wait=0.2).perform_later(key, how)
