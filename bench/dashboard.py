"""Server time of every dashboard page with a large load: 100,000 queued, 10,000 scheduled,
10,000 retries and 10,000 dead jobs (the bar: under 100 ms a page).

    .venv/bin/python bench/dashboard.py [--runs 7] [--queued 100000] [--sets 10000] [--dead 10000]

Uses the test suite's Django settings (tests/settings.py: the admin, the dashboard, SQLite in a
temporary file, or DATABASE_URL) with a key prefix of the run's own, deleted at the end. Each page
is rendered once to warm up, then ``--runs`` times with Django's test client: the whole request
(view, Redis, database, template), measured in this process. Prints a Markdown table (fastest and
median wall time, and the CPU time of the fastest) for docs/dashboard.md.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == REPO / "bench":
    sys.path[0] = str(REPO)  # run as a script: the repository root, for the ``tests`` settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--queued", type=int, default=100_000)
    parser.add_argument("--sets", type=int, default=10_000, help="scheduled jobs, and retries")
    parser.add_argument("--dead", type=int, default=10_000)
    args = parser.parse_args()

    workdir = tempfile.mkdtemp(prefix="bench-dashboard-")
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{workdir}/db.sqlite3")
    os.environ["ASYNC_JOBS_KEY_PREFIX"] = f"bench_dashboard_{secrets.token_hex(4)}"
    os.environ["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    import django

    django.setup()
    from django.core.management import call_command
    from django.test.utils import setup_test_environment

    setup_test_environment()  # the test client's host, "testserver", is allowed

    call_command("migrate", verbosity=0)
    from django_async_jobs.broker.client import get_broker

    broker = get_broker()
    try:
        print(measure(broker, args))
    finally:
        broker.flush()


def measure(broker, args) -> str:
    from django.contrib.auth.models import User
    from django.test import Client
    from django.urls import reverse

    from django_async_jobs import api
    from django_async_jobs.models import DeadJob
    from django_async_jobs.serialization import encode_payload, new_job_id
    from tests.testapp.jobs import IncrJob

    def payload(i: int, **extra: object) -> str:
        return encode_payload({"jid": new_job_id(), "job": IncrJob.job_name, "queue": "default",
                               "args": [f"customer-{i}@example.com", i], "enqueued_at": time.time(), **extra})

    started = time.perf_counter()
    for start in range(0, args.queued, 5000):  # the real push step, 5,000 payloads per call
        broker.push([payload(i) for i in range(start, min(start + 5000, args.queued))])
    now = time.time()
    for key in (broker.keys.schedule, broker.keys.retry):
        broker.redis.zadd(key, {
            payload(i, error_class="RuntimeError", error_message=f"boom {i}", retry_count=3): now + 60 + i
            for i in range(args.sets)
        })
    died = datetime.now(UTC)
    DeadJob.objects.bulk_create(
        [DeadJob(dead_id=f"d{i}", job_id=f"j{i}", job_class=IncrJob.job_name, queue="default", died_at=died,
                 reason="retries_exhausted", error_class="RuntimeError", payload=payload(i)) for i in range(args.dead)],
        batch_size=2000,
    )
    seeded = time.perf_counter() - started
    user = User.objects.filter(username="bench").first() or User.objects.create_superuser("bench", "b@example.com", None)
    client = Client()
    client.force_login(user)
    [retry] = api.page_of(broker.keys.retry, 5000, 1).entries  # one in the middle of the set
    [queued] = api.page_of(broker.keys.queue("default"), 2000, 1).entries
    job_page = reverse("admin:async_jobs_job", args=[retry.job_id])
    pages = {
        "overview": reverse("admin:async_jobs_overview"),
        "stats.json (live refresh)": reverse("admin:async_jobs_stats"),
        "queues": reverse("admin:async_jobs_queues"),
        "queue, page 1": reverse("admin:async_jobs_queue", args=["default"]),
        "queue, page 4,000": reverse("admin:async_jobs_queue", args=["default"]) + "?page=4000",
        "queue, argument search": reverse("admin:async_jobs_queue", args=["default"]) + "?q=customer-99999@",
        "busy": reverse("admin:async_jobs_busy"),
        "scheduled, page 200": reverse("admin:async_jobs_scheduled") + "?page=200",
        "retries": reverse("admin:async_jobs_retries"),
        "retries, error search": reverse("admin:async_jobs_retries") + "?error=boom 9999",
        "recurring": reverse("admin:async_jobs_recurring"),
        "limits": reverse("admin:async_jobs_blocked"),
        "job page, from a list": f"{job_page}?where=retries&ref={retry.ref}",
        "job page, by id alone (scans every set)": reverse("admin:async_jobs_job", args=[queued.job_id]),
        "dead jobs (DeadJob admin)": reverse("admin:django_async_jobs_deadjob_changelist"),
    }
    rows = []
    for name, url in pages.items():
        assert client.get(url).status_code == 200, url  # warm-up: templates, connections
        wall, cpu = [], []
        for _ in range(args.runs):
            t0, c0 = time.perf_counter(), time.process_time()
            response = client.get(url)
            wall.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
            assert response.status_code == 200, url
        fastest = min(range(args.runs), key=wall.__getitem__)
        rows.append(f"| {name} | {wall[fastest]:.1f} | {statistics.median(wall):.1f} | {cpu[fastest]:.1f} |")
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    return "\n".join([
        f"{args.queued:,} queued, {args.sets:,} scheduled, {args.sets:,} retries, {args.dead:,} dead "
        f"(seeded in {seeded:.0f} s); {args.runs} renders a page; load {load:.1f} per core",
        "",
        "| page | fastest (ms) | median (ms) | CPU of the fastest (ms) |",
        "|---|---:|---:|---:|",
        *rows,
    ])


if __name__ == "__main__":
    main()
