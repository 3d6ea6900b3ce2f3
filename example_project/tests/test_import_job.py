"""``ImportJob``: a resumable CSV import that reports its progress in a ``JobProgress`` row."""

from deliveries import jobs
from deliveries.models import Import, JobRun, Recipient, Task
from django_async_jobs.models import JobProgress
from django_async_jobs.progress import perform_later_with_progress

CSV = """tracking_number,name,phone,email
IMP-1,Dana Roe,+15550100011,dana@example.com
IMP-2,Dana Roe,+15550100011,dana@example.com
,Eli Park,+15550100012,eli@example.com
IMP-4,Femi Ade,,not-an-email
IMP-5,,+15550100013,
IMP-6,Gus Lee,+15550100014,gus@example.com
"""


def test_import_creates_tasks_and_records_the_bad_lines(db):
    source = Import.objects.create(name="november.csv", csv=CSV)
    job = jobs.ImportJob(source.pk)

    job.perform_now()

    progress = JobProgress.objects.get(job_id=job.job_id)
    assert (progress.status, progress.total, progress.processed, progress.percent) == (
        "completed_with_errors", 6, 6, 100.0,
    )
    assert progress.error_count == 3
    assert [d["row"] for d in progress.error_details] == [4, 5, 6]  # the file's line numbers
    assert progress.error_details[1]["error"] == "email: Enter a valid email address."
    assert set(Task.objects.values_list("tracking_number", flat=True)) == {"IMP-1", "IMP-2", "IMP-6"}
    assert Recipient.objects.get(name="Dana Roe").tasks.count() == 2


def test_importing_again_creates_no_duplicates(db):
    source = Import.objects.create(name="november.csv", csv=CSV)
    jobs.ImportJob.perform_now(source.pk)
    jobs.ImportJob.perform_now(source.pk)
    assert Task.objects.count() == 3
    assert Recipient.objects.count() == 2


def test_import_in_the_worker_goes_from_pending_to_completed(broker, worker, wait_for, admin_user):
    source = Import.objects.create(name="november.csv", csv=CSV)
    job = perform_later_with_progress(jobs.ImportJob, source.pk, started_by=admin_user)
    assert job.queue_name == "bulk"
    row = JobProgress.objects.get(job_id=job.job_id)
    assert row.started_by == admin_user  # pending row made before the push, so a page can poll at once

    wait_for(lambda: JobRun.objects.filter(job_id=job.job_id, status="succeeded").exists(), what="the import")
    row.refresh_from_db()
    assert (row.status, row.processed, row.error_count) == ("completed_with_errors", 6, 3)
    assert row.started_by == admin_user


def test_import_of_a_file_that_is_gone_ends_quietly(db):
    assert jobs.ImportJob.perform_now(999_999) is None
    assert JobRun.objects.get().result.startswith("skipped: record not found")


def test_a_long_import_goes_on_in_several_runs_each_line_once(broker, worker, wait_for, settings):
    from deliveries.management.commands.demo import IMPORT_BAD_LINES, IMPORT_ROWS, import_csv

    settings.IMPORTS = {"MAX_RUNTIME": 0.05}
    source = Import.objects.create(name="big.csv", csv=import_csv())
    job = jobs.ImportJob.perform_later(source.pk)
    row = wait_for(lambda: JobProgress.objects.filter(job_id=job.job_id, status="completed_with_errors").first(),
                   what="the import")
    assert (row.processed, row.total, row.error_count) == (IMPORT_ROWS, IMPORT_ROWS, len(IMPORT_BAD_LINES))
    assert [d["row"] for d in row.error_details] == sorted(IMPORT_BAD_LINES)  # each bad line once
    assert Task.objects.filter(tracking_number__startswith="IMP-").count() == IMPORT_ROWS - len(IMPORT_BAD_LINES)

    def settled_runs():  # the last run's record is saved just after the progress row completes
        runs = list(JobRun.objects.filter(job_id=job.job_id).order_by("started_at"))
        return runs if runs and all(r.status == "succeeded" for r in runs) else None

    runs = wait_for(settled_runs, what="every run recorded as succeeded")
    assert len(runs) >= 2
    assert all(r.result.startswith("interrupted (max_iteration_runtime reached) at cursor") for r in runs[:-1])


def test_an_import_as_a_batch_reports_once_every_chunk_ran(worker, wait_for):
    source = Import.objects.create(name="december.csv", csv=CSV)

    bid = jobs.import_in_batch(source, size=2)

    def report():
        return JobRun.objects.filter(job_class="ImportReportJob", status=JobRun.Status.SUCCEEDED).first()

    run = wait_for(report, what="the batch's report")
    assert run.result == "december.csv: 3 chunk(s), 3 succeeded, 0 failure(s), 0 dead; 3 task(s) in all"
    chunks = JobRun.objects.filter(job_class="ImportChunkJob").order_by("arguments__args__1")
    assert [r.result for r in chunks] == ["lines 2-3: 0 bad []", "lines 4-5: 2 bad [4, 5]", "lines 6-7: 1 bad [6]"]
    assert set(Task.objects.values_list("tracking_number", flat=True)) == {"IMP-1", "IMP-2", "IMP-6"}
    assert jobs.Batch.status(bid)["success"]
