"""The issue's bar: every dashboard page renders in under 100 ms with 100,000 jobs in a queue and
10,000 dead jobs (plus 10,000 scheduled, 10,000 retries, 30 batches and 72 hours of metrics of 8
classes busy every minute), a job's page opened by its id alone among them. The load and the timing are bench/dashboard.py's (tests/dashboard_load.py).

Measured with the Django test client, seven renders per page after a warm-up: the wall time of
the whole request (view, Redis, database, templates) and the CPU time this process spent on it.
The bar is held on the fastest render's wall time while the machine has a core to spare; under
heavier load (other suites on a shared 2-core machine) wall times measure the queue for a core,
so the bar is then held on CPU time, and wall time only has to stay under a few times the bar,
which still catches a page that reads a whole queue or scans the dead jobs. Every figure goes to
test-artifacts/dashboard-timings.txt.
"""

import os
from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.urls import reverse

from django_async_jobs.models import DeadJob
from tests.dashboard_load import pages, render_times, seed

QUEUED = 100_000
METRIC_CLASSES = 8
DEAD = 10_000
IN_SETS = 10_000
BUDGET_MS = 100
LOADED_LIMIT_MS = 400  # wall-time bound while the machine is overloaded
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.mark.django_db
def test_pages_render_in_under_100ms_with_large_sets(client, broker):
    seed(broker, QUEUED, IN_SETS, DEAD, batches=30, metric_classes=METRIC_CLASSES)
    assert broker.queue_size("default") == QUEUED and DeadJob.objects.count() == DEAD
    client.force_login(User.objects.create_superuser("root", "root@example.com", None))
    urls = pages(broker)
    urls["queue clear confirm"] = reverse("admin:async_jobs_queue_clear", args=["default"])
    timings = {name: render_times(client, url, 7) for name, url in urls.items()}

    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    report = "\n".join(
        f"{name:32} fastest {best:6.1f} ms   median {median:6.1f} ms   cpu {cpu:6.1f} ms"
        for name, (best, median, cpu) in timings.items()
    )
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "dashboard-timings.txt").write_text(
        f"{QUEUED} queued, {DEAD} dead, {IN_SETS} scheduled, {IN_SETS} retries, 72 h of metrics of "
        f"{METRIC_CLASSES} classes; 7 renders per page; "
        f"load {load:.1f} per core\n{report}\n"
    )
    print("\n" + report)
    assert not [n for n, (_, _, cpu) in timings.items() if cpu >= BUDGET_MS], f"CPU over {BUDGET_MS} ms:\n{report}"
    wall_limit = BUDGET_MS if load < 0.9 else LOADED_LIMIT_MS
    slow = [name for name, (best, _, _) in timings.items() if best >= wall_limit]
    assert not slow, f"pages over {wall_limit} ms (load {load:.1f} per core):\n{report}"
