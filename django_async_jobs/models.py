"""Dead jobs, kept in the database where they can be searched, filtered, retried and pruned.

Workers stage dead jobs in Redis (atomic with their removal from the in-flight list);
``deadjobs.flush_staged`` moves them here. Redis stays the only thing on a worker's hot path.
"""

from __future__ import annotations

from django.db import models
from django.utils.translation import gettext_lazy as _


class DeathReason(models.TextChoices):
    RETRIES_EXHAUSTED = "retries_exhausted", _("Retries exhausted")
    POISON_PILL = "poison_pill", _("Poison pill (crashed its workers)")
    UNKNOWN_CLASS = "unknown_class", _("Unknown job class")
    MALFORMED_PAYLOAD = "malformed_payload", _("Malformed payload")
    ARGUMENTS_MISMATCH = "arguments_mismatch", _("Arguments do not fit perform()")
    KILLED = "killed", _("Killed")


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
