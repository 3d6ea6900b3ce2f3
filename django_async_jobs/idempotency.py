"""Idempotency markers: a job body, or one step of it, runs at most once per key.

The marker row is inserted first, inside the same ``transaction.atomic()`` as the work:

* the work commits together with its marker, so database effects happen exactly once, whether
  the job was enqueued twice, retried, or recovered after a crash;
* if the work raises, the marker rolls back with it and a retry runs it again;
* a second worker racing on the same key blocks on the unique key until the first commits,
  then skips (or, if the first rolled back, runs).

External side effects (e-mail, SMS, HTTP calls) are not part of the transaction: a crash after
the e-mail left but before the commit sends it again on the retry. The marker makes such
repeats rare (only that window), not impossible; pass the key to the provider as its own
idempotency key where it supports one.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, router, transaction
from django.utils import timezone

from django_async_jobs.conf import argument_repr

if TYPE_CHECKING:
    from django_async_jobs.job import ApplicationJob

logger = logging.getLogger("django_async_jobs.job")

MAX_KEY = 255


def _key(parts: tuple[Any, ...]) -> str:
    key = ":".join(str(part) for part in parts)
    if not key:
        raise ValueError("An idempotency key must not be empty; name the work, e.g. once('sms', task.id).")
    if len(key) > MAX_KEY:  # long keys keep a readable head and stay unique by their hash
        key = key[: MAX_KEY - 65] + ":" + hashlib.sha256(key.encode()).hexdigest()
    return key


def _expiry(value: float | timedelta | None) -> Any:
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise TypeError(f"expires must be a positive number of seconds or a timedelta, got {value!r}.")
    return timezone.now() + timedelta(seconds=seconds)


@contextmanager
def claim(job: ApplicationJob | None, key: str, expires: float | timedelta | None = None) -> Iterator[bool]:
    """Open a transaction and insert the marker: True inside means "do the work now".

    False means the key is done (the transaction is then empty). The caller's work inside the
    block commits with the marker, or rolls back with it.
    """
    from django_async_jobs.models import IdempotencyMarker

    using = router.db_for_write(IdempotencyMarker)
    with transaction.atomic(using=using):
        now = timezone.now()
        IdempotencyMarker.objects.using(using).filter(key=key, expires_at__lte=now).delete()
        try:
            with transaction.atomic(using=using):  # a savepoint: a duplicate key leaves the outer block usable
                IdempotencyMarker.objects.using(using).create(
                    key=key,
                    job_class=job.job_name if job is not None else "",
                    job_id=job.job_id if job is not None else "",
                    expires_at=_expiry(expires),
                )
            fresh = True
        except IntegrityError:
            logger.info("skipping %s: idempotency key %s is already done", job or "work", argument_repr(key))
            fresh = False
        yield fresh


class Idempotency:
    """The perform layer for classes that define ``idempotency_key()``: ``perform`` runs in the
    transaction that inserts the key's marker, or not at all once the key is done."""

    def applies_to(self, job_class: type) -> bool:
        return not getattr(job_class.idempotency_key, "no_key", False)

    def check(self, job_class: type) -> None:
        """Refuse, when the class is defined, what cannot work (an async ``perform``)."""
        if self.applies_to(job_class) and job_class._is_async:
            raise ImproperlyConfigured(
                f"{job_class.__qualname__} defines idempotency_key() but perform is async: the marker must "
                "commit in the transaction of the job's writes, which needs a synchronous perform(). "
                "Make perform() synchronous, or use self.once(...) around a synchronous step."
            )

    def perform(self, job: ApplicationJob, call_next: Callable[[Any], Any]) -> Any:
        key = job.idempotency_key(*job.arguments, **job.kwargs)
        if key is None:
            return call_next(job)
        if not isinstance(key, str):
            raise TypeError(
                f"{type(job).__name__}.idempotency_key() must return a string or None, got "
                f"{argument_repr(key)} (a {type(key).__name__})."
            )
        with claim(job, _key((key,)), type(job).idempotency_expires) as fresh:
            if not fresh:
                return None
            return call_next(job)


def once(job: ApplicationJob | None, *parts: Any, expires: float | timedelta | None = None) -> Any:
    """The context manager behind ``job.once(...)``."""
    return claim(job, _key(parts), expires)


def prune() -> int:
    """Delete expired markers (a periodic clean-up: a recurring job or a cron line)."""
    from django_async_jobs.models import IdempotencyMarker

    deleted, _ = IdempotencyMarker.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted
