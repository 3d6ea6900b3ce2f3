"""The project's background jobs: every job of the guide, on the guide's queues.

Conventions every job here follows:

* arguments are ids and plain values, never model instances; ``perform`` loads what it needs
  and fails fast (``Task.objects.get`` raises) when a row is gone;
* jobs are idempotent: a job may run more than once (the worker delivers at least once), so
  each one checks, under a row lock, whether its work is already done;
* the outside world lives in ``deliveries.services`` (stand-ins that write rows) and
  ``deliveries.carrier`` (a carrier's HTTP API, played by ``deliveries.fake_carrier`` in the
  demo and the tests).

Project-wide behaviour sits on ``DeliveryJob``, the base class of every job below; the guide's
error wrapper is the ``ErrorHandling`` mixin.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from deliveries import carrier, services
from deliveries.models import ErrorReport, Import, JobRun, OutboxMessage, Payment, Recipient, Task
from django_async_jobs import (
    ApplicationJob,
    Batch,
    IterableJob,
    OverLimit,
    RateLimit,
    around_perform,
    polynomially_longer,
    retry,
)
from django_async_jobs.idempotency import prune as prune_idempotency_markers
from django_async_jobs.iterable import Enumerator
from django_async_jobs.retries import Drop, Reschedule

logger = logging.getLogger("deliveries.jobs")


class DeliveryJob(ApplicationJob):
    """Base class: records every execution as a ``JobRun`` row, visible in the admin.

    An execution that a checkpoint interrupted (to go on in the next one) or a cancel ended did
    not fail: it is recorded as succeeded, with what stopped it as its result.
    """

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
        except (Reschedule, Drop) as exc:
            run.status = JobRun.Status.SUCCEEDED
            run.result = str(exc)
            run.finished_at = timezone.now()
            run.save(update_fields=["status", "result", "finished_at"])
            raise
        except Exception as exc:
            run.status = JobRun.Status.FAILED
            run.error = f"{type(exc).__name__}: {exc}"
            run.finished_at = timezone.now()
            # Over a rate limit the worker puts the job back for later: not a failure.
            run.outcome = JobRun.Outcome.LIMITED if isinstance(exc, OverLimit) else ""
            run.save(update_fields=["status", "error", "finished_at", "outcome"])
            raise
        run.status = JobRun.Status.SUCCEEDED
        run.result = "" if result is None else str(result)
        run.finished_at = timezone.now()
        run.save(update_fields=["status", "result", "finished_at"])


class ErrorHandling:
    """The guide's error wrapper, as a mixin: ``class MyJob(ErrorHandling, DeliveryJob)``.

    A row that is gone means there is nothing left to do: logged, and the job completes. Any
    other error is logged and reported to the error tracker, then raised again, so the job's
    retry rules (or the default policy) decide what happens next. A resumable job interrupted
    at a checkpoint, or cancelled, is no error.
    """

    @around_perform
    def with_error_handling(self: Any, proceed: Callable[[], Any]) -> Any:
        try:
            return proceed()
        except (Reschedule, Drop):
            raise
        except ObjectDoesNotExist as exc:
            logger.warning("%s: record not found - %s", type(self).__name__, exc)
            return f"skipped: record not found ({exc})"
        except Exception as exc:
            logger.error("%s failed: %s", type(self).__name__, exc)
            services.report_error(
                exc, source="job failed", job_class=type(self).__name__, job_id=self.job_id,
                context={"job_args": self.arguments, "job_kwargs": self.kwargs},
            )
            raise


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

# The carrier allows so many calls a second to all of our workers together; every call to it
# goes through this limiter, shared in Redis by every worker process and host, so the carrier
# never has to answer 429 for our load. Over the limit, the job is put back for a moment.
carrier_api = RateLimit.window("carrier-api", settings.CARRIER_API["RATE_LIMIT"], per=timedelta(seconds=1))


def carrier_wait(wait: float | Callable[[int], float]) -> Callable[[int], float]:
    """A retry wait for a carrier rule: the guide's wait times ``CARRIER_API["RETRY_WAIT_SCALE"]``.

    The scale is 1 in production. The demo and the tests make it small, so that a retry the
    guide spaces by seconds or minutes shows within a second or two.
    """

    def scaled(executions: int) -> float:
        base = wait(executions) if callable(wait) else wait
        return base * float(settings.CARRIER_API["RETRY_WAIT_SCALE"])

    return scaled


class ExternalApiJob(DeliveryJob):
    """Books a task's shipment with the carrier, the guide's ``ExternalApiJob``: one rule per
    kind of failure, and a discard for requests that can never succeed."""

    queue_as = "integrations"
    retry_on = [
        retry(carrier.CarrierUnreachable, wait=carrier_wait(5), attempts=3),
        # polynomially_longer: 3s, 18s, 83s, 258s between the five attempts (plus jitter)
        retry(carrier.CarrierTimeout, wait=carrier_wait(polynomially_longer), attempts=5),
        retry(carrier.CarrierRateLimited, wait=carrier_wait(polynomially_longer), attempts=5),
        # a custom wait: 10s, 20s, 30s, ... as the carrier's trouble lasts
        retry(carrier.CarrierServerError, wait=carrier_wait(lambda executions: executions * 10), attempts=5),
    ]
    # The task is gone (ActiveJob's DeserializationError), or the carrier refuses the booking.
    discard_on = [Task.DoesNotExist, carrier.CarrierClientError]

    def perform(self, task_id: int) -> str:
        task = Task.objects.get(pk=task_id)
        if task.carrier_reference:
            return f"skipped: already booked as {task.carrier_reference}"
        with carrier_api.within_limit():
            reference = carrier.book_shipment(task.tracking_number)  # booking twice is harmless
        Task.objects.filter(pk=task_id).update(carrier_reference=reference)
        return f"booked {task.tracking_number} as {reference}"


class SyncExternalDataJob(DeliveryJob):
    """Copies the carrier's tracking data onto a task (the guide's ``SyncExternalDataJob``)."""

    queue_as = "integrations"
    retry_on = [
        retry(carrier.CarrierTimeout, wait=carrier_wait(60), attempts=3),
        retry(carrier.CarrierUnreachable, wait=carrier_wait(5 * 60), attempts=3),
    ]
    discard_on = [carrier.CarrierClientError]  # 4xx: asking again will not help

    def perform(self, task_id: int) -> str:
        task = Task.objects.get(pk=task_id)
        with carrier_api.within_limit():  # over the limit: the job waits, then runs again
            data = carrier.fetch_tracking(task.tracking_number)
        Task.objects.filter(pk=task_id).update(external_data=data, synced_at=timezone.now())
        moved = Task.objects.filter(pk=task_id, status=Task.Status.CREATED).update(status=data["status"])
        return f"carrier says {data['status']} at {data['location']}" + (" (status updated)" if moved else "")


class ManualRetryJob(ErrorHandling, DeliveryJob):
    """Asks the carrier for a pickup and decides itself what a failure means (the guide's
    "Manual Retry Control"): rate limited, it enqueues itself again for when the carrier says;
    refused, it logs and reports the error and stops."""

    queue_as = "integrations"
    default_wait = 60  # seconds, when a 429 comes without Retry-After

    def perform(self, task_id: int) -> str:
        task = Task.objects.get(pk=task_id)
        if task.pickup_at is not None:
            return "skipped: pickup already booked"
        try:
            with carrier_api.within_limit():
                pickup_at = carrier.request_pickup(task.tracking_number)
        except carrier.CarrierRateLimited as exc:
            wait = exc.retry_after or self.default_wait
            again = type(self).set(wait=wait).perform_later(task_id)
            return f"rate limited: enqueued again as {again.job_id}, in {wait:g}s"
        except carrier.CarrierClientError as exc:
            logger.error("Permanent failure: %s", exc)
            services.report_error(
                exc, source="permanent failure", job_class=type(self).__name__, job_id=self.job_id,
                context={"job_args": self.arguments},
            )
            return f"permanent failure: {exc}"
        Task.objects.filter(pk=task_id).update(pickup_at=datetime.fromisoformat(pickup_at))
        return f"pickup at {pickup_at}"


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


class ImportJob(ErrorHandling, IterableJob, DeliveryJob):
    """Imports an ``Import``'s CSV as tasks, a line per iteration, with progress others can
    watch (admin, JSON view).

    Resumable: stopped by a deploy or a crash, it goes on after the last line done, and a long
    file is imported in runs of at most ``IMPORTS["MAX_RUNTIME"]`` seconds, each going on where
    the last one stopped. A bad line is recorded with its line number and the import goes on.
    Importing a line again updates the same task and recipient, so a line done twice creates no
    duplicates.
    """

    queue_as = "bulk"

    @property
    def max_iteration_runtime(self) -> float:
        return settings.IMPORTS["MAX_RUNTIME"]

    def build_enumerator(self, import_id: int, *, cursor: int | None) -> Enumerator:
        return self.list_enumerator(Import.objects.get(pk=import_id).rows(), cursor=cursor)

    def each_iteration(self, line_and_row: tuple[int, dict[str, str]], import_id: int) -> None:
        line, row = line_and_row
        try:
            self.process_row(row)
        except ValidationError as exc:
            problems = (f"{name}: {m}" for name, messages in exc.message_dict.items() for m in messages)
            self.progress.error(row=line, error="; ".join(problems))

    @staticmethod
    def process_row(row: dict[str, str]) -> None:
        with transaction.atomic():
            recipient = Recipient.objects.filter(name=row["name"]).first() or Recipient(name=row["name"])
            recipient.phone, recipient.email = row["phone"], row["email"]
            recipient.full_clean()
            recipient.save()
            task = Task.objects.filter(tracking_number=row["tracking_number"]).first()
            task = task or Task(tracking_number=row["tracking_number"])
            task.recipient = recipient
            task.full_clean()
            task.save()


class ImportChunkJob(ErrorHandling, DeliveryJob):
    """Imports ``size`` lines of an ``Import`` from ``start``, as one member of the import's
    batch (``import_in_batch``): chunks run side by side on every worker. A bad line is logged
    and skipped, as in ``ImportJob``."""

    queue_as = "bulk"

    def perform(self, import_id: int, start: int, size: int) -> str:
        bad = []
        for line, row in Import.objects.get(pk=import_id).rows()[start : start + size]:
            try:
                ImportJob.process_row(row)
            except ValidationError as exc:
                logger.warning("import %s line %s: %s", import_id, line, exc.messages)
                bad.append(line)
        return f"lines {start + 2}-{start + size + 1}: {len(bad)} bad {bad}"


class ImportReportJob(DeliveryJob):
    """The import batch's ``complete`` callback: every chunk ran once (a chunk still retrying
    shows as a failure). Its result, in its ``JobRun``, is the import's report."""

    queue_as = "default"

    def perform(self, import_id: int) -> str:
        status = Batch.status(self.batch_id)
        source = Import.objects.get(pk=import_id)
        return (
            f"{source.name}: {status['total']} chunk(s), {status['succeeded']} succeeded, "
            f"{status['failures']} failure(s), {status['dead']} dead; {Task.objects.count()} task(s) in all"
        )


def import_in_batch(source: Import, size: int = 1000) -> str:
    """Import ``source`` as a batch of ``ImportChunkJob`` (one per ``size`` lines) whose
    ``complete`` callback reports; returns the batch id (``Batch.status``, ``jobs batches``)."""
    batch = Batch(description=f"Import {source.name}")
    batch.on("complete", ImportReportJob, source.pk)
    with batch.jobs():
        ImportChunkJob.perform_bulk([(source.pk, start, size) for start in range(0, len(source.rows()), size)])
    return batch.bid


# -- default -------------------------------------------------------------------------------------


class UniqueProcessingJob(ErrorHandling, DeliveryJob):
    """Recounts a recipient's tasks per status. Many events may ask for it at once (an import,
    status changes); the lock keeps one job per recipient enqueued or running, whatever the options."""

    queue_as = "default"
    lock = "until_executed"
    lock_ttl = timedelta(minutes=10)

    @classmethod
    def lock_args(cls, recipient_id: int, options: dict[str, Any] | None = None) -> list[int]:
        return [recipient_id]

    def perform(self, recipient_id: int, options: dict[str, Any] | None = None) -> str:
        recipient = Recipient.objects.get(pk=recipient_id)
        counts = dict(
            Task.objects.filter(recipient=recipient).values_list("status").annotate(n=Count("pk")).order_by()
        )
        Recipient.objects.filter(pk=recipient_id).update(task_counts=counts, counted_at=timezone.now())
        reason = (options or {}).get("reason", "asked")
        return f"counted {sum(counts.values())} task(s) of {recipient.name} ({reason}): {counts}"


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


# -- recurring (ASYNC_JOBS["RECURRING"] in config/settings.py) ------------------------------------


class DailyCleanupJob(DeliveryJob):
    """Every night at 2: deletes job runs, outbox messages and error reports older than
    ``keep``, and idempotency markers that have expired."""

    queue_as = "scheduled"
    keep = timedelta(days=30)

    def perform(self) -> str:
        cutoff = timezone.now() - self.keep
        runs, _ = JobRun.objects.filter(started_at__lt=cutoff).delete()
        messages, _ = OutboxMessage.objects.filter(sent_at__lt=cutoff).delete()
        reports, _ = ErrorReport.objects.filter(reported_at__lt=cutoff).delete()
        markers = prune_idempotency_markers()
        return f"deleted {runs} job run(s), {messages} message(s), {reports} error report(s), {markers} marker(s)"


class HourlySyncJob(DeliveryJob):
    """Every hour: one ``SyncExternalDataJob`` per task in transit, enqueued in one Redis call.

    Small jobs instead of one long one: each task is retried on its own when the carrier fails.
    """

    queue_as = "integrations"

    def perform(self) -> str:
        ids = Task.objects.filter(status=Task.Status.IN_TRANSIT).order_by("pk").values_list("pk", flat=True)
        count = ApplicationJob.perform_all_later([SyncExternalDataJob(pk) for pk in ids])
        return f"enqueued {count} SyncExternalDataJob(s)"


class WeeklyReportJob(DeliveryJob):
    """Every Monday at 9: last week's numbers, emailed to the operations team once per week."""

    queue_as = "low"
    report_to = "ops@example.com"

    def perform(self) -> str:
        tick = self.payload.get("cron", {}).get("tick")  # the schedule's tick; none when run by hand
        now = datetime.fromtimestamp(tick, UTC) if tick else timezone.now()
        year, week, _ = now.isocalendar()
        label = f"{year}-W{week:02d}"
        with self.once("weekly_report", label) as first:
            if not first:
                return f"skipped: report {label} already sent"
            since = now - timedelta(days=7)
            runs = JobRun.objects.filter(started_at__gte=since)
            lines = [
                f"tasks delivered: {Task.objects.filter(status=Task.Status.DELIVERED).count()}",
                f"messages sent: {OutboxMessage.objects.filter(sent_at__gte=since).count()}",
                f"job runs: {runs.count()}, failed: {runs.filter(status=JobRun.Status.FAILED).count()}",
                f"errors reported: {ErrorReport.objects.filter(reported_at__gte=since).count()}",
            ]
            services.send_email(self.report_to, f"Weekly report {label}", "\n".join(lines), kind="weekly_report",
                                job_id=self.job_id)
        return f"report {label} sent to {self.report_to}"
