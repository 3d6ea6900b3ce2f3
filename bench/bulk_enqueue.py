"""Time ``perform_bulk`` for 100,000 jobs against a real Redis and print the figure.

    python bench/bulk_enqueue.py [--jobs 100000] [--redis redis://127.0.0.1:6379/0]

Uses its own key prefix and deletes its keys afterwards.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

import django
from django.conf import settings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    options = parser.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    prefix = f"bench_bulk_{secrets.token_hex(4)}"
    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django_async_jobs"],
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        USE_TZ=True,
        ASYNC_JOBS={"REDIS_URL": options.redis, "KEY_PREFIX": prefix},
    )
    django.setup()

    from django_async_jobs import ApplicationJob
    from django_async_jobs.broker.client import get_broker

    class BenchJob(ApplicationJob):
        def perform(self, user_id: int, kind: str) -> None:
            pass

    broker = get_broker()
    items = [(i, "welcome") for i in range(options.jobs)]
    try:
        started = time.perf_counter()
        BenchJob.perform_bulk(items)
        elapsed = time.perf_counter() - started
        assert broker.queue_size("default") == options.jobs
    finally:
        broker.flush()
    print(
        f"perform_bulk: {options.jobs:,} jobs in {elapsed:.2f}s "
        f"({options.jobs / elapsed:,.0f} jobs/s, {len(range(0, options.jobs, 1000))} round trips)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
