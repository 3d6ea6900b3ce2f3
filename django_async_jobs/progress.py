"""Progress of long jobs in a ``JobProgress`` row: throttled while running, exact at the end.

Writing a row per item would make a 100,000-row import spend its time on progress updates, so
``advance`` writes only every ``PROGRESS_EVERY`` items or ``PROGRESS_SECONDS`` seconds, and the
final state (completed, completed with errors, or failed on an exception) is always written.

Each write is one ``UPDATE`` on the default database connection of the worker thread. Inside a
``transaction.atomic()`` block (for instance a job with ``idempotency_key``) other connections
see the writes only when it commits.

An iterable job's tracker (``IterableJob``) goes on across executions: it starts from the
counts its continuation saved (``resume``), keeps the error details those counts cover, and an
interruption leaves the row ``processing``.
"""

from __future__ import annotations

import logging
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any

from django.utils import timezone

from django_async_jobs import retries
from django_async_jobs.conf import get_settings

if TYPE_CHECKING:
    from django_async_jobs.job import ApplicationJob
    from django_async_jobs.models import JobProgress

logger = logging.getLogger("django_async_jobs.job")

# Error details kept per row (the count goes on): a bad file must not make a megabyte JSON cell.
MAX_ERROR_DETAILS = 1000


def _throttle() -> tuple[int, float]:
    raw = get_settings().raw
    return int(raw["PROGRESS_EVERY"]), float(raw["PROGRESS_SECONDS"])


def expect(job: ApplicationJob, *, started_by: Any = None, name: str = "", total: int | None = None) -> JobProgress:
    """Create the ``pending`` row of a job about to be enqueued, recording who started it.

    ``started_by`` is a user or a user id; the JSON view shows the row to that user and staff.
    """
    from django_async_jobs.models import JobProgress

    user_id = getattr(started_by, "pk", started_by)
    row, _ = JobProgress.objects.update_or_create(
        job_id=job.job_id, name=name,
        defaults={"job_class": job.job_name, "started_by_id": user_id, "total": total},
    )
    return row


def perform_later_with_progress(
    job_class: Any, *args: Any, started_by: Any = None, progress_name: str = "", **kwargs: Any
) -> ApplicationJob:
    """``perform_later`` with a ``pending`` progress row made first, so a page can poll at once.

    ``job_class`` may be ``Job.set(...)``. A job that was not enqueued (a unique job's conflict,
    a halting callback) leaves no row.
    """
    if isinstance(job_class, type):
        options: dict[str, Any] = {}
    else:  # Job.set(...): the class and the options for its next enqueue
        job_class, options = job_class.job_class, job_class.options
    job = job_class(*args, **kwargs)
    row = expect(job, started_by=started_by, name=progress_name)
    job.enqueue(**options)
    if not job:
        row.delete()
    return job


class Tracker:
    """What ``with self.track_progress(total=n) as progress:`` gives a job."""

    def __init__(self, job: ApplicationJob, total: int | None = None, name: str = "") -> None:
        if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 0):
            raise TypeError(f"track_progress(total=) must be an integer >= 0 or None, got {total!r}.")
        self.job = job
        self.total = total
        self.name = name
        self.processed = 0
        self.error_count = 0
        self.error_details: list[dict[str, Any]] = []
        self.cursor: Any = None
        self.every, self.seconds = _throttle()
        self._written = 0
        self._written_at = 0.0
        self._resumed = False
        self.row: JobProgress | None = None

    # -- the job's side ----------------------------------------------------------------------

    def advance(self, n: int = 1) -> None:
        """``n`` more items handled; written when the throttle allows."""
        self.processed += n
        self._maybe_write()

    def error(self, row: Any = None, error: Any = "", *, advance: int = 1) -> None:
        """Record a failed item (it counts as handled unless ``advance=0``)."""
        self.error_count += 1
        if len(self.error_details) < MAX_ERROR_DETAILS:
            self.error_details.append({"row": row, "error": str(error)})
        self.processed += advance
        self._maybe_write()

    def reached(self, processed: int, cursor: Any = None) -> None:
        """``processed`` items handled in all, the last one's ``cursor`` (an iterable job, after
        each iteration: errors recorded with ``error()`` do not count twice)."""
        self.processed = processed
        self.cursor = cursor
        self._maybe_write()

    def resume(self, processed: int, errors: int, cursor: Any) -> None:
        """Before entering: go on from counts an earlier execution saved, instead of starting over."""
        self.processed = self._written = processed
        self.error_count = errors
        self.cursor = cursor
        self._resumed = True

    def set_total(self, total: int) -> None:
        """When the total is known only after starting (e.g. after counting a file's rows)."""
        self.total = total
        self._write()

    @property
    def percent(self) -> float:
        if not self.total:
            return 0.0
        return round(min(100.0, self.processed * 100.0 / self.total), 1)

    # -- writing -----------------------------------------------------------------------------

    def _maybe_write(self) -> None:
        if self.processed - self._written >= self.every or time.monotonic() - self._written_at >= self.seconds:
            self._write()

    def _write(self, **final: Any) -> None:
        from django_async_jobs.models import JobProgress

        fields = {
            "total": self.total, "processed": self.processed, "percent": self.percent,
            "error_count": self.error_count, "error_details": self.error_details, "cursor": self.cursor,
            "updated_at": timezone.now(), **final,
        }
        JobProgress.objects.filter(pk=self.row.pk).update(**fields)
        self._written = self.processed
        self._written_at = time.monotonic()

    def __enter__(self) -> Tracker:
        from django_async_jobs.models import JobProgress, ProgressStatus

        defaults: dict[str, Any] = {
            "job_class": self.job.job_name, "status": ProgressStatus.PROCESSING, "total": self.total,
            "completed_at": None,
        }
        if not self._resumed:
            # A retried or recovered job starts over: same row, counters reset, owner kept.
            defaults.update(
                processed=0, percent=0.0, error_count=0, error_details=[], cursor=None, started_at=timezone.now()
            )
        self.row, created = JobProgress.objects.update_or_create(
            job_id=self.job.job_id, name=self.name, defaults=defaults
        )
        if self._resumed:
            # The details the saved count covers; those after it are recorded again as the
            # items they belong to are done again.
            details = [] if created or not isinstance(self.row.error_details, list) else self.row.error_details
            self.error_details = details[: min(self.error_count, MAX_ERROR_DETAILS)]
            self._write(**({"started_at": timezone.now()} if created else {}))
        self._written_at = time.monotonic()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        from django_async_jobs.models import ProgressStatus

        if isinstance(exc, retries.Reschedule):  # interrupted: it goes on in a later execution
            status = ProgressStatus.PROCESSING
        elif isinstance(exc, retries.Drop):
            status = ProgressStatus.CANCELLED
        elif exc is not None:
            self.error_details.append({"row": None, "error": f"{type(exc).__name__}: {exc}"})
            status = ProgressStatus.FAILED
        elif self.error_count:
            status = ProgressStatus.COMPLETED_WITH_ERRORS
        else:
            status = ProgressStatus.COMPLETED
        if exc is None and self.total is None:
            self.total = self.processed
        try:
            self._write(status=status, completed_at=None if status == ProgressStatus.PROCESSING else timezone.now())
        except Exception:
            if exc is None:
                raise
            # The job's own exception matters more (and may be why the database refuses).
            logger.exception("could not mark progress of %s as failed", self.job)
