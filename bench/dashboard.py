"""Server time of every dashboard page with a large load: 100,000 queued, 10,000 scheduled,
10,000 retries, 10,000 dead jobs, 1,000 batches and 72 hours of metrics of 8 job classes (the
bar: under 100 ms a page).

    .venv/bin/python bench/dashboard.py [--runs 7] [--queued 100000] [--sets 10000] [--dead 10000]
        [--batches 1000] [--classes 8]

Uses the test suite's Django settings (tests/settings.py: the admin, the dashboard, SQLite in a
temporary file, or DATABASE_URL) with a key prefix of the run's own, deleted at the end; the
load and the timing are the suite's bar's (tests/dashboard_load.py). Each page is rendered once
to warm up, then ``--runs`` times with Django's test client: the whole request (view, Redis,
database, template), measured in this process. Prints a Markdown table (fastest and median wall
time, and the CPU time of the fastest) for docs/dashboard.md, with the load average.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
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
    parser.add_argument("--batches", type=int, default=1_000, help="batches of 20 jobs (in queue 'batches')")
    parser.add_argument("--classes", type=int, default=8, help="job classes with 72 hours of metrics")
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

    from tests.dashboard_load import pages, render_times, seed

    started = time.perf_counter()
    seed(broker, args.queued, args.sets, args.dead, batches=args.batches, metric_classes=args.classes)
    seeded = time.perf_counter() - started
    user = User.objects.filter(username="bench").first() or User.objects.create_superuser("bench", "b@example.com", None)
    client = Client()
    client.force_login(user)
    rows = []
    for name, url in pages(broker).items():
        fastest, median, cpu = render_times(client, url, args.runs)
        rows.append(f"| {name} | {fastest:.1f} | {median:.1f} | {cpu:.1f} |")
    load = os.getloadavg()[0] / (os.cpu_count() or 1)
    return "\n".join([
        f"{args.queued:,} queued, {args.sets:,} scheduled, {args.sets:,} retries, {args.dead:,} dead, "
        f"{args.batches:,} batches, {args.classes} classes' metrics (seeded in {seeded:.0f} s); "
        f"{args.runs} renders a page; load {load:.1f} per core (1-minute average {os.getloadavg()[0]:.2f})",
        "",
        "| page | fastest (ms) | median (ms) | CPU of the fastest (ms) |",
        "|---|---:|---:|---:|",
        *rows,
    ])


if __name__ == "__main__":
    main()
