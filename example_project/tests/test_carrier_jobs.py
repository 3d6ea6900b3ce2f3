"""The jobs that call the carrier, against the fake carrier over real HTTP and a real worker:
each retry rule, the discards, a death, the manual retry of ``ManualRetryJob``, and the shared
limiter that keeps every worker together under the carrier's own rate limit."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from deliveries import carrier as carrier_api
from deliveries import jobs
from deliveries.models import ErrorReport, JobRun, Task
from django_async_jobs import ApplicationJob
from django_async_jobs.models import DeadJob
from django_async_jobs.retries import match


def statuses(job_id: str) -> list[str]:
    """What became of each run: succeeded, or the outcome the retry rules chose for a failure."""
    return [run.fate for run in JobRun.objects.filter(job_id=job_id).order_by("execution")]


def settled(job_id: str, count: int):
    """True once the job has ``count`` runs and the rules decided the last one: no longer
    running, retried, or failed (a failed run is saved first, the rules' outcome just after)."""
    found = statuses(job_id)
    return len(found) == count and found[-1] not in ("running", "retried", "failed") and found


# -- ExternalApiJob --------------------------------------------------------------------------------


def test_external_api_job_books_once(task, carrier):
    assert jobs.ExternalApiJob.perform_now(task.pk).startswith("booked T-1 as CR-")
    assert jobs.ExternalApiJob.perform_now(task.pk).startswith("skipped: already booked")
    task.refresh_from_db()
    assert task.carrier_reference.startswith("CR-")
    assert len(carrier.requests("PUT /shipments/T-1")) == 1


@pytest.mark.parametrize(
    "fault, error",
    [
        ("slow", "CarrierTimeout"),
        ("error", "CarrierServerError"),
        ("rate_limit", "CarrierRateLimited"),
        ("drop", "CarrierUnreachable"),
    ],
)
def test_external_api_job_retries_then_succeeds(fault, error, task, carrier, worker, wait_for):
    carrier.plan("PUT /shipments/T-1", fault)
    job = jobs.ExternalApiJob.perform_later(task.pk)

    assert wait_for(lambda: settled(job.job_id, 2), what="a retry and a success") == ["retried", "succeeded"]
    first = JobRun.objects.get(job_id=job.job_id, execution=1)
    assert first.error.startswith(error)
    task.refresh_from_db()
    assert task.carrier_reference.startswith("CR-")
    assert [r["fault"] for r in carrier.requests("PUT /shipments/T-1")] == [fault, "ok"]


def test_external_api_job_discards_a_refused_booking(task, carrier, worker, wait_for):
    carrier.plan("PUT /shipments/T-1", "client_error")
    job = jobs.ExternalApiJob.perform_later(task.pk)

    assert wait_for(lambda: settled(job.job_id, 1)) == ["discarded"]
    assert not DeadJob.objects.exists()
    task.refresh_from_db()
    assert task.carrier_reference == ""


def test_external_api_job_dies_when_the_carrier_stays_unreachable(task, carrier, worker, wait_for):
    carrier.plan("PUT /shipments/T-1", then="drop")
    job = jobs.ExternalApiJob.perform_later(task.pk)

    dead = wait_for(lambda: DeadJob.objects.filter(job_id=job.job_id).first(), what="the dead job row")
    assert (dead.executions, dead.reason) == (3, "retries_exhausted")
    assert dead.error_class.endswith("CarrierUnreachable")
    assert statuses(job.job_id) == ["retried", "retried", "dead"]
    report = ErrorReport.objects.get(source="job died")  # the project's DEATH_HANDLERS entry
    assert (report.job_class, report.job_id) == ("ExternalApiJob", job.job_id)


def test_external_api_job_discards_a_task_that_is_gone(carrier, worker, wait_for):
    job = jobs.ExternalApiJob.perform_later(999_999)
    assert wait_for(lambda: settled(job.job_id, 1)) == ["discarded"]
    assert carrier.requests() == []


# -- SyncExternalDataJob ---------------------------------------------------------------------------


def test_sync_copies_the_carriers_data(task, carrier):
    assert jobs.SyncExternalDataJob.perform_now(task.pk) == "carrier says in_transit at Hub Rotterdam (status updated)"
    task.refresh_from_db()
    assert task.status == Task.Status.IN_TRANSIT
    assert task.external_data["location"] == "Hub Rotterdam"
    assert task.synced_at is not None


def test_sync_retries_a_timeout(task, carrier, worker, wait_for):
    carrier.plan("GET /shipments/T-1", "slow")
    job = jobs.SyncExternalDataJob.perform_later(task.pk)
    assert wait_for(lambda: settled(job.job_id, 2)) == ["retried", "succeeded"]
    task.refresh_from_db()
    assert task.external_data is not None


def test_sync_discards_a_client_error(task, carrier, worker, wait_for):
    carrier.plan("GET /shipments/T-1", "not_found")
    job = jobs.SyncExternalDataJob.perform_later(task.pk)
    assert wait_for(lambda: settled(job.job_id, 1)) == ["discarded"]
    task.refresh_from_db()
    assert task.external_data is None


def test_sync_leaves_unruled_errors_to_the_default_policy(task, carrier):
    carrier.plan("GET /shipments/T-1", "error")
    job = jobs.SyncExternalDataJob(task.pk)
    with pytest.raises(carrier_api.CarrierServerError):
        job.perform_now()
    assert match(job._rules, carrier_api.CarrierServerError("503")) is None


# -- ManualRetryJob --------------------------------------------------------------------------------


def test_manual_retry_enqueues_itself_again_when_rate_limited(task, carrier, worker, wait_for):
    carrier.plan("PUT /pickups/T-1", "rate_limit")
    first = jobs.ManualRetryJob.perform_later(task.pk)

    def both_ran():
        runs = list(JobRun.objects.filter(job_class="ManualRetryJob").order_by("started_at"))
        return runs if len(runs) == 2 and runs[1].status == "succeeded" else None

    runs = wait_for(both_ran, what="the job and its copy")
    assert runs[0].job_id == first.job_id and runs[1].job_id != first.job_id  # a new job, as in the guide
    assert runs[0].result.startswith(f"rate limited: enqueued again as {runs[1].job_id}, in 1s")
    assert runs[1].result.startswith("pickup at ")
    task.refresh_from_db()
    assert task.pickup_at is not None


def test_manual_retry_reports_a_permanent_error_and_stops(task, carrier):
    carrier.plan("PUT /pickups/T-1", "gone")
    result = jobs.ManualRetryJob.perform_now(task.pk)
    assert result == "permanent failure: carrier PUT /pickups/T-1: 410 shipment was cancelled"
    report = ErrorReport.objects.get()
    assert (report.source, report.job_class) == ("permanent failure", "ManualRetryJob")
    assert JobRun.objects.get().status == "succeeded"


def test_error_wrapper_reports_and_raises_other_errors(task, carrier):
    carrier.plan("PUT /pickups/T-1", "error")
    with pytest.raises(carrier_api.CarrierServerError):
        jobs.ManualRetryJob.perform_now(task.pk)
    report = ErrorReport.objects.get()
    assert report.source == "job failed" and report.context == {"job_args": [task.pk], "job_kwargs": {}}


def test_error_wrapper_completes_a_job_whose_row_is_gone(db):
    assert jobs.ManualRetryJob.perform_now(999_999) is None  # the wrapper ended it without a result
    run = JobRun.objects.get()
    assert run.status == "succeeded" and run.result.startswith("skipped: record not found")
    assert not ErrorReport.objects.exists()


# -- the carrier's rate limit ----------------------------------------------------------------------


def test_the_fake_carrier_refuses_calls_past_its_own_limit(carrier):
    """Without the project's limiter, a burst goes over what the carrier allows a second."""
    with ThreadPoolExecutor(max_workers=30) as pool:
        list(pool.map(lambda _: _try_fetch(), range(90)))
    over = [r for r in carrier.requests() if r["fault"] == "over_limit"]
    assert over and all(r["status"] == 429 for r in over)


def _try_fetch():
    try:
        carrier_api.fetch_tracking("T-burst")
    except carrier_api.CarrierRateLimited:
        pass


def test_the_shared_limiter_keeps_the_carrier_from_answering_429(recipient, carrier, worker, wait_for):
    tasks = [Task.objects.create(tracking_number=f"T-{n:03d}", recipient=recipient) for n in range(40)]
    ApplicationJob.perform_all_later([jobs.SyncExternalDataJob(task.pk) for task in tasks])

    def synced():
        return Task.objects.filter(synced_at__isnull=False).count() == len(tasks)

    wait_for(synced, timeout=120, what="every task synced")
    requests = carrier.requests()
    assert [r for r in requests if r["fault"] == "over_limit"] == []  # the carrier never had to say 429
    assert len(requests) == len(tasks) and all(r["status"] == 200 for r in requests)
    limited = JobRun.objects.filter(job_class="SyncExternalDataJob", outcome=JobRun.Outcome.LIMITED)
    assert all(run.error.startswith("OverLimit: over the limit of RateLimit.window('carrier-api'") for run in limited)
