"""A real browser (Debian's Chromium driven by Playwright) through the admin and the dashboard.

A live Django server and an in-process worker on real Redis: log in, watch a job die on the
overview without reloading, find it on the Dead page, retry it, watch the worker run it, and use
the dashboard's own buttons. Screenshots of every page go to test-artifacts/browser/.

Needs ``apt-get install -y chromium`` and ``pip install playwright`` (never ``playwright install``).
"""

import os
import re
import shutil
from pathlib import Path

import pytest
from django.contrib.auth.models import User

from django_async_jobs import ApplicationJob
from django_async_jobs.broker.client import get_broker
from django_async_jobs.models import DeadJob
from tests.helpers import wait_for
from tests.testapp.jobs import FailJob, IncrJob, SleepJob

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "browser"
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]

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


class BrowserFlakyJob(ApplicationJob):
    """Fails while its Redis flag is set; no retries, so its first failure is its death."""

    job_name = "tests.test_browser.BrowserFlakyJob"
    max_retries = 0

    def perform(self, key):
        redis = get_broker().redis
        if redis.get(f"{key}:broken"):
            raise RuntimeError("the flaky service is down")
        redis.incr(f"{key}:done")


@pytest.fixture
def browser_page(monkeypatch):
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


def shot(page, name):
    page.screenshot(path=str(SHOTS / f"{len(list(SHOTS.iterdir())) + 1:02d}-{name}.png"), full_page=True)


@pytest.mark.django_db(transaction=True)
def test_a_job_dies_is_retried_from_the_dead_page_and_runs(live_server, broker, worker, browser_page, settings):
    page = browser_page
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "RECURRING": {
        "nightly_cleanup": {"cron": "30 2 * * *", "class": IncrJob.job_name, "args": ["cleanup"]},
    }}
    User.objects.create_superuser("admin", "admin@example.com", "browser-test-pw")
    key = f"{broker.keys.prefix}:flaky"
    redis = broker.redis
    redis.set(f"{key}:broken", 1)

    # Log in to the admin; the dashboard is listed in its index.
    page.goto(f"{live_server.url}/admin/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", "browser-test-pw")
    page.click('input[type="submit"]')
    expect(page.locator("#content-main")).to_contain_text("Dashboard")
    shot(page, "admin-index")

    # The overview is open when the job dies: its live refresh shows the death without a reload.
    page.click("text=Dashboard")
    expect(page.locator('[data-stat="dead"]')).to_have_text("0")
    page.select_option("#aj-refresh", "2")
    page.evaluate("window.notReloaded = true")
    job = BrowserFlakyJob.perform_later(key)
    expect(page.locator('[data-stat="dead"]')).to_have_text("1", timeout=20_000)
    expect(page.locator('[data-stat="failed_today"]')).to_have_text("1")
    assert page.evaluate("window.notReloaded") is True
    assert page.locator("#aj-chart svg polyline").count() == 2
    shot(page, "overview-after-death")

    # The Dead page: the DeadJob admin lists it (once the worker's dead writer has flushed it).
    page.click("#aj-dead-link")
    wait_for(lambda: not redis.hlen(broker.keys.dead), timeout=15, what="the dead job written to the database")
    page.reload()
    row = page.locator("#result_list tbody tr", has_text="BrowserFlakyJob")
    expect(row).to_have_count(1)
    expect(row).to_contain_text("RuntimeError")
    shot(page, "dead-jobs")

    # The service is back: retry it with the DeadJob admin's action and watch the worker run it.
    redis.delete(f"{key}:broken")
    row.locator("input.action-select").check()
    page.select_option('select[name="action"]', "retry_selected")
    page.locator('#changelist-form button[type="submit"], #changelist-form input[type="submit"][name="index"]').first.click()
    expect(page.locator("ul.messagelist")).to_contain_text("Retried 1 dead job")
    wait_for(lambda: redis.get(f"{key}:done") == b"1", timeout=15, what="the retried job running")
    shot(page, "dead-jobs-after-retry")

    page.click("#nav-sidebar a:has-text('Dashboard')")  # the sidebar lists the dashboard on every page
    expect(page.locator('[data-stat="processed_today"]')).to_have_text("2")  # the failure and the success
    expect(page.locator('[data-stat="dead"]')).to_have_text("0")
    shot(page, "overview-after-retry")

    # Scheduled: "Run now" hands a job to the worker at once.
    IncrJob.set(wait=3600).perform_later(f"{key}:scheduled")
    page.click("a.aj-tab:has-text('Scheduled')")
    expect(page.locator("table.aj-jobs tbody tr")).to_have_count(1)
    shot(page, "scheduled")
    page.click("button.aj-op-enqueue")
    expect(page.locator("ul.messagelist")).to_contain_text("Enqueued 1 job to run now")
    wait_for(lambda: redis.get(f"{key}:scheduled") == b"1", timeout=15, what="the scheduled job running")
    expect(page.locator("table.aj-jobs")).to_contain_text("No jobs.")

    # Retries: a job that failed waits at least 15 s for its retry; kill it with a bulk action.
    failing = FailJob.perform_later(f"{key}:fail")
    wait_for(lambda: redis.zcard(broker.keys.retry) == 1, timeout=15, what="the failed job in the retry set")
    page.click("a.aj-tab:has-text('Retries')")
    expect(page.locator(f'tr[data-job-id="{failing.job_id}"]')).to_contain_text("RuntimeError: boom")
    shot(page, "retries")
    page.check(".aj-check-all")
    page.click('.actions button[value="kill"]')  # accepts the confirmation dialog
    expect(page.locator("ul.messagelist")).to_contain_text("Moved 1 job to the dead jobs")
    assert redis.zcard(broker.keys.retry) == 0
    wait_for(lambda: not redis.hlen(broker.keys.dead), timeout=15, what="the killed job written to the database")
    page.click("#aj-dead-link")
    expect(page.locator("#result_list tbody tr", has_text="Killed")).to_have_count(1)
    shot(page, "dead-jobs-after-kill")

    # Queues and Busy render what the worker is doing.
    page.click("#nav-sidebar a:has-text('Dashboard')")
    page.click("a.aj-tab:has-text('Queues')")
    expect(page.locator('#aj-queues tr[data-queue="default"]')).to_contain_text("0")
    shot(page, "queues")
    page.click("a.aj-tab:has-text('Recurring')")
    expect(page.locator('tr[data-entry="nightly_cleanup"]')).to_contain_text("30 2 * * *")
    shot(page, "recurring")

    # Busy: a running job with its runtime; then the worker is quieted from the page.
    running = SleepJob.perform_later(f"{key}:sleep", 3)
    page.click("a.aj-tab:has-text('Busy')")
    running_row = page.locator(f'#aj-running tr[data-job-id="{running.job_id}"]')
    process_row = page.locator(f'tr[data-process="{worker.process_id}"]')
    for _ in range(40):  # the job's start reaches the page with the worker's next heartbeat
        if running_row.count() and f"1/{worker.concurrency}" in process_row.inner_text():
            break
        page.wait_for_timeout(100)
        page.reload()
    expect(process_row).to_contain_text(f"1/{worker.concurrency}")
    expect(running_row.locator(".aj-runtime")).to_have_text(re.compile(r"^\d+\.\d s$"))
    shot(page, "busy")
    process_row.locator('button[value="quiet"]').click()
    expect(page.locator("ul.messagelist")).to_contain_text("it acts on its next heartbeat")
    wait_for(lambda: worker.quiet, timeout=10, what="the worker going quiet")
    # Quiet lets the running job finish.
    wait_for(lambda: redis.lrange(f"{key}:sleep", -1, -1)[0].startswith(b"done"), timeout=10, what="the running job finishing")
    page.reload()
    expect(page.locator(f'tr[data-process="{worker.process_id}"]')).to_contain_text("quiet")
    shot(page, "busy-quiet")
    assert DeadJob.objects.filter(job_id=job.job_id).count() == 0  # retried, so gone from the dead jobs
