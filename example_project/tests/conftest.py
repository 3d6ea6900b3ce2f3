import functools
import os
import secrets
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connections

from deliveries.fake_carrier import CarrierControl, FakeCarrier
from deliveries.models import Payment, Recipient, Task
from django_async_jobs import testing
from django_async_jobs.broker.client import get_broker

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]


@pytest.fixture(autouse=True)
def prefix(settings):
    """A fresh Redis key prefix per test, deleted afterwards: never the demo's keys."""
    value = f"example_test_{secrets.token_hex(4)}"
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "KEY_PREFIX": value, "POLL_INTERVAL": 0.1}
    yield value
    get_broker().flush()


@pytest.fixture
def broker(prefix):
    return get_broker()


@pytest.fixture
def carrier(settings):
    """The fake carrier on a free port, with retry waits a fiftieth of the guide's. The timeout
    is short, yet long enough that an answer that is not meant to be slow always comes in time,
    however loaded the machine; a slow answer takes twice as long. It refuses calls past twice
    the project's own limit per second, as in the demo."""
    limit = settings.CARRIER_API["RATE_LIMIT"]
    server = FakeCarrier(port=0, slow_seconds=4.0, rate_limit=2 * limit).start()
    settings.CARRIER_API = {"URL": server.url, "TIMEOUT": 2.0, "RETRY_WAIT_SCALE": 0.02, "RATE_LIMIT": limit}
    yield CarrierControl(server.url)
    server.stop()


@pytest.fixture
def worker(broker, transactional_db):
    """A worker in this process on the test's prefix; its threads use their own connections, so
    the test's rows must be committed (``transactional_db``)."""
    from django_async_jobs.worker.launcher import Worker

    w = Worker()
    w.start()
    yield w
    w.stop(timeout=5)


@pytest.fixture
def wait_for() -> Callable[..., Any]:
    """``testing.wait_for`` with a minute's patience: it returns as soon as the job's effect is
    there, and a machine busy with other work can take far longer than the default 10 s."""
    return functools.partial(testing.wait_for, timeout=60.0)


@pytest.fixture
def recipient(db):
    return Recipient.objects.create(name="Ana", phone="+15550100001", email="ana@example.com")


@pytest.fixture
def task(recipient):
    return Task.objects.create(tracking_number="T-1", recipient=recipient)


@pytest.fixture
def payment(task):
    return Payment.objects.create(task=task, amount="19.90")


@pytest.fixture
def viewport() -> dict[str, int]:
    """The window of the ``page`` fixture; a test module overrides it for a size of its own."""
    return {"width": 1280, "height": 900}


@pytest.fixture
def page(monkeypatch, viewport) -> Iterator[Any]:
    """A page of Debian's Chromium driven by Playwright, which accepts the dashboard's
    confirmations. The test is skipped where either is missing: ``apt-get install -y chromium``
    and ``pip install playwright`` (never ``playwright install``)."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed: pip install playwright")
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium")
    # Playwright's sync API runs an event loop in this thread; the ORM calls the test makes
    # between browser steps are plain synchronous code, so Django's guard is lifted for them.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport=viewport)
        # Deadlines, not delays: a page load took over 15 s once on an overloaded 2-core machine.
        page.set_default_timeout(60_000)
        sync_api.expect.set_options(timeout=60_000)  # assertions too (5 s by default)
        page.on("dialog", lambda dialog: dialog.accept())
        yield page
        browser.close()
        # While Playwright runs, Django sees an event loop and keeps this thread's database
        # connections in storage of their own, which the test database teardown never sees.
        connections.close_all()
