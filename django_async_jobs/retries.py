"""What happens when ``perform`` raises: retry later, discard, or die."""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

from django_async_jobs.serialization import encode_payload

if TYPE_CHECKING:
    from django_async_jobs.job import ApplicationJob
    from django_async_jobs.worker.processor import Settlement

DEFAULT_MAX_RETRIES = 25


def default_backoff(count: int) -> float:
    """Sidekiq's: count**4 + 15 + rand(10 * (count + 1)) seconds."""
    return count**4 + 15 + random.randint(0, 10 * (count + 1))


def handle_failure(job: ApplicationJob, field: str, raw: bytes, exc: Exception) -> Settlement:
    from django_async_jobs.worker.processor import Settlement, dead_record

    retries = job.payload.get("retry_count", 0)
    if retries < DEFAULT_MAX_RETRIES:
        data: dict[str, Any] = {**job.payload, "executions": job.executions, "retry_count": retries + 1}
        return Settlement("retry", field, time.time() + default_backoff(retries), encode_payload(data), failed=True)
    return dead_record(field, raw, "retries_exhausted", exc, job.payload)
