"""The example project in a real browser: Debian's Chromium driven by Playwright.

A live server of this project, an in-process worker on real Redis, the fake carrier, and an
operator at the admin: log in, watch a booking job die on the overview (the carrier answers 503
until its retries run out) without reloading, find it on the Dead page, bring the carrier back,
retry the job and watch the worker run it; then work through the dashboard's pages with their
own buttons. A screenshot of every page goes to example_project/test-artifacts/browser/.

Needs ``apt-get install -y chromium`` and ``pip install playwright`` (never ``playwright install``).
"""

import re
import shutil
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from deliveries.fake_carrier import CarrierControl, FakeCarrier
from deliveries.jobs import (
    ExternalApiJob,
    PaymentProcessingJob,
    SyncExternalDataJob,
    TaskReminderJob,
)
from deliveries.models import JobRun, Recipient, Task
from django_async_jobs.models import DeadJob

SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"
PASSWORD = "browser-test-pw"
# How long the Busy page has to show the running job, however slowly the browser reloads.
SLOW_CARRIER_SECONDS = 10

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the page fixture skips the test
    expect = None


@pytest.fixture
def heartbeats(settings, prefix):
    """Heartbeats twice a second, so the Busy page shows a job soon after it starts (before the
    ``worker`` fixture, which reads the setting)."""
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "HEARTBEAT_INTERVAL": 0.5}


@pytest.fixture
def slow_carrier(settings):
    """The fake carrier with a slow answer long enough to watch a job run on the Busy page;
    retry waits a fiftieth of the guide's, so the booking job's five attempts take a second."""
    server = FakeCarrier(port=0, slow_seconds=SLOW_CARRIER_SECONDS).start()
    settings.CARRIER_API = {"URL": server.url, "TIMEOUT": SLOW_CARRIER_SECONDS * 2, "RETRY_WAIT_SCALE": 0.02}
    yield CarrierControl(server.url)
    server.stop()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{len(list(SHOTS.iterdir())) + 1:02d}-{name}.png"), full_page=True)


def statuses(job_class) -> list[str]:
    runs = JobRun.objects.filter(job_class=job_class.__name__).order_by("id")
    return list(runs.values_list("status", flat=True))


@pytest.mark.django_db(transaction=True)
def test_an_operator_retries_a_dead_job_and_works_the_dashboard(
    live_server, heartbeats, broker, worker, slow_carrier, page, wait_for
):
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    User.objects.create_superuser("admin", "admin@example.com", PASSWORD)
    task = Task.objects.create(tracking_number="BROWSER-1", recipient=Recipient.objects.create(name="Ana"))
    booking = f"PUT /shipments/{task.tracking_number}"
    redis = broker.redis

    # Log in to the project's admin: the dashboard and the project's own models are listed.
    page.goto(f"{live_server.url}/admin/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", PASSWORD)
    page.click('input[type="submit"]')
    expect(page.locator("#content-main")).to_contain_text("Dashboard")
    expect(page.locator("#content-main")).to_contain_text("Job runs")
    shot(page, "admin-index")

    # The overview is open while the carrier is down: the booking job uses up its five attempts
    # and dies, and the live refresh shows it without a reload.
    page.click("text=Dashboard")
    expect(page.locator('[data-stat="dead"]')).to_have_text("0")
    page.select_option("#aj-refresh", "2")
    page.evaluate("window.notReloaded = true")
    slow_carrier.plan(booking, then="error")
    job = ExternalApiJob.perform_later(task.id)
    expect(page.locator('[data-stat="dead"]')).to_have_text("1")
    expect(page.locator('[data-stat="failed_today"]')).to_have_text("5")
    assert page.evaluate("window.notReloaded") is True
    assert statuses(ExternalApiJob) == ["failed"] * 5
    shot(page, "overview-after-death")

    # The Dead page lists it (once the worker's dead writer has moved it to the database), and
    # its detail page shows why.
    page.click("#aj-dead-link")
    wait_for(lambda: not redis.hlen(broker.keys.dead), timeout=30, what="the dead job written to the database")
    page.reload()
    row = page.locator("#result_list tbody tr", has_text="ExternalApiJob")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("CarrierServerError")
    row.locator("th a").first.click()
    expect(page.locator("#content")).to_contain_text("Traceback")
    shot(page, "dead-job-detail")
    page.go_back()

    # The carrier is back: retry the job from the Dead page and watch the worker book it.
    slow_carrier.reset()
    row.locator("input.action-select").check()
    page.select_option('select[name="action"]', "retry_selected")
    page.locator('#changelist-form button[type="submit"], #changelist-form input[type="submit"][name="index"]').first.click()
    expect(page.locator("ul.messagelist")).to_contain_text("Retried 1 dead job")
    wait_for(lambda: statuses(ExternalApiJob)[-1:] == ["succeeded"], timeout=30, what="the retried job booking")
    task.refresh_from_db()
    assert task.carrier_reference
    assert not DeadJob.objects.filter(job_id=job.job_id).exists()
    shot(page, "dead-jobs-after-retry")

    page.goto(f"{live_server.url}/admin/deliveries/jobrun/")
    expect(page.locator("#result_list tbody tr", has_text="ExternalApiJob")).to_have_count(6)
    shot(page, "job-runs")

    page.goto(f"{live_server.url}/admin/")
    page.click("text=Dashboard")
    expect(page.locator('[data-stat="processed_today"]')).to_have_text("6")  # five failures, one success
    expect(page.locator('[data-stat="dead"]')).to_have_text("0")
    shot(page, "overview-after-retry")

    # Scheduled: "Run now" hands a reminder due in an hour to the worker at once.
    TaskReminderJob.set(wait=3600).perform_later(task.id)
    page.click("a.aj-tab:has-text('Scheduled')")
    expect(page.locator("table.aj-jobs tbody tr")).to_have_count(1)
    expect(page.locator("table.aj-jobs tbody tr")).to_contain_text("TaskReminderJob")
    shot(page, "scheduled")
    page.click("button.aj-op-enqueue")
    expect(page.locator("ul.messagelist")).to_contain_text("Enqueued 1 job to run now")
    wait_for(lambda: statuses(TaskReminderJob) == ["succeeded"], timeout=30, what="the reminder running")
    expect(page.locator("table.aj-jobs")).to_contain_text("No jobs.")

    # Retries: a payment job for a row that does not exist waits for its retry under the default
    # policy; the operator kills it with a bulk action and finds it among the dead jobs.
    failing = PaymentProcessingJob.perform_later(987654)
    wait_for(lambda: redis.zcard(broker.keys.retry) == 1, timeout=30, what="the failed job in the retry set")
    page.click("a.aj-tab:has-text('Retries')")
    expect(page.locator(f'tr[data-job-id="{failing.job_id}"]')).to_contain_text("DoesNotExist")
    shot(page, "retries")
    page.check(".aj-check-all")
    page.click('.actions button[value="kill"]')  # accepts the confirmation dialog
    expect(page.locator("ul.messagelist")).to_contain_text("Moved 1 job to the dead jobs")
    assert redis.zcard(broker.keys.retry) == 0
    wait_for(lambda: not redis.hlen(broker.keys.dead), timeout=30, what="the killed job written to the database")
    page.click("#aj-dead-link")
    expect(page.locator("#result_list tbody tr", has_text="Killed")).to_have_count(1)
    shot(page, "dead-jobs-after-kill")

    # Queues: the guide's seven, drained. Recurring: the project's three entries; run one now.
    page.click("#nav-sidebar a:has-text('Dashboard')")
    page.click("a.aj-tab:has-text('Queues')")
    for queue in ("critical", "default", "notifications", "integrations", "bulk", "scheduled", "low"):
        expect(page.locator(f'#aj-queues tr[data-queue="{queue}"]')).to_have_count(1)
    shot(page, "queues")
    page.click("a.aj-tab:has-text('Recurring')")
    expect(page.locator('tr[data-entry="daily_cleanup"]')).to_contain_text("0 2 * * *")
    expect(page.locator('tr[data-entry="hourly_sync"]')).to_contain_text("0 * * * *")
    expect(page.locator('tr[data-entry="weekly_report"]')).to_contain_text("0 9 * * 1")
    shot(page, "recurring")

    # Busy: a sync job waiting on the slow carrier, with its runtime; then the worker is quieted
    # from the page and lets that job finish.
    slow_carrier.plan(f"GET /shipments/{task.tracking_number}", "slow")
    running = SyncExternalDataJob.perform_later(task.id)
    page.click("a.aj-tab:has-text('Busy')")
    running_row = page.locator(f'#aj-running tr[data-job-id="{running.job_id}"]')
    process_row = page.locator(f'tr[data-process="{worker.process_id}"]')
    shown_by = time.monotonic() + SLOW_CARRIER_SECONDS
    while time.monotonic() < shown_by:  # the job's start shows with the worker's next heartbeat
        if running_row.count() and f"1/{worker.concurrency}" in process_row.inner_text():
            break
        page.wait_for_timeout(100)
        page.reload()
    expect(process_row).to_contain_text(f"1/{worker.concurrency}")
    expect(running_row).to_contain_text("SyncExternalDataJob")
    expect(running_row.locator(".aj-runtime")).to_have_text(re.compile(r"^(\d+\.\d s|\d+ s)$"))
    shot(page, "busy")
    process_row.locator('button[value="quiet"]').click()
    expect(page.locator("ul.messagelist")).to_contain_text("it acts on its next heartbeat")
    wait_for(lambda: worker.quiet, timeout=30, what="the worker going quiet")
    wait_for(lambda: statuses(SyncExternalDataJob) == ["succeeded"], timeout=30, what="the running job finishing")
    page.reload()
    expect(page.locator(f'tr[data-process="{worker.process_id}"]')).to_contain_text("quiet")
    shot(page, "busy-quiet")
