"""Background jobs for Django in the style of ActiveJob and Sidekiq, on Redis."""

from django_async_jobs.batches import Batch, chain, chord
from django_async_jobs.callbacks import (
    after_enqueue,
    after_perform,
    around_enqueue,
    around_perform,
    before_enqueue,
    before_perform,
)
from django_async_jobs.flow import OverLimit, RateLimit, limit_concurrency
from django_async_jobs.iterable import IterableJob
from django_async_jobs.job import ApplicationJob, ConfiguredJob
from django_async_jobs.retries import discard, polynomially_longer, retry
from django_async_jobs.serialization import SerializationError

__all__ = [
    "ApplicationJob",
    "Batch",
    "ConfiguredJob",
    "IterableJob",
    "OverLimit",
    "RateLimit",
    "SerializationError",
    "after_enqueue",
    "after_perform",
    "around_enqueue",
    "around_perform",
    "before_enqueue",
    "before_perform",
    "chain",
    "chord",
    "discard",
    "limit_concurrency",
    "polynomially_longer",
    "retry",
]
