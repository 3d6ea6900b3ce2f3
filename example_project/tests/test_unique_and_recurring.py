"""``UniqueProcessingJob``'s lock, and the guide's three recurring jobs."""

from datetime import timedelta

from django.utils import timezone

from deliveries import jobs
from deliveries.models import ErrorReport, JobRun, OutboxMessage, Task
from django_async_jobs import api, cron

# -- UniqueProcessingJob ---------------------------------------------------------------------------


def test_unique_job_is_enqueued_once_per_recipient(recipient, broker):
    first = jobs.UniqueProcessingJob.perform_later(recipient.pk, {"reason": "import"})
    second = jobs.UniqueProcessingJob.perform_later(recipient.pk, {"reason": "status change"})
    other = jobs.UniqueProcessingJob.perform_later(recipient.pk + 1)

    assert first and other
    assert not second  # the lock is on the recipient only, whatever the options
    assert broker.queue_size("default") == 2


def test_unique_job_runs_once_then_takes_new_requests(recipient, task, worker, wait_for):
    first = jobs.UniqueProcessingJob.perform_later(recipient.pk, {"reason": "import"})
    assert not jobs.UniqueProcessingJob.perform_later(recipient.pk)

    wait_for(lambda: JobRun.objects.filter(job_id=first.job_id, status="succeeded").exists())
    recipient.refresh_from_db()
    assert recipient.task_counts == {"created": 1}
    assert JobRun.objects.filter(job_class="UniqueProcessingJob").count() == 1
    # Released with the job's acknowledgement, a moment after its last line.
    assert wait_for(lambda: jobs.UniqueProcessingJob.perform_later(recipient.pk), what="the lock's release")


# -- recurring jobs --------------------------------------------------------------------------------


def test_the_guides_schedule(db):
    entries = {e.name: (e.cron, e.job, e.queue) for e in cron.entries()}
    assert entries == {
        "daily_cleanup": ("0 2 * * *", "deliveries.jobs.DailyCleanupJob", "scheduled"),
        "hourly_sync": ("0 * * * *", "deliveries.jobs.HourlySyncJob", "integrations"),
        "weekly_report": ("0 9 * * 1", "deliveries.jobs.WeeklyReportJob", "low"),
    }


def test_hourly_sync_run_now_syncs_every_task_in_transit(recipient, carrier, worker, wait_for):
    moving = [Task.objects.create(tracking_number=f"M-{n}", recipient=recipient, status="in_transit") for n in range(3)]
    Task.objects.create(tracking_number="D-1", recipient=recipient, status="delivered")

    job_id = api.run_recurring_now("hourly_sync")

    run = wait_for(lambda: JobRun.objects.filter(job_id=job_id, status="succeeded").first())
    assert (run.queue, run.result) == ("integrations", "enqueued 3 SyncExternalDataJob(s)")
    wait_for(lambda: Task.objects.filter(synced_at__isnull=False).count() == 3, what="three syncs")
    assert {r["request"] for r in carrier.requests()} == {f"GET /shipments/{t.tracking_number}" for t in moving}


def test_daily_cleanup_deletes_old_rows_only(task):
    old = timezone.now() - timedelta(days=31)
    jobs.SendWelcomeEmailJob.perform_now(task.recipient.pk)
    OutboxMessage.objects.update(sent_at=old)
    JobRun.objects.update(started_at=old)
    ErrorReport.objects.create(source="job failed", error="x")

    result = jobs.DailyCleanupJob.perform_now()

    assert result.startswith("deleted 1 job run(s), 1 message(s), 0 error report(s)")
    assert not OutboxMessage.objects.exists()
    assert ErrorReport.objects.count() == 1
    assert JobRun.objects.get().job_class == "DailyCleanupJob"  # its own run, just recorded


def test_weekly_report_is_sent_once_per_week_of_its_tick(db):
    job = jobs.WeeklyReportJob()
    monday_9 = 1_796_029_200  # 2026-11-30 09:00 UTC, a tick of "0 9 * * 1"
    job.payload = {"cron": {"name": "weekly_report", "tick": monday_9}}
    assert job.perform_now() == "report 2026-W49 sent to ops@example.com"

    again = jobs.WeeklyReportJob()
    again.payload = {"cron": {"name": "weekly_report", "tick": monday_9 + 60}}
    assert again.perform_now() == "skipped: report 2026-W49 already sent"

    report = OutboxMessage.objects.get(kind="weekly_report")
    assert report.to == "ops@example.com" and "job runs:" in report.body


def test_weekly_report_run_now_uses_the_current_week(db):
    year, week, _ = timezone.now().isocalendar()
    by_hand = jobs.WeeklyReportJob()
    by_hand.payload = {"cron": {"name": "weekly_report", "manual": True}}  # as api.run_recurring_now sends it
    assert by_hand.perform_now() == f"report {year}-W{week:02d} sent to ops@example.com"
