"""The example project in a real browser: Debian's Chromium driven by Playwright.

A live server of this project, an in-process worker on real Redis, and an operator at the
admin: log in, watch a payment job die on the overview without reloading, find it on the Dead
page, fix its cause, retry it, watch the worker run it, then use the dashboard's own buttons.
A screenshot of every page goes to example_project/test-artifacts/browser/.

Needs ``apt-get install -y chromium`` and ``pip install playwright`` (never ``playwright install``).
"""

import os
import shutil
import time
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from deliveries.jobs import PaymentProcessingJob, TaskReminderJob
from deliveries.models import JobRun, Payment, Recipient, Task
from django_async_jobs.models import DeadJob

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
PASSWORD = "browser-test-pw"

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(
        sync_playwright is None, reason="Playwright is not installed: pip install playwright (never `playwright install`)"
    ),
    pytest.mark.skipif(
        not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing: apt-get install -y chromium"
    ),
]


def wait_for(condition, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def worker(settings, broker):
    """This project's worker in-process, on the test's key prefix. A job that fails dies at
    once (``MAX_RETRIES`` 0) so that the test need not wait out a retry's backoff."""
    from django_async_jobs.worker.launcher import Worker

    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "MAX_RETRIES": 0, "CONCURRENCY": 3}
    w = Worker()
    w.start()
    yield w
    w.stop(timeout=5)


@pytest.fixture
def page(monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the ORM calls the test makes
    # between browser steps are plain synchronous code, so Django's guard is lifted for them.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.set_default_timeout(15_000)
        page.on("dialog", lambda dialog: dialog.accept())  # the dashboard's confirmations
        yield page
        browser.close()


def shot(page, name: str) -> None:
    page.screenshot(path=str(SHOTS / f"{len(list(SHOTS.iterdir())) + 1:02d}-{name}.png"), full_page=True)


def runs(job_class, status=None):
    found = JobRun.objects.filter(job_class=job_class.__name__)
    return found.filter(status=status) if status else found


@pytest.mark.django_db(transaction=True)
def test_an_operator_finds_a_dead_payment_job_retries_it_and_watches_it_run(live_server, broker, worker, page):
    User.objects.create_superuser("admin", "admin@example.com", PASSWORD)
    task = Task.objects.create(tracking_number="BROWSER-1", recipient=Recipient.objects.create(name="Ana"))
    redis = broker.redis

    # Log in to the project's admin; the dashboard is listed in its index.
    page.goto(f"{live_server.url}/admin/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", PASSWORD)
    page.click('input[type="submit"]')
    expect(page.locator("#content-main")).to_contain_text("Dashboard")
    expect(page.locator("#content-main")).to_contain_text("Job runs")  # the project's own models
    shot(page, "admin-index")

    # The overview is open when the job dies: its live refresh shows the death without a reload.
    # The payment row is not there yet, so the job fails fast (Payment.DoesNotExist).
    page.click("text=Dashboard")
    expect(page.locator('[data-stat="dead"]')).to_have_text("0")
    page.select_option("#aj-refresh", "2")
    page.evaluate("window.notReloaded = true")
    missing_id = 4242
    job = PaymentProcessingJob.perform_later(missing_id)
    expect(page.locator('[data-stat="dead"]')).to_have_text("1", timeout=20_000)
    expect(page.locator('[data-stat="failed_today"]')).to_have_text("1")
    assert page.evaluate("window.notReloaded") is True
    shot(page, "overview-after-death")

    # The Dead page lists it (once the worker's dead writer has moved it to the database).
    page.click("#aj-dead-link")
    wait_for(lambda: not redis.hlen(broker.keys.dead), timeout=15, what="the dead job written to the database")
    page.reload()
    row = page.locator("#result_list tbody tr", has_text="PaymentProcessingJob")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("DoesNotExist")
    row.locator("th a, td a").first.click()  # the read-only detail page with the traceback
    expect(page.locator("#content")).to_contain_text("Payment matching query does not exist")
    shot(page, "dead-job-detail")
    page.go_back()

    # The cause is fixed (the payment row exists now): retry it from the Dead page.
    Payment.objects.create(pk=missing_id, task=task, amount="19.90")
    row = page.locator("#result_list tbody tr", has_text="PaymentProcessingJob")
    row.locator("input.action-select").check()
    page.select_option('select[name="action"]', "retry_selected")
    page.locator('#changelist-form button[type="submit"], #changelist-form input[type="submit"][name="index"]').first.click()
    expect(page.locator("ul.messagelist")).to_contain_text("Retried 1 dead job")
    wait_for(
        lambda: Payment.objects.get(pk=missing_id).status == Payment.Status.CAPTURED,
        timeout=15, what="the retried payment job capturing the payment",
    )
    assert not DeadJob.objects.filter(job_id=job.job_id).exists()
    assert list(runs(PaymentProcessingJob).order_by("id").values_list("status", flat=True)) == ["failed", "succeeded"]
    shot(page, "dead-jobs-after-retry")

    # The project's JobRun admin shows both executions of that job.
    page.goto(f"{live_server.url}/admin/deliveries/jobrun/")
    expect(page.locator("#result_list tbody tr", has_text="PaymentProcessingJob")).to_have_count(2)
    shot(page, "job-runs")

    page.goto(f"{live_server.url}/admin/")
    page.click("text=Dashboard")
    expect(page.locator('[data-stat="processed_today"]')).to_have_text("2")  # the failure and the success
    expect(page.locator('[data-stat="dead"]')).to_have_text("0")
    shot(page, "overview-after-retry")

    # Scheduled: "Run now" hands tomorrow's reminder to the worker at once.
    TaskReminderJob.set(wait=3600).perform_later(task.id)
    page.click("a.aj-tab:has-text('Scheduled')")
    expect(page.locator("table.aj-jobs tbody tr")).to_have_count(1)
    expect(page.locator("table.aj-jobs tbody tr")).to_contain_text("TaskReminderJob")
    shot(page, "scheduled")
    page.click("button.aj-op-enqueue")
    expect(page.locator("ul.messagelist")).to_contain_text("Enqueued 1 job to run now")
    wait_for(lambda: runs(TaskReminderJob, "succeeded").exists(), timeout=15, what="the reminder running")
    expect(page.locator("table.aj-jobs")).to_contain_text("No jobs.")

    # Queues: the guide's seven queues, all drained.
    page.click("a.aj-tab:has-text('Queues')")
    for queue in ("critical", "default", "notifications", "integrations", "bulk", "scheduled", "low"):
        expect(page.locator(f'#aj-queues tr[data-queue="{queue}"]')).to_have_count(1)
    shot(page, "queues")
