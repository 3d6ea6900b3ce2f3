"""Every dashboard page in a real browser at 400, 1,400 and 1,920 px, with a realistic load.

Queues of hundreds of jobs (some with long arguments), 64 scheduled jobs, retries with long
errors and tracebacks, dead jobs, two imports with their progress and errors, a worker process
holding jobs (some only fetched ahead), a paused queue. At each width no page scrolls sideways
(tables scroll in their own box); then an "all matching" action works from the page and the
overview updates itself while counters move. A screenshot of every page at 1,400 px goes to
example_project/test-artifacts/dashboard/ (docs/img/dashboard/ holds copies).

Needs ``apt-get install -y chromium`` and ``pip install playwright`` (never ``playwright install``).
"""

import json
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.utils import timezone

from deliveries.jobs import (
    ExternalApiJob,
    ImportJob,
    PaymentProcessingJob,
    SendNewsletterJob,
    TaskNotificationJob,
)
from django_async_jobs import api
from django_async_jobs.batches import Batch
from django_async_jobs.flow import RateLimit
from django_async_jobs.models import DeadJob, JobProgress
from django_async_jobs.serialization import encode_payload, new_job_id

SHOTS = Path(__file__).resolve().parent.parent / "test-artifacts" / "dashboard"
PASSWORD = "widths-test-pw"
WIDTHS = (400, 1400, 1920)
BASE = "/admin/django_async_jobs/dashboard/"
PROCESS = "web-1.example.internal:4242:7f3a"
LONG_ERROR = (
    "CarrierServerError: 503 Service Unavailable from https://carrier.example.com/api/v2/shipments/"
    + "TRACK-" + "0123456789" * 12 + " after 30.0 s; the gateway said: upstream connect error or disconnect/reset "
    "before headers. reset reason: connection termination"
)
TRACEBACK = "Traceback (most recent call last):\n" + "".join(
    f'  File "/srv/app/deliveries/jobs.py", line {100 + i}, in perform\n    response = self.client.put(url, json=body, timeout=30)\n'
    for i in range(25)
) + LONG_ERROR + "\n"

try:
    from playwright.sync_api import expect
except ImportError:  # pragma: no cover - the page fixture skips the test
    expect = None


def payload(job_class, args, kwargs=None, **extra):
    data = {"jid": new_job_id(), "job": job_class.job_name, "queue": job_class.queue_as, "args": args,
            "enqueued_at": time.time() - 400, **extra}
    if kwargs:
        data["kwargs"] = kwargs
    return encode_payload(data)


def seed(broker):
    """The load the pages are looked at with; returns the id of a retry with a long error."""
    r, k = broker.redis, broker.keys
    now = time.time()
    queued = {
        "integrations": [payload(ExternalApiJob, [i]) for i in range(150)],
        "notifications": [payload(TaskNotificationJob, [i], {"notification_type": "created"}) for i in range(100)],
        "critical": [payload(PaymentProcessingJob, [i]) for i in range(120)],
        "low": [payload(SendNewsletterJob, [list(range(i, i + 300)), "December issue: " + "x" * 400]) for i in range(80)],
    }
    for queue, members in queued.items():
        r.zadd(k.queue(queue), {m: 2**50 + i for i, m in enumerate(members)})
        r.sadd(k.queues, queue)
    r.sadd(k.paused, "low")
    r.zadd(k.schedule, {payload(TaskNotificationJob, [i], {"notification_type": "reminder"}, at=now + 60 * i): now + 60 * i
                        for i in range(1, 65)})
    retry_id = None
    retries = {}
    for i in range(40):
        member = payload(ExternalApiJob, [i, "https://carrier.example.com/api/v2/shipments/" + "T" * 200], executions=i % 5 + 1,
                         retries={"CarrierServerError": i % 5 + 1}, error_class="CarrierServerError",
                         error_message=LONG_ERROR, traceback=TRACEBACK)
        retry_id = retry_id or json.loads(member)["jid"]
        retries[member] = now + 30 + i
    r.zadd(k.retry, retries)
    died = timezone.now()
    DeadJob.objects.bulk_create([
        DeadJob(dead_id=f"dead{i}", job_id=f"deadjob{i}", job_class=ExternalApiJob.job_name, queue="integrations",
                arguments=[i, "T" * 300], kwargs={}, error_class="deliveries.carrier.CarrierServerError",
                error_message=LONG_ERROR, traceback=TRACEBACK, executions=6, died_at=died - timedelta(minutes=i),
                payload="{}", reason="retries_exhausted")
        for i in range(30)
    ])
    for n, status in enumerate(("processing", "completed_with_errors")):
        JobProgress.objects.create(
            job_id=f"import{n}", job_class=ImportJob.job_name, status=status, total=5000, processed=2500 + 2500 * n,
            percent=50.0 + 50 * n, error_count=120,
            error_details=[{"row": i, "error": "invalid phone number: " + "9" * 40} for i in range(120)],
        )
    info = {"host": "web-1.example.internal", "pid": 4242, "queues": "critical,default,notifications,integrations,bulk,scheduled,low",
            "concurrency": 3, "busy": 3, "quiet": 0, "started_at": now - 5000, "rss": 180 * 2**20}
    running = {}
    for i in range(5):  # three running, two fetched ahead
        field = f"{new_job_id()}:{i + 1}"
        r.hset(k.inflight(PROCESS), field, payload(ExternalApiJob, [i, "https://carrier.example.com/" + "p" * 200]))
        if i < 3:
            running[field] = now - 60 * (i + 1)
    broker.heartbeat(PROCESS, {**info, "running": json.dumps(running)}, ttl=3600)
    # Flow control: a concurrency limit with blocked jobs, rate limiters in use.
    limit = f"{ExternalApiJob.job_name}:{'ab12' * 10}"  # "<job name>:<SHA-1 of the key>"
    r.zadd(k.blocked, {limit: now * 1000})
    r.zadd(k.concurrency_blocked(limit), {payload(ExternalApiJob, [i]): now * 1000 + i for i in range(12)})
    r.hset(k.concurrency(limit), mapping={f"{new_job_id()}:1": f"{int(now * 1000) + 60000} {PROCESS}"})
    for _ in range(7):
        with RateLimit("window", "carrier-api", 100, 3600).within_limit():
            pass
    # Two batches: one with a callback, one cancelled.
    for n, description in enumerate(("Import of december-customers.csv, " + "chunk " * 30, "Nightly resync")):
        batch = Batch(description=description)
        batch.on("complete", SendNewsletterJob, [1, 2, 3], "report")
        with batch.jobs():
            for i in range(20):
                TaskNotificationJob.perform_later(i, notification_type="imported")
        if n:
            Batch.cancel(batch.bid)
    return retry_id


@pytest.fixture
def viewport():
    """The screenshots' width (the test then goes through every width)."""
    return {"width": 1400, "height": 900}


def overflow(page) -> int:
    """How many pixels the page is wider than the window (0: no sideways scrolling)."""
    return page.evaluate("document.documentElement.scrollWidth - window.innerWidth")


@pytest.mark.django_db(transaction=True)
def test_every_page_fits_every_width_and_works(live_server, broker, page):
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)
    User.objects.create_superuser("admin", "admin@example.com", PASSWORD)
    retry_id = seed(broker)
    api.mark_deploy("v2.4.1")
    page.goto(f"{live_server.url}/admin/")
    page.fill("#id_username", "admin")
    page.fill("#id_password", PASSWORD)
    page.click('input[type="submit"]')
    expect(page.locator("#content-main")).to_contain_text("Dashboard")

    dead = DeadJob.objects.order_by("died_at").first()
    progress = JobProgress.objects.get(job_id="import1")
    pages = {
        "overview": BASE, "queues": BASE + "queues/", "queue": BASE + "queues/low/", "busy": BASE + "busy/",
        "scheduled": BASE + "scheduled/", "retries": BASE + "retries/", "recurring": BASE + "recurring/",
        "blocked": BASE + "blocked/", "blocked-jobs": BASE + f"blocked/{ExternalApiJob.job_name}:{'ab12' * 10}/", "job": BASE + f"jobs/{retry_id}/", "search": BASE + "retries/?error=503&class=",
        "dead-jobs": "/admin/django_async_jobs/deadjob/", "dead-job": f"/admin/django_async_jobs/deadjob/{dead.pk}/change/",
        "batches": BASE + "batches/", "metrics": BASE + "metrics/?minutes=4320",
        "metrics-class": BASE + f"metrics/?minutes=4320&class={ExternalApiJob.job_name}", "progress": "/admin/django_async_jobs/jobprogress/",
        "progress-detail": f"/admin/django_async_jobs/jobprogress/{progress.pk}/change/",
    }
    too_wide = []
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})
        for name, path in pages.items():
            page.goto(live_server.url + path)
            expect(page.locator("#content")).to_be_visible()
            if overflow(page) > 0:
                too_wide.append(f"{name} at {width} px: {overflow(page)} px too wide")
            page.screenshot(path=str(SHOTS / (f"{name}.png" if width == 1400 else f"{name}-{width}.png")))
    assert not too_wide, too_wide

    # At 1,400 px, beside the admin's sidebar and filters, the dead list keeps its columns in its
    # box and gives the error room: no sideways scrolling there, a message of whole words a line.
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(live_server.url + pages["dead-jobs"])
    results = page.locator("#changelist .results")
    assert results.evaluate("e => e.scrollWidth - e.clientWidth") <= 0
    assert page.locator("#result_list td.field-error").first.evaluate("e => e.getBoundingClientRect().width") >= 250

    # A long value is cut to its column, and shown whole on a click.
    page.goto(f"{live_server.url}{BASE}retries/")
    cut = page.locator("td.aj-long .aj-cut").first
    assert cut.evaluate("e => e.scrollWidth > e.clientWidth")
    cut.click()
    expect(cut).to_have_class("aj-cut aj-whole")
    assert overflow(page) <= 0

    # An action: search the retries, then delete every match (not only this page's) at once.
    page.fill('input[name="error"]', "503 Service")
    page.click(".aj-search button")
    expect(page.locator(".aj-search-info")).to_contain_text("matching jobs")
    page.check(".aj-all-matching")
    page.click('.aj-actions button[value="delete"]')
    expect(page.locator("ul.messagelist")).to_contain_text("Deleted 40 jobs.")
    assert broker.redis.zcard(broker.keys.retry) == 0

    # The job page's own buttons: run a scheduled job now.
    [(member, _)] = broker.redis.zrange(broker.keys.schedule, 0, 0, withscores=True)
    scheduled_id = json.loads(member)["jid"]
    page.goto(f"{live_server.url}{BASE}jobs/{scheduled_id}/")
    expect(page.locator("#aj-places")).to_contain_text("scheduled")
    page.click("button.aj-job-one_enqueue")
    expect(page.locator("ul.messagelist")).to_contain_text("Enqueued 1 job to run now")
    page.goto(f"{live_server.url}{BASE}jobs/{scheduled_id}/")
    expect(page.locator("#aj-places")).to_contain_text("waiting in queue notifications")

    # Live: the overview follows the counters without a reload, and draws the realtime graph.
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(f"{live_server.url}{BASE}")
    expect(page.locator("#aj-no-process")).to_be_hidden()  # a process is alive
    page.select_option("#aj-refresh", "2")
    page.evaluate("window.notReloaded = true")
    expect(page.locator('[data-stat="processed"]')).to_have_text("0")
    broker.redis.incrby(broker.keys.stat("processed"), 25)
    expect(page.locator('[data-stat="processed"]')).to_have_text("25")
    broker.redis.incrby(broker.keys.stat("processed"), 10)
    expect(page.locator('[data-stat="processed"]')).to_have_text("35")
    expect(page.locator("#aj-realtime svg polyline")).to_have_count(2)
    expect(page.locator("#aj-chart svg text").first).to_be_visible()
    assert page.evaluate("window.notReloaded") is True
    assert page.locator("#aj-chart svg").get_attribute("preserveAspectRatio") is None

    # Dark mode: the admin's colour variables, the same layout.
    page.emulate_media(color_scheme="dark")
    for name in ("overview", "retries", "job"):
        page.goto(live_server.url + pages[name])
        assert overflow(page) <= 0
        page.screenshot(path=str(SHOTS / f"{name}-dark.png"))
    page.emulate_media(color_scheme="light")

    # Busy follows its processes too, without a reload.
    page.goto(f"{live_server.url}{BASE}busy/")
    page.evaluate("window.notReloaded = true")
    row = page.locator(f'tr[data-process="{PROCESS}"]')
    expect(row).to_contain_text("3/3")
    broker.redis.hset(broker.keys.process(PROCESS), "busy", 1)
    expect(row).to_contain_text("1/3")
    assert page.evaluate("window.notReloaded") is True
    page.screenshot(path=str(SHOTS / "overview-live.png"))
