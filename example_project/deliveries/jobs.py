"""The project's background jobs, one per queue of the guide.

Conventions every job here follows:

* arguments are ids and plain values, never model instances; ``perform`` loads what it needs
  and fails fast (``Task.objects.get`` raises) when a row is gone;
* jobs are idempotent: a job may run more than once (the worker delivers at least once), so
  each one checks, under a row lock, whether its work is already done;
* the outside world lives in ``deliveries.services``, so tests and the demo need no network.

Project-wide behaviour sits on ``DeliveryJob``, the base class of every job below.
"""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from deliveries import services
from deliveries.models import JobRun, Payment, Recipient, Task
from django_async_jobs import ApplicationJob, around_perform

logger = logging.getLogger("deliveries.jobs")


class DeliveryJob(ApplicationJob):
    """Base class: records every execution as a ``JobRun`` row, visible in the admin."""

    @around_perform
    def record_run(self, proceed: Any) -> None:
        enqueued = self.enqueued_at
        run = JobRun.objects.create(
            job_id=self.job_id,
            job_class=type(self).__name__,
            queue=self.queue_name or "",
            arguments={"args": self.arguments, "kwargs": self.kwargs},
            execution=self.executions,
            pid=os.getpid(),
            enqueued_at=datetime.fromtimestamp(enqueued, UTC) if enqueued else None,
            started_at=timezone.now(),
        )
        try:
            result = proceed()
        except Exception as exc:
            run.status = JobRun.Status.FAILED
            run.error = f"{type(exc).__name__}: {exc}"
            run.finished_at = timezone.now()
            run.save(update_fields=["status", "error", "finished_at"])
            raise
        run.status = JobRun.Status.SUCCEEDED
        run.result = "" if result is None else str(result)
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "result", "finished_at"])


# -- critical ------------------------------------------------------------------------------------


class PaymentProcessingJob(DeliveryJob):
    queue_as = "critical"

    def perform(self, payment_id: int) -> str:
        with transaction.atomic():
            payment = Payment.objects.select_for_update().get(pk=payment_id)
            if payment.status == Payment.Status.CAPTURED:
                return f"payment {payment_id} already captured"
            reference = services.capture_payment(str(payment.amount), f"payment-{payment_id}")
            payment.status = Payment.Status.CAPTURED
            payment.captured_at = timezone.now()
            payment.save(update_fields=["status", "captured_at"])
        return f"captured {payment.amount} ({reference})"


# -- critical or default, decided per job ---------------------------------------------------------


class FlexibleJob(DeliveryJob):
    """Re-plans a task's delivery; urgent ones go to the critical queue.

    ``queue_as`` is a method here: it runs at enqueue time and can read the job's arguments.
    """

    def queue_as(self) -> str:
        urgency = self.arguments[1] if len(self.arguments) > 1 else self.kwargs.get("urgency", "normal")
        return "critical" if urgency == "high" else "default"

    def perform(self, task_id: int, urgency: str = "normal") -> str:
        task = Task.objects.get(pk=task_id)
        logger.info("re-planning %s (%s)", task.tracking_number, urgency)
        return f"re-planned {task.tracking_number} as {urgency}"


# -- notifications -------------------------------------------------------------------------------


class TaskNotificationJob(DeliveryJob):
    queue_as = "notifications"

    def perform(self, task_id: int, notification_type: str = "created") -> str:
        if notification_type == "created":
            return self.send_creation_notification(task_id)
        if notification_type == "delivered":
            return self.send_delivery_notification(task_id)
        raise ValueError(f"unknown notification_type {notification_type!r}")

    def send_creation_notification(self, task_id: int) -> str:
        with transaction.atomic():
            # The lock makes a second copy of this job wait, then see notification_sent_at.
            task = Task.objects.select_for_update().get(pk=task_id)
            recipient = task.recipient
            if not recipient.phone:
                return "skipped: recipient has no phone"
            if task.notification_sent_at is not None:
                return "skipped: already notified"
            services.send_sms(
                recipient.phone,
                f"Your parcel {task.tracking_number} is on its way.",
                task=task, kind="task_created", job_id=self.job_id,
            )
            task.notification_sent_at = timezone.now()
            task.save(update_fields=["notification_sent_at"])
        return f"sms sent to {recipient.phone}"

    def send_delivery_notification(self, task_id: int) -> str:
        with transaction.atomic():
            task = Task.objects.select_for_update().get(pk=task_id)
            recipient = task.recipient
            if not recipient.email:
                return "skipped: recipient has no email"
            if task.messages.filter(kind="task_delivered").exists():
                return "skipped: already notified"
            services.send_email(
                recipient.email, f"Delivered: {task.tracking_number}",
                f"Hello {recipient.name}, your parcel {task.tracking_number} was delivered.",
                task=task, kind="task_delivered", job_id=self.job_id,
            )
        return f"email sent to {recipient.email}"


class SendWelcomeEmailJob(DeliveryJob):
    queue_as = "notifications"

    def perform(self, recipient_id: int) -> str:
        with transaction.atomic():
            recipient = Recipient.objects.select_for_update().get(pk=recipient_id)
            if recipient.welcome_email_sent_at is not None:
                return "skipped: already welcomed"
            services.send_email(
                recipient.email, "Welcome", f"Hello {recipient.name}, welcome aboard.",
                kind="welcome", job_id=self.job_id,
            )
            recipient.welcome_email_sent_at = timezone.now()
            recipient.save(update_fields=["welcome_email_sent_at"])
        return f"welcome email sent to {recipient.email}"


# -- integrations --------------------------------------------------------------------------------


class SyncCarrierStatusJob(DeliveryJob):
    """Asks the carrier's (slow) API where a parcel is."""

    queue_as = "integrations"

    def perform(self, task_id: int) -> str:
        task = Task.objects.get(pk=task_id)
        status = services.fetch_carrier_status(task.tracking_number)
        updated = Task.objects.filter(pk=task_id, status=Task.Status.CREATED).update(status=status)
        return f"carrier says {status}" + (" (updated)" if updated else "")


# -- bulk ----------------------------------------------------------------------------------------


class BulkUpdateJob(DeliveryJob):
    """Updates many tasks at once; a row that fails validation is logged and skipped."""

    queue_as = "bulk"
    allowed_fields = ("status",)

    def perform(self, task_ids: list[int], attributes: dict[str, Any]) -> str:
        unknown = set(attributes) - set(self.allowed_fields)
        if unknown:
            raise ValueError(f"BulkUpdateJob cannot set {sorted(unknown)}")
        updated = failed = 0
        for task in Task.objects.filter(id__in=task_ids).order_by("pk").iterator(chunk_size=100):
            for name, value in attributes.items():
                setattr(task, name, value)
            try:
                task.full_clean(validate_unique=False)
            except ValidationError as exc:
                logger.error("cannot update %s: %s", task.tracking_number, exc.messages)
                failed += 1
                continue
            task.save(update_fields=list(attributes))
            updated += 1
        missing = len(set(task_ids)) - updated - failed
        return f"updated {updated}, invalid {failed}, missing {missing}"


# -- scheduled -----------------------------------------------------------------------------------


class TaskReminderJob(DeliveryJob):
    """Enqueued with a delay: ``TaskReminderJob.set(wait=timedelta(hours=1)).perform_later(id)``."""

    queue_as = "scheduled"

    def perform(self, task_id: int) -> str:
        with transaction.atomic():
            task = Task.objects.select_for_update().get(pk=task_id)
            if task.status == Task.Status.DELIVERED:
                return "skipped: already delivered"
            if task.reminder_sent_at is not None:
                return "skipped: already reminded"
            recipient = task.recipient
            if not recipient.phone:
                return "skipped: recipient has no phone"
            services.send_sms(
                recipient.phone, f"Reminder: parcel {task.tracking_number} arrives today.",
                task=task, kind="task_reminder", job_id=self.job_id,
            )
            task.reminder_sent_at = timezone.now()
            task.save(update_fields=["reminder_sent_at"])
        return f"reminder sent to {recipient.phone}"


# -- low -----------------------------------------------------------------------------------------


class SendNewsletterJob(DeliveryJob):
    queue_as = "low"

    def perform(self, recipient_ids: list[int], issue: str) -> str:
        sent = 0
        for recipient in Recipient.objects.filter(id__in=recipient_ids).exclude(email=""):
            kind = f"newsletter:{issue}"[:32]
            if recipient.email and not services.already_sent(recipient.email, kind):
                services.send_email(
                    recipient.email, f"Newsletter {issue}", "What's new this month.",
                    kind=kind, job_id=self.job_id,
                )
                sent += 1
        return f"newsletter {issue} sent to {sent} recipient(s)"
