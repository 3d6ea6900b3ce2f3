"""Dead jobs, kept in the database where they can be searched, filtered, retried and pruned.

Workers stage dead jobs in Redis (atomic with their removal from the in-flight list);
``deadjobs.flush_staged`` moves them here. Redis stays the only thing on a worker's hot path.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models
from django.utils.translation import gettext_lazy as _


class DeathReason(models.TextChoices):
    RETRIES_EXHAUSTED = "retries_exhausted", _("Retries exhausted")
    POISON_PILL = "poison_pill", _("Poison pill (crashed its workers)")
    UNKNOWN_CLASS = "unknown_class", _("Unknown job class")
    MALFORMED_PAYLOAD = "malformed_payload", _("Malformed payload")
    ARGUMENTS_MISMATCH = "arguments_mismatch", _("Arguments do not fit perform()")
    KILLED = "killed", _("Killed")
    WORKER_ERROR = "worker_error", _("Worker error (retry rules or settling failed)")


class DeadJob(models.Model):
    """One job that died, with everything needed to understand it and to run it again."""

    dead_id = models.CharField(_("dead id"), max_length=255, unique=True)
    job_id = models.CharField(_("job id"), max_length=255, blank=True, db_index=True)
    job_class = models.CharField(_("job class"), max_length=255, blank=True)
    queue = models.CharField(_("queue"), max_length=255, blank=True)
    arguments = models.JSONField(_("arguments"), null=True, blank=True)
    kwargs = models.JSONField(_("keyword arguments"), null=True, blank=True)
    error_class = models.CharField(_("error class"), max_length=255, blank=True)
    error_message = models.TextField(_("error message"), blank=True)
    traceback = models.TextField(_("traceback"), blank=True)
    executions = models.PositiveIntegerField(_("executions"), default=0)
    enqueued_at = models.DateTimeField(_("enqueued at"), null=True, blank=True)
    failed_at = models.DateTimeField(_("failed at"), null=True, blank=True)
    died_at = models.DateTimeField(_("died at"))
    payload = models.TextField(_("payload"), blank=True)
    reason = models.CharField(_("reason"), max_length=32, choices=DeathReason.choices)
    created = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        ordering = ["-died_at"]
        verbose_name = _("dead job")
        verbose_name_plural = _("dead jobs")
        indexes = [
            # The admin's default order, its date hierarchy and pruning by age.
            models.Index(fields=["-died_at"], name="async_dead_died_at_idx"),
            # One per admin filter: each filter lists the distinct values of its column.
            models.Index(fields=["job_class", "-died_at"], name="async_dead_job_class_idx"),
            models.Index(fields=["queue", "-died_at"], name="async_dead_queue_idx"),
            models.Index(fields=["error_class", "-died_at"], name="async_dead_error_class_idx"),
            models.Index(fields=["reason", "-died_at"], name="async_dead_reason_idx"),
        ]

    def __str__(self) -> str:
        name = self.job_class or _("unreadable job")
        return f"{name} {self.job_id or self.dead_id} ({self.get_reason_display()})"


class IdempotencyMarker(models.Model):
    """Proof that the work for a key is done: written in the same transaction as that work.

    A job body (``idempotency_key``) or one step (``job.once(...)``) runs only when it can
    insert its marker; the unique key makes a racing second worker wait for the first one's
    commit and then skip. Deleting a marker lets the work run again.
    """

    key = models.CharField(_("key"), max_length=255, unique=True)
    job_class = models.CharField(_("job class"), max_length=255, blank=True)
    job_id = models.CharField(_("job id"), max_length=255, blank=True)
    created = models.DateTimeField(_("created"), auto_now_add=True)
    expires_at = models.DateTimeField(_("expires at"), null=True, blank=True, db_index=True)

    class Meta:
        ordering = ["-created"]
        verbose_name = _("idempotency marker")
        verbose_name_plural = _("idempotency markers")

    def __str__(self) -> str:
        return self.key


class ProgressStatus(models.TextChoices):
    PENDING = "pending", _("Pending")
    PROCESSING = "processing", _("Processing")
    COMPLETED = "completed", _("Completed")
    COMPLETED_WITH_ERRORS = "completed_with_errors", _("Completed with errors")
    FAILED = "failed", _("Failed")
    CANCELLED = "cancelled", _("Cancelled")


class JobProgress(models.Model):
    """How far a long job is (the guide's ImportJob), for the admin and for an app's own page."""

    job_id = models.CharField(_("job id"), max_length=255)
    name = models.CharField(_("name"), max_length=255, blank=True)
    job_class = models.CharField(_("job class"), max_length=255, blank=True)
    status = models.CharField(
        _("status"), max_length=32, choices=ProgressStatus.choices, default=ProgressStatus.PENDING
    )
    total = models.PositiveIntegerField(_("total"), null=True, blank=True)
    processed = models.PositiveIntegerField(_("processed"), default=0)
    error_count = models.PositiveIntegerField(_("errors"), default=0)
    error_details = models.JSONField(_("error details"), default=list, blank=True)
    percent = models.FloatField(_("percent"), default=0.0)
    cursor = models.JSONField(
        _("cursor"), null=True, blank=True, help_text=_("Where an iterable job is: the cursor of its last item done.")
    )
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, verbose_name=_("started by"), null=True, blank=True,
        on_delete=models.SET_NULL, related_name="+",
    )
    created = models.DateTimeField(_("created"), auto_now_add=True)
    started_at = models.DateTimeField(_("started at"), null=True, blank=True)
    completed_at = models.DateTimeField(_("completed at"), null=True, blank=True)
    updated_at = models.DateTimeField(_("updated at"), auto_now=True)

    class Meta:
        ordering = ["-created"]
        verbose_name = _("job progress")
        verbose_name_plural = _("job progress")
        constraints = [models.UniqueConstraint(fields=["job_id", "name"], name="async_progress_job_name_uniq")]
        indexes = [models.Index(fields=["status", "-created"], name="async_progress_status_idx")]

    def __str__(self) -> str:
        label = f"{self.job_class} {self.job_id}" + (f" {self.name}" if self.name else "")
        return f"{label}: {self.percent:.0f}% ({self.get_status_display()})"

    def as_dict(self) -> dict[str, Any]:
        """What the JSON view returns."""
        def when(value: Any) -> str | None:
            return value.isoformat() if value else None

        return {
            "job_id": self.job_id, "name": self.name, "job_class": self.job_class, "status": self.status,
            "total": self.total, "processed": self.processed, "percent": self.percent,
            "error_count": self.error_count, "error_details": self.error_details, "cursor": self.cursor,
            "started_at": when(self.started_at), "completed_at": when(self.completed_at),
            "updated_at": when(self.updated_at),
        }


# The channel the outbox's insert trigger notifies on PostgreSQL (migration 0004), and the relay
# listens to: one notification per committed transaction that wrote rows.
OUTBOX_CHANNEL = "django_async_jobs_outbox"


class OutboxJob(models.Model):
    """A job enqueued inside a transaction with the outbox on (``ASYNC_JOBS["OUTBOX"]``).

    Written in the caller's transaction instead of being pushed to Redis, so the job exists
    exactly when the transaction commits; a worker's relay pushes committed rows to Redis and
    deletes them. The columns beside the payload are what the relay's push step needs without
    decoding it: where the job goes, when, and a unique job's enqueue lock.
    """

    job_id = models.CharField(_("job id"), max_length=64)
    queue = models.CharField(_("queue"), max_length=100)
    priority = models.SmallIntegerField(_("priority"), default=0)
    run_at = models.FloatField(_("run at (epoch seconds)"), null=True, blank=True)  # None: at once
    # A unique job's enqueue lock (its Redis key) and TTL in ms, taken when the row is relayed.
    lock = models.CharField(_("lock"), max_length=255, blank=True)
    lock_ttl = models.PositiveBigIntegerField(_("lock TTL (ms)"), null=True, blank=True)
    payload = models.TextField(_("payload"))
    created = models.DateTimeField(_("created"), auto_now_add=True)

    class Meta:
        ordering = ["id"]
        verbose_name = _("outbox job")
        verbose_name_plural = _("outbox jobs")

    def __str__(self) -> str:
        return f"{self.job_id} -> {self.queue}"
