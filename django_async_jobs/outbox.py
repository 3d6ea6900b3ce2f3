"""The transactional outbox: a job enqueued in a transaction is a row of that transaction.

With ``ASYNC_JOBS["OUTBOX"]`` (or a class's ``enqueue_via_outbox = True``), a job that would
wait for its database's commit (``ENQUEUE_AFTER_COMMIT``) is written instead as an
``OutboxJob`` row in the same transaction, on the same database: rolled back, no job;
committed, the row exists and a worker's relay (``worker/relay.py``) pushes it to Redis. No
``on_commit`` callback is involved, so no commit can succeed while its jobs are lost. Outside
a transaction, a push that cannot reach Redis writes the row instead of raising.

This is not a middleware layer but a destination of the push step (``dispatch.py`` routes to
it), because what it changes is where and when the push goes, which only that step sees: a
layer runs once per job, before a bulk enqueue collects its jobs, so it could neither insert a
bulk's rows with one ``bulk_create`` nor catch the Redis error of the bulk's push, which
happens after every job's chain has returned. As the innermost step, it runs after the whole
enqueue chain (middleware, unique-lock keys, callbacks) exactly as a push to Redis does.

This module holds what the push step and the relay share: which classes use the outbox,
writing rows, the fallback's once-per-outage warning, and the relay's reads and deletes.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS
from django.db.models import Count, Min

from django_async_jobs import locks, registry
from django_async_jobs.broker.client import RelayedRow
from django_async_jobs.conf import get_settings, valid_queue_name
from django_async_jobs.serialization import encode_job

if TYPE_CHECKING:
    from django_async_jobs.job import ApplicationJob

logger = logging.getLogger("django_async_jobs.outbox")

BATCH = 1000  # rows per insert statement, and per relay step


def applies(job_class: type[ApplicationJob]) -> bool:
    """Whether ``job_class``'s jobs go through the outbox (in the test modes they never do:
    they wait for the commit as without it, so the test helpers see them)."""
    settings = get_settings()
    wanted = job_class.enqueue_via_outbox
    if wanted is None:
        wanted = settings.outbox
    return bool(wanted) and settings.mode == "redis"


def in_use() -> bool:
    """Whether any job may be written to an outbox: the setting, or a class known here that
    opts in. Workers relay, and the dashboard and checks look, only then."""
    if get_settings().outbox:
        return True
    return any(job_class.enqueue_via_outbox for job_class in registry.all_jobs().values())


def database(job: ApplicationJob) -> str:
    """The database alias a job's row goes to: ``set(using=...)``, else its ``enqueue_using``."""
    return job._using or type(job).enqueue_using or DEFAULT_DB_ALIAS


def write(jobs: Sequence[ApplicationJob], alias: str) -> None:
    """Insert the jobs' rows on database ``alias``: in its current transaction, if one is open.

    One statement per ``BATCH`` rows. The payload is encoded here, so a bad argument fails in
    the caller, inside its transaction.
    """
    from django_async_jobs.models import OutboxJob

    if alias not in get_settings().outbox_databases:
        raise ImproperlyConfigured(
            f"{type(jobs[0]).__name__}: its outbox row would go to database {alias!r}, which no "
            f"worker relays: add {alias!r} to ASYNC_JOBS['OUTBOX_DATABASES'] "
            f"(now {list(get_settings().outbox_databases)})."
        )
    rows = []
    for job in jobs:
        payload = encode_job(job.serialize())
        lock = (job.lock_keys or {}).get("key") or ""
        rows.append(OutboxJob(
            job_id=job.job_id, queue=job.queue_name, priority=job.priority, run_at=job.scheduled_at,
            lock=lock, lock_ttl=locks.enqueue_ttl_ms(job) if lock else None, payload=payload,
        ))
    OutboxJob.objects.using(alias).bulk_create(rows, batch_size=BATCH)


def keep(jobs: Sequence[ApplicationJob], error: Exception) -> list[ApplicationJob]:
    """Jobs Redis did not take because it is unreachable: write those whose class uses the
    outbox to their databases' outboxes, and return them. Warns once per outage."""
    kept = [job for job in jobs if applies(type(job))]
    groups: dict[str, list[ApplicationJob]] = {}
    for job in kept:
        groups.setdefault(database(job), []).append(job)
    for alias, group in groups.items():
        write(group, alias)
    if kept:
        OUTAGE.began(error, len(kept))
    return kept


class Outage:
    """Whether this process found Redis unreachable and kept jobs in the outbox since; the
    push step ends it at its next push that Redis takes."""

    def __init__(self) -> None:
        self.since: float | None = None
        self.kept = 0
        self._lock = threading.Lock()

    def began(self, error: Exception, kept: int) -> None:
        with self._lock:
            first = self.since is None
            if first:
                self.since = time.monotonic()
            self.kept += kept
        if first:
            logger.warning(
                "Redis is unreachable (%s): jobs are written to the database outbox until it answers "
                "again, and the workers relay them to Redis then", error,
            )

    def ended(self) -> None:
        with self._lock:
            if self.since is None:
                return
            seconds, kept = time.monotonic() - self.since, self.kept
            self.since, self.kept = None, 0
        logger.warning("Redis answers again after %.0fs; %d job(s) went to the outbox meanwhile", seconds, kept)


OUTAGE = Outage()


# -- the relay's side (worker/relay.py) ----------------------------------------------------------


def pending(alias: str, limit: int = BATCH) -> tuple[list[int], list[RelayedRow]]:
    """The oldest committed rows of ``alias``'s outbox: their primary keys, and each as the
    relay step takes it. A row the step cannot route (a queue name or run-at no enqueue would
    write) gets the queue "" and is staged as a dead job, never dropped or retried for ever."""
    from django_async_jobs.models import OutboxJob

    rows = OutboxJob.objects.using(alias).order_by("pk").values_list(
        "pk", "job_id", "queue", "priority", "run_at", "lock", "lock_ttl", "payload",
    )[:limit]
    keys: list[int] = []
    relayed: list[RelayedRow] = []
    for pk, job_id, queue, priority, run_at, lock, lock_ttl, payload in rows:
        if not valid_queue_name(queue) or (run_at is not None and not math.isfinite(run_at)):
            queue = ""
        keys.append(pk)
        relayed.append((job_id, queue, priority, run_at, lock, lock_ttl, payload))
    return keys, relayed


def delete(alias: str, keys: list[int]) -> None:
    """Delete relayed rows (autocommit: committed when this returns)."""
    from django_async_jobs.models import OutboxJob

    OutboxJob.objects.using(alias).filter(pk__in=keys).delete()


def summary(alias: str) -> tuple[int, datetime | None]:
    """How many rows wait in ``alias``'s outbox, and when the oldest was written."""
    from django_async_jobs.models import OutboxJob

    found = OutboxJob.objects.using(alias).aggregate(count=Count("pk"), oldest=Min("created"))
    return found["count"], found["oldest"]
