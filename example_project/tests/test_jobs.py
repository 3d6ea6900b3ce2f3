"""The project's jobs, run in the test process with perform_now (no worker needed)."""

import time
from datetime import timedelta

import pytest
from django.core.management import call_command

from deliveries import jobs
from deliveries.models import JobRun, OutboxMessage, Payment, Recipient, Task


def test_task_notification_sends_one_sms_however_often_it_runs(task):
    first = jobs.TaskNotificationJob.perform_now(task.pk, notification_type="created")
    second = jobs.TaskNotificationJob.perform_now(task.pk, notification_type="created")

    assert first == "sms sent to +15550100001"
    assert second == "skipped: already notified"
    task.refresh_from_db()
    assert task.notification_sent_at is not None
    sms = OutboxMessage.objects.get(kind="task_created")
    assert sms.channel == "sms" and "T-1" in sms.body


def test_task_notification_fails_fast_when_the_task_is_gone(db):
    with pytest.raises(Task.DoesNotExist):
        jobs.TaskNotificationJob.perform_now(0)
    assert JobRun.objects.get().status == JobRun.Status.FAILED


def test_delivered_notification_is_an_email_sent_once(task):
    jobs.TaskNotificationJob.perform_now(task.pk, notification_type="delivered")
    assert jobs.TaskNotificationJob.perform_now(task.pk, notification_type="delivered").startswith("skipped")
    assert OutboxMessage.objects.filter(kind="task_delivered", channel="email").count() == 1


def test_welcome_email_is_idempotent(recipient):
    jobs.SendWelcomeEmailJob.perform_now(recipient.pk)
    jobs.SendWelcomeEmailJob.perform_now(recipient.pk)
    recipient.refresh_from_db()
    assert recipient.welcome_email_sent_at is not None
    assert OutboxMessage.objects.filter(kind="welcome").count() == 1


def test_payment_is_captured_once(payment):
    assert jobs.PaymentProcessingJob.perform_now(payment.pk).startswith("captured 19.90")
    assert jobs.PaymentProcessingJob.perform_now(payment.pk) == f"payment {payment.pk} already captured"
    payment.refresh_from_db()
    assert payment.status == Payment.Status.CAPTURED


def test_bulk_update_skips_invalid_rows_and_counts_missing_ones(task, recipient):
    other = Task.objects.create(tracking_number="T-2", recipient=recipient)
    result = jobs.BulkUpdateJob.perform_now([task.pk, other.pk, 999_999], {"status": "delivered"})
    assert result == "updated 2, invalid 0, missing 1"
    assert set(Task.objects.values_list("status", flat=True)) == {"delivered"}

    result = jobs.BulkUpdateJob.perform_now([task.pk], {"status": "lost"})
    assert result == "updated 0, invalid 1, missing 0"
    with pytest.raises(ValueError):
        jobs.BulkUpdateJob.perform_now([task.pk], {"tracking_number": "X"})


def test_newsletter_goes_to_recipients_with_an_email_once(recipient):
    no_email = Recipient.objects.create(name="Ben", phone="+15550100002")
    ids = [recipient.pk, no_email.pk]
    assert jobs.SendNewsletterJob.perform_now(ids, "2026-01").endswith("sent to 1 recipient(s)")
    assert jobs.SendNewsletterJob.perform_now(ids, "2026-01").endswith("sent to 0 recipient(s)")


def test_reminder_is_skipped_for_delivered_tasks(task):
    task.status = Task.Status.DELIVERED
    task.save()
    assert jobs.TaskReminderJob.perform_now(task.pk) == "skipped: already delivered"


def test_every_run_is_recorded(task):
    jobs.FlexibleJob.perform_now(task.pk, "high")
    run = JobRun.objects.get()
    assert (run.job_class, run.status, run.result) == ("FlexibleJob", "succeeded", "re-planned T-1 as high")
    assert run.arguments == {"args": [task.pk, "high"], "kwargs": {}}


# -- enqueueing (needs Redis at REDIS_URL) ---------------------------------------------------------


def test_jobs_go_to_the_guides_queues(task, payment, broker):
    assert jobs.PaymentProcessingJob.perform_later(payment.pk).queue_name == "critical"
    assert jobs.TaskNotificationJob.perform_later(task.pk, notification_type="created").queue_name == "notifications"
    assert jobs.SyncExternalDataJob.perform_later(task.pk).queue_name == "integrations"
    assert jobs.BulkUpdateJob.perform_later([task.pk], {"status": "in_transit"}).queue_name == "bulk"
    assert jobs.SendNewsletterJob.perform_later([1], "2026-01").queue_name == "low"
    for queue in ("critical", "notifications", "integrations", "bulk", "low"):
        assert broker.queue_size(queue) == 1


def test_flexible_job_picks_its_queue_from_its_arguments(task, broker):
    assert jobs.FlexibleJob.perform_later(task.pk, "high").queue_name == "critical"
    assert jobs.FlexibleJob.perform_later(task.pk, "normal").queue_name == "default"
    assert jobs.FlexibleJob.perform_later(task.pk).queue_name == "default"
    assert broker.queue_size("critical") == 1
    assert broker.queue_size("default") == 2


def test_reminder_is_scheduled_not_queued(task, broker):
    job = jobs.TaskReminderJob.set(wait=timedelta(hours=1)).perform_later(task.pk)
    assert job.scheduled_at == pytest.approx(time.time() + 3600, abs=60)
    assert broker.queue_size("scheduled") == 0
    assert broker.redis.zcard(broker.keys.schedule) == 1


def test_model_instances_are_refused_at_enqueue_time(task, broker):
    with pytest.raises(TypeError, match="primary key"):
        jobs.SyncExternalDataJob.perform_later(task)


def test_system_checks_pass(db):
    call_command("check", "--fail-level", "WARNING")
