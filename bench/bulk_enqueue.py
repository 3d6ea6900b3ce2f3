"""Time ``perform_bulk`` for 100,000 jobs against a real Redis and print the figure.

    python bench/bulk_enqueue.py [--jobs 100000] [--batch] [--redis redis://127.0.0.1:6379/0]

``--batch``: the jobs go in one ``Batch`` (``with batch.jobs():``), the creation time of a batch
of that size (the issue's figure is 200,000 jobs).

Besides the wall time it prints the CPU time this process and Redis spent (``INFO cpu``): on a
machine busy with other work the wall time stretches, the CPU each side needs much less.

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
    parser.add_argument("--batch", action="store_true", help="enqueue the jobs as one batch")
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

    from django_async_jobs import ApplicationJob, Batch
    from django_async_jobs.broker.client import get_broker

    class BenchJob(ApplicationJob):
        def perform(self, user_id: int, kind: str) -> None:
            pass

    broker = get_broker()
    items = [(i, "welcome") for i in range(options.jobs)]
    def redis_cpu() -> float:
        info = broker.redis.info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])

    try:
        redis_before, started, cpu_started = redis_cpu(), time.perf_counter(), time.process_time()
        if options.batch:
            batch = Batch(description="bench")
            with batch.jobs():
                BenchJob.perform_bulk(items)
        else:
            BenchJob.perform_bulk(items)
        elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu_started
        redis_spent = redis_cpu() - redis_before
        assert broker.queue_size("default") == options.jobs
        if options.batch:
            assert Batch.status(batch.bid)["total"] == options.jobs
    finally:
        broker.flush()
    print(
        f"perform_bulk{' in a batch' if options.batch else ''}: {options.jobs:,} jobs in {elapsed:.2f}s "
        f"({options.jobs / elapsed:,.0f} jobs/s, {len(range(0, options.jobs, 1000))} round trips); "
        f"CPU: this process {cpu:.2f}s, Redis {redis_spent:.2f}s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
