"""Flow control: expiring jobs (Sidekiq Pro's ``expires_in``).

Expiry: a job not started by its deadline is dropped when a worker fetches it. The deadline is
fixed at enqueue, ``expires_in`` after the enqueue (after the run-at of a scheduled job), and
travels in the payload (``expires_at``), so a retry or a reschedule of the job keeps it. Only
classes that declare ``expires_in`` (``None`` included: no default, ``set(expires_in=...)``
per enqueue) get the layer: a worker pays nothing for the jobs of other classes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured

from django_async_jobs import retries, signals
from django_async_jobs.conf import wait_seconds

if TYPE_CHECKING:
    from django_async_jobs.job import ApplicationJob

logger = logging.getLogger("django_async_jobs.job")

EXPIRED = retries.Outcome("expired")


def expiry_seconds(value: Any, what: str) -> float:
    """``expires_in`` as seconds: a positive number of seconds or a timedelta."""
    seconds = wait_seconds(value, what)
    if seconds <= 0:
        raise ValueError(f"{what} must be more than 0 seconds, got {value!r}.")
    return seconds


def compile_class(job_class: type, base: type) -> None:
    """Check a class's flow-control options when it is defined, and keep them in seconds;
    ``base`` is ``ApplicationJob``, whose defaults do not count as declared."""
    name = job_class.__qualname__
    value = job_class.expires_in
    try:
        job_class._expires_in = None if value is None else expiry_seconds(value, f"{name}.expires_in")
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(str(exc)) from None
    # Declared on the class or a base of its own, ``None`` included: the class takes part.
    job_class._expiring = any("expires_in" in vars(klass) for klass in job_class.__mro__ if klass is not base)


def enqueue_expiry(job_class: type, value: Any) -> float:
    """``set(expires_in=...)``'s value in seconds, for a class whose workers check expiry."""
    seconds = expiry_seconds(value, "expires_in")
    if not job_class._expiring:
        raise TypeError(
            f"{job_class.__qualname__}.set(expires_in=...): the class declares no expires_in, so its "
            f"workers do not check expiry; declare one on the class (expires_in = None: none by default)."
        )
    return seconds


class Expiry:
    """At enqueue: the deadline into the payload. In the worker, outermost but for the log line:
    past the deadline, the job ends as ``expired`` without starting (no ``job_started``)."""

    def applies_to(self, job_class: type) -> bool:
        return bool(getattr(job_class, "_expiring", False))

    def enqueue(self, job: ApplicationJob, call_next: Callable[[Any], Any]) -> Any:
        seconds = job._expires_in
        if seconds is not None and "expires_at" not in job.payload:  # a job enqueued again keeps its own
            start = job.scheduled_at if job.scheduled_at is not None else time.time()
            job.payload["expires_at"] = round(start + seconds, 3)
        return call_next(job)

    def perform(self, job: ApplicationJob, call_next: Callable[[Any], Any]) -> Any:
        if not _expired(job):
            return call_next(job)
        job.outcome = EXPIRED
        return None

    async def aperform(self, job: ApplicationJob, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        if not _expired(job):
            return await call_next(job)
        job.outcome = EXPIRED
        return None


def _expired(job: ApplicationJob) -> bool:
    deadline = job.payload.get("expires_at")
    # Anything but a finite number is not what an enqueue wrote: ignored, the job runs.
    if type(deadline) not in (int, float) or not math.isfinite(deadline) or time.time() < deadline:
        return False
    when = datetime.fromtimestamp(deadline, UTC).isoformat(timespec="seconds") if deadline > 0 else deadline
    logger.info("expired %s %s queue=%s: not started by %s", job.job_name, job.job_id, job.queue_name, when)
    signals.send(signals.job_expired, type(job), job=job)
    return True
