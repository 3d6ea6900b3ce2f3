"""The transactional outbox against the direct path, on PostgreSQL and a real Redis.

    .venv/bin/python bench/outbox.py --database postgres://postgres@127.0.0.1:5432/bench_outbox

Measures, for the same job (``bench.djapp.jobs.IncrJob``):

1. enqueue rates (jobs/s), one at a time and in bulks of 1,000, outside a transaction (the
   direct push), with a transaction per job (or per bulk; also one that writes a row of its
   own, as an application's would, so that both modes pay its commit), and with all jobs in
   one transaction: for the on-commit push (``OUTBOX`` off) and for the outbox;
2. the relay's throughput (rows/s): a backlog of rows relayed by ``worker.relay.Relay``'s
   rounds in this process (read 1,000 rows, one Redis step, delete them);
3. enqueue-to-start latency (p50, p99) with an idle ``runworker -c 10`` (which relays, woken by
   LISTEN/NOTIFY): the direct push, the on-commit push and the outbox.

Run it with the project's virtualenv (``make install``: Django, psycopg). The database is created
when missing, migrated, and dropped at the end if this run created it; the keys go under a
prefix of the run's own, deleted at the end; the worker's log goes to
bench/results/outbox-worker.log. Prints a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == REPO / "bench":
    sys.path[0] = str(REPO)  # run as a script: the ``bench`` package from the repository root

BULK = 1000
ORDERS = "bench_outbox_order"  # the application's own rows, for the transactions that write one


def parse_args() -> argparse.Namespace:
    from bench.config import REDIS_DB, redis_url

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--database", required=True, help="a postgres:// URL (its database is created if missing)")
    parser.add_argument("--redis", default=redis_url(REDIS_DB["ours"]), help="the queues' Redis (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=10_000, help="jobs per enqueue measurement (default: %(default)s)")
    parser.add_argument("--relay-rows", type=int, default=50_000, help="rows of the relay backlog (default: %(default)s)")
    parser.add_argument("--latency-jobs", type=int, default=500, help="jobs per latency measurement (default: %(default)s)")
    parser.add_argument("--latency-rate", type=float, default=50.0, help="jobs/s during the latency test (default: %(default)s)")
    return parser.parse_args()


def ensure_database(url: str) -> bool:
    """Create the URL's database when it does not exist; True when this call created it."""
    import psycopg

    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            return False
        conn.execute(f'CREATE DATABASE "{name}"')
        return True


def drop_database(url: str) -> None:
    import psycopg
    from django.db import connections

    connections.close_all()
    parts = urlsplit(url)
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{parts.path.lstrip("/")}" WITH (FORCE)')


class Bench:
    def __init__(self, options: argparse.Namespace) -> None:
        from django.conf import settings

        from bench.djapp.jobs import IncrJob
        from django_async_jobs.broker.client import get_broker

        self.options = options
        self.job = IncrJob
        self.broker = get_broker()
        self.base = settings.ASYNC_JOBS
        self.rows: list[tuple[str, str]] = []

    # -- helpers -------------------------------------------------------------------------------

    def outbox(self, on: bool) -> object:
        from django.test import override_settings

        return override_settings(ASYNC_JOBS={**self.base, "OUTBOX": on})

    def clean(self) -> None:
        from django.db import connection

        from django_async_jobs.models import OutboxJob

        OutboxJob.objects.all().delete()
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {ORDERS}")
            cursor.execute(f"CREATE TABLE {ORDERS} (id bigserial PRIMARY KEY, note text)")
        self.broker.flush()

    def rate(self, label: str, on: bool, body: Callable[[int], None]) -> None:
        """Time ``body(n)`` with the outbox on or off; record jobs/s."""
        n = self.options.jobs
        self.clean()
        with self.outbox(on):
            started = time.perf_counter()
            body(n)
            elapsed = time.perf_counter() - started
        self.rows.append((label, f"{n / elapsed:,.0f} jobs/s"))
        print(f"  {label}: {n / elapsed:,.0f} jobs/s", flush=True)

    # -- 1. enqueue rates ----------------------------------------------------------------------

    def enqueue_rates(self) -> None:
        from django.db import connection, transaction

        job = self.job

        def autocommit(n: int) -> None:
            for _ in range(n):
                job.perform_later(0.0)

        def per_job(n: int) -> None:
            for _ in range(n):
                with transaction.atomic():
                    job.perform_later(0.0)

        def per_job_with_a_row(n: int) -> None:  # as an application does: the job's own data too
            for _ in range(n):
                with transaction.atomic(), connection.cursor() as cursor:
                    cursor.execute(f"INSERT INTO {ORDERS} (note) VALUES ('an order')")
                    job.perform_later(0.0)

        def one_transaction(n: int) -> None:
            with transaction.atomic():
                for _ in range(n):
                    job.perform_later(0.0)

        def bulks(n: int) -> None:
            for start in range(0, n, BULK):
                job.perform_bulk([(0.0,)] * min(BULK, n - start))

        def bulk_per_transaction(n: int) -> None:
            for start in range(0, n, BULK):
                with transaction.atomic():
                    job.perform_bulk([(0.0,)] * min(BULK, n - start))

        def bulks_in_one_transaction(n: int) -> None:
            with transaction.atomic():
                bulks(n)

        print("enqueue rates", flush=True)
        self.rate("one at a time, no transaction: direct push", False, autocommit)
        self.rate("one at a time, a transaction per job: on-commit push", False, per_job)
        self.rate("one at a time, a transaction per job: outbox", True, per_job)
        self.rate("one at a time, a transaction per job that also writes a row: on-commit push", False, per_job_with_a_row)
        self.rate("one at a time, a transaction per job that also writes a row: outbox", True, per_job_with_a_row)
        self.rate("one at a time, all in one transaction: on-commit push", False, one_transaction)
        self.rate("one at a time, all in one transaction: outbox", True, one_transaction)
        self.rate(f"bulks of {BULK:,}, no transaction: direct push", False, bulks)
        self.rate(f"bulks of {BULK:,}, a transaction per bulk: on-commit push", False, bulk_per_transaction)
        self.rate(f"bulks of {BULK:,}, a transaction per bulk: outbox", True, bulk_per_transaction)
        self.rate(f"bulks of {BULK:,}, all in one transaction: on-commit push", False, bulks_in_one_transaction)
        self.rate(f"bulks of {BULK:,}, all in one transaction: outbox", True, bulks_in_one_transaction)

    # -- 2. relay throughput -------------------------------------------------------------------

    def relay_throughput(self) -> None:
        from django.db import transaction

        from django_async_jobs.conf import get_settings
        from django_async_jobs.models import OutboxJob
        from django_async_jobs.worker.relay import Relay

        rows = self.options.relay_rows
        self.clean()
        with self.outbox(True), transaction.atomic():
            for start in range(0, rows, BULK):
                self.job.perform_bulk([(0.0,)] * min(BULK, rows - start))
        relay = Relay(self.broker, "default", get_settings(), threading.Event(), f"bench-{os.getpid()}")
        started = time.perf_counter()
        while relay.round():
            pass
        elapsed = time.perf_counter() - started
        relay.stopped.set()
        relay._finish()
        assert not OutboxJob.objects.exists() and self.broker.queue_size("default") == rows
        label = f"relay: a backlog of {rows:,} rows to Redis"
        self.rows.append((label, f"{rows / elapsed:,.0f} rows/s"))
        print(f"relay throughput: {rows / elapsed:,.0f} rows/s", flush=True)

    # -- 3. latency ----------------------------------------------------------------------------

    def latency(self) -> None:
        from django.db import transaction

        from bench.config import COUNTER_KEY, FIRST_KEY, LATENCY_KEY, REDIS_DB, RESULTS_DIR
        from bench.jobbody import client
        from bench.metrics import percentile

        self.clean()
        ledger = client(REDIS_DB["ours"])
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        log = open(RESULTS_DIR / "outbox-worker.log", "wb")  # noqa: SIM115 - the worker writes to it
        worker = subprocess.Popen(
            [sys.executable, "-m", "django", "runworker", "-c", "10"], env=env, cwd=REPO,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            lease = self.broker.keys.outbox_lease("default")
            deadline = time.monotonic() + 60
            while not (self.broker.redis.zcard(self.broker.keys.processes) and self.broker.redis.exists(lease)):
                if time.monotonic() > deadline or worker.poll() is not None:
                    raise RuntimeError(f"the worker did not start; see {RESULTS_DIR / 'outbox-worker.log'}")
                time.sleep(0.1)
            time.sleep(1.0)  # its relay listens by now
            job = self.job

            def direct() -> None:
                job.perform_later(time.time())

            def in_transaction() -> None:
                with transaction.atomic():
                    job.perform_later(time.time())

            print("enqueue-to-start latency", flush=True)
            for label, on, enqueue in (
                ("latency: direct push (no transaction)", False, direct),
                ("latency: on-commit push", False, in_transaction),
                ("latency: outbox, relay woken by NOTIFY", True, in_transaction),
            ):
                ledger.delete(LATENCY_KEY, COUNTER_KEY, FIRST_KEY)
                count = self.options.latency_jobs
                gap = 1.0 / self.options.latency_rate
                with self.outbox(on):
                    next_at = time.perf_counter()
                    for _ in range(count):
                        enqueue()
                        next_at += gap
                        time.sleep(max(0.0, next_at - time.perf_counter()))
                deadline = time.monotonic() + 60
                while int(ledger.get(COUNTER_KEY) or 0) < count and time.monotonic() < deadline:
                    time.sleep(0.05)
                values = [float(v) * 1000 for v in ledger.lrange(LATENCY_KEY, 0, -1)]
                p50, p99 = percentile(values, 50), percentile(values, 99)
                self.rows.append((label, f"p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(values)} jobs)"))
                print(f"  {label}: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({len(values)} of {count} jobs)", flush=True)
            ledger.delete(LATENCY_KEY, COUNTER_KEY, FIRST_KEY)
        finally:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
            log.close()

    def table(self) -> str:
        lines = ["| measurement | result |", "|---|---:|"]
        lines += [f"| {label} | {value} |" for label, value in self.rows]
        return "\n".join(lines)


def main() -> int:
    options = parse_args()
    if not options.database.startswith(("postgres://", "postgresql://")):
        raise SystemExit("--database must be a postgres:// URL: the outbox's figures are PostgreSQL's")
    os.environ.update({
        "DJANGO_SETTINGS_MODULE": "bench.djproject.outbox_settings",
        "BENCH_OUTBOX_DATABASE": options.database,
        "BENCH_OUTBOX_REDIS": options.redis,
        "BENCH_OUTBOX_PREFIX": f"bench_outbox_{secrets.token_hex(4)}",
    })
    created = ensure_database(options.database)
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    call_command("migrate", verbosity=0)
    bench = Bench(options)
    try:
        bench.enqueue_rates()
        bench.relay_throughput()
        bench.latency()
    finally:
        bench.clean()
        with connection.cursor() as cursor:
            cursor.execute(f"DROP TABLE IF EXISTS {ORDERS}")
        if created:
            drop_database(options.database)
    print()
    print(bench.table())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
