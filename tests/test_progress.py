"""Progress tracking: throttled writes, final states, a real worker, the admin list, the JSON view."""

from types import SimpleNamespace

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.urls import include, path, reverse

from django_async_jobs import ApplicationJob, checks, retries
from django_async_jobs import progress as progress_module
from django_async_jobs.models import JobProgress, ProgressStatus
from django_async_jobs.progress import perform_later_with_progress
from django_async_jobs.worker.launcher import Worker
from tests.helpers import wait_for

# This module is also the URLconf of its tests: the app's URLs included as a project would.
urlpatterns = [path("admin/", admin.site.urls), path("jobs/", include("django_async_jobs.urls"))]
pytestmark = pytest.mark.urls(__name__)

SNAPSHOTS: list[int] = []


class ImportJob(ApplicationJob):
    """The guide's ImportJob: rows whose value is "bad" fail, the others count."""

    queue_as = "default"

    def perform(self, rows, crash_at=None, snapshot=False):
        with self.track_progress(total=len(rows)) as progress:
            for number, value in enumerate(rows, start=1):
                if number == crash_at:
                    raise ConnectionError("lost the file")
                if value == "bad":
                    progress.error(row=number, error=f"row {number} is bad")
                else:
                    progress.advance()
                if snapshot:
                    SNAPSHOTS.append(JobProgress.objects.get(job_id=self.job_id).processed)


@pytest.fixture
def throttle(settings):
    def set_throttle(every, seconds):
        settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "PROGRESS_EVERY": every, "PROGRESS_SECONDS": seconds}

    return set_throttle


def run(*args, **kwargs):
    job = ImportJob(*args, **kwargs)
    job.perform_now()
    return job, JobProgress.objects.get(job_id=job.job_id)


def test_writes_are_throttled_by_count_and_the_final_state_is_exact(db, throttle):
    throttle(10, 60)
    SNAPSHOTS.clear()
    job, row = run(["ok"] * 25, snapshot=True)
    assert SNAPSHOTS == [0] * 9 + [10] * 10 + [20] * 6  # written at items 10 and 20 only
    assert (row.status, row.processed, row.total, row.percent, row.error_count) == ("completed", 25, 25, 100.0, 0)
    assert row.job_class == job.job_name and row.started_at <= row.completed_at


def test_writes_are_throttled_by_time(db, throttle, monkeypatch):
    throttle(1000, 0.5)
    # The tracker's clock is the test's: a slow machine cannot make 0.5 s pass too early.
    clock = SimpleNamespace(now=1000.0)
    monkeypatch.setattr(progress_module, "time", SimpleNamespace(monotonic=lambda: clock.now))

    class SlowJob(ApplicationJob):
        def perform(self):
            with self.track_progress(total=3) as progress:
                clock.now += 0.4
                progress.advance()
                SNAPSHOTS.append(JobProgress.objects.get(job_id=self.job_id).processed)
                clock.now += 0.2
                progress.advance()
                SNAPSHOTS.append(JobProgress.objects.get(job_id=self.job_id).processed)

    SNAPSHOTS.clear()
    SlowJob.perform_now()
    assert SNAPSHOTS == [0, 2]


def test_errors_are_recorded_and_the_job_completes_with_errors(db, throttle):
    throttle(100, 60)
    _, row = run(["ok", "bad", "ok", "bad"])
    assert row.status == ProgressStatus.COMPLETED_WITH_ERRORS
    assert (row.processed, row.error_count, row.percent) == (4, 2, 100.0)
    assert row.error_details == [{"row": 2, "error": "row 2 is bad"}, {"row": 4, "error": "row 4 is bad"}]


def test_a_crash_marks_it_failed_with_the_error(db, throttle):
    throttle(100, 60)
    job = ImportJob(["ok"] * 5, crash_at=4)
    with pytest.raises(ConnectionError):
        job.perform_now()
    row = JobProgress.objects.get(job_id=job.job_id)
    assert (row.status, row.processed, row.percent) == ("failed", 3, 60.0)
    assert row.error_details[-1] == {"row": None, "error": "ConnectionError: lost the file"}
    assert row.completed_at is not None
    # The retry starts over on the same row.
    job.arguments = [["ok"] * 5]
    job.kwargs = {}
    job.perform_now()
    row.refresh_from_db()
    assert (row.status, row.processed, row.error_details) == ("completed", 5, [])


def test_a_tracker_goes_on_from_saved_counts_keeping_the_details_they_cover(db, throttle):
    throttle(100, 60)
    job = ImportJob([])
    with pytest.raises(ConnectionError), progress_module.Tracker(job, total=10) as tracker:
        tracker.error(row=1, error="one")
        tracker.reached(4, cursor=4)
        tracker.error(row=5, error="five")  # after the last saved count: done again on resume
        raise ConnectionError("lost")
    assert JobProgress.objects.get(job_id=job.job_id).status == "failed"
    tracker = progress_module.Tracker(job, total=10)
    tracker.resume(processed=4, errors=1, cursor=4)
    with pytest.raises(retries.Reschedule), tracker:
        row = JobProgress.objects.get(job_id=job.job_id)
        assert (row.status, row.processed, row.error_count, row.error_details, row.completed_at) == (
            "processing", 4, 1, [{"row": 1, "error": "one"}], None,
        )
        tracker.error(row=5, error="five")
        tracker.reached(7, cursor=7)
        raise retries.Reschedule(0)  # interrupted: it goes on later, nothing failed
    row.refresh_from_db()
    assert (row.status, row.processed, row.cursor, row.error_count, row.completed_at) == ("processing", 7, 7, 2, None)
    tracker = progress_module.Tracker(job, total=10)
    tracker.resume(processed=7, errors=2, cursor=7)
    with pytest.raises(retries.Drop), tracker:
        raise retries.Drop()
    row.refresh_from_db()
    assert (row.status, row.processed, row.percent, row.cursor) == ("cancelled", 7, 70.0, 7)
    assert [d["row"] for d in row.error_details] == [1, 5]


@pytest.mark.django_db(transaction=True)
def test_a_worker_runs_a_tracked_job_started_by_a_user(broker):
    user = User.objects.create(username="ada")
    job = perform_later_with_progress(ImportJob, ["ok", "bad", "ok"], started_by=user)
    row = JobProgress.objects.get(job_id=job.job_id)
    assert (row.status, row.started_by_id) == ("pending", user.pk)
    w = Worker()
    w.start()

    def finished():
        row.refresh_from_db()
        return row.status != "pending" and row.completed_at

    try:
        wait_for(finished, 30, "the tracked job finished")
    finally:
        w.stop(timeout=2)
    assert (row.status, row.processed, row.error_count, row.started_by_id) == ("completed_with_errors", 3, 1, user.pk)


def test_admin_list_shows_a_progress_bar_and_filters_by_status(client, db):
    admin_client = client
    admin_client.force_login(User.objects.create(username="root", is_staff=True, is_superuser=True))
    JobProgress.objects.create(job_id="a", job_class="x.ImportJob", status="processing", total=10, processed=4, percent=40.0)
    JobProgress.objects.create(job_id="b", job_class="x.ImportJob", status="failed", total=10, processed=1, percent=10.0)
    url = reverse("admin:django_async_jobs_jobprogress_changelist")
    page = admin_client.get(url).content.decode()
    assert '<progress value="40.0" max="100"' in page and "40%" in page
    assert "?status__exact=failed" in page
    filtered = admin_client.get(url, {"status__exact": "failed"}).content.decode()
    assert '<progress value="10.0"' in filtered and '<progress value="40.0"' not in filtered
    marker_list = admin_client.get(reverse("admin:django_async_jobs_idempotencymarker_changelist"))
    assert marker_list.status_code == 200


def test_json_view_is_for_the_starter_and_staff_only(client, db):
    owner = User.objects.create(username="owner")
    other = User.objects.create(username="other")
    staff = User.objects.create(username="staff", is_staff=True)
    JobProgress.objects.create(job_id="j1", job_class="x.ImportJob", status="processing", total=4, processed=1,
                               percent=25.0, started_by=owner)
    url = reverse("async_jobs:progress", args=["j1"])
    assert url == "/jobs/progress/j1/"
    anonymous = client.get(url)
    assert anonymous.status_code == 302 and "login" in anonymous["Location"]
    client.force_login(other)
    assert client.get(url).status_code == 404
    client.force_login(owner)
    data = client.get(url).json()
    assert (data["status"], data["percent"], data["processed"], data["total"]) == ("processing", 25.0, 1, 4)
    client.force_login(staff)
    assert client.get(url).status_code == 200
    assert client.get(reverse("async_jobs:progress", args=["nope"])).status_code == 404


def test_the_throttle_settings_are_checked(settings):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "PROGRESS_EVERY": 0, "PROGRESS_SECONDS": "often"}
    messages = {e.id: e.msg for e in checks.check_settings() if "PROGRESS" in e.msg}
    assert messages == {
        "async_jobs.E004": "ASYNC_JOBS['PROGRESS_EVERY'] must be an integer of at least 1, got 0.",
        "async_jobs.E005": "ASYNC_JOBS['PROGRESS_SECONDS'] must be a positive number of seconds or a timedelta.",
    }
