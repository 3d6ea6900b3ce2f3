"""The outbox under faults, with real worker processes: Redis down across commits, relays
killed with -9 in a loop, the database out of reach while the relay runs.

Jobs record each run in Redis (``RecordJob``); a run that happened twice, or never, fails.
The worker subprocesses open the test database (SQLite or PostgreSQL) through DATABASE_URL.
"""

import json
import os
import random
import signal
import time
from functools import partial
from pathlib import Path

import pytest
from django.db import connection, transaction

from chaos.proxy import Cuttable, Proxy
from django_async_jobs.broker.client import get_broker
from django_async_jobs.models import OutboxJob
from tests.helpers import WorkerProcess, free_port, registered, wait_for, worker_env
from tests.testapp.jobs import RecordJob

pytestmark = pytest.mark.django_db(transaction=True)


class Rollback(Exception):
    pass


def database_url(settings_dict: dict, host: str | None = None, port: int | None = None) -> str:
    """The test database as a worker subprocess reaches it (PostgreSQL optionally through
    ``host:port``)."""
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    auth = settings_dict["USER"] + (f":{settings_dict['PASSWORD']}" if settings_dict["PASSWORD"] else "")
    host = host or settings_dict["HOST"] or "127.0.0.1"
    port = port or settings_dict["PORT"] or 5432
    return f"postgres://{auth}@{host}:{port}/{settings_dict['NAME']}"


@pytest.fixture
def workers(prefix, tmp_path):
    """Start runworker subprocesses on the test database; any left are killed after the test."""
    started = []

    def start(*args, redis_url=None, overrides=None, database=None):
        env = worker_env(prefix, redis_url, {"OUTBOX": True, **(overrides or {})})
        env["DATABASE_URL"] = database or database_url(connection.settings_dict)
        proc = WorkerProcess(list(args), env, tmp_path / f"worker-{len(started)}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.cleanup()


@pytest.fixture
def outbox_on(settings, prefix):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "OUTBOX": True}
    return settings


def runs(key: str) -> dict[str, int]:
    """Value -> how many times a job with it ran."""
    counts: dict[str, int] = {}
    for raw in get_broker().redis.lrange(key, 0, -1):
        value = json.loads(raw)["args"][0]
        counts[value] = counts.get(value, 0) + 1
    return counts


def settled(broker) -> bool:
    """Nothing left to relay or to run."""
    inflight = any(broker.redis.hlen(k) for k in broker.redis.scan_iter(f"{broker.keys.inflight_base}*"))
    return not OutboxJob.objects.exists() and broker.queue_size("default") == 0 and not inflight


def assert_each_ran_once(broker, key: str, expected: set[str], settle_for: float = 2.0) -> None:
    wait_for(lambda: set(runs(key)) >= expected, 90, "every committed job run")
    wait_for(lambda: settled(broker), 30, "the outbox and the queue empty")
    time.sleep(settle_for)  # a second push would run within this
    counts = runs(key)
    assert {v: n for v, n in counts.items() if n > 1} == {}, "jobs run twice"
    assert set(counts) == expected, f"unexpected: {set(counts) - expected}, missing: {expected - set(counts)}"


# -- Redis down across commits ---------------------------------------------------------------------


@pytest.fixture
def own_redis(redis_server, settings, prefix):
    original = settings.ASYNC_JOBS
    settings.ASYNC_JOBS = {**original, "REDIS_URL": redis_server.url, "OUTBOX": True}
    yield redis_server
    settings.ASYNC_JOBS = original  # the server goes before the prefix's clean-up


def test_redis_down_across_commits_then_back(own_redis, workers, prefix):
    key = f"{prefix}:runs"
    worker = workers(redis_url=own_redis.url)
    broker = get_broker()
    wait_for(lambda: registered(broker), 30, "the worker registers")
    own_redis.stop()
    committed: set[str] = set()
    for i in range(20):
        with transaction.atomic():
            RecordJob.perform_later(key, f"single-{i}")
            RecordJob.set(priority=5).perform_later(key, f"set-{i}")
            RecordJob.perform_bulk([(key, f"bulk-{i}-{n}") for n in range(50)])
        committed |= {f"single-{i}", f"set-{i}", *(f"bulk-{i}-{n}" for n in range(50))}
        with pytest.raises(Rollback), transaction.atomic():
            RecordJob.perform_later(key, f"rolled-back-{i}")
            RecordJob.perform_bulk([(key, f"rolled-back-{i}-{n}") for n in range(5)])
            raise Rollback
        RecordJob.perform_later(key, f"autocommit-{i}")  # Redis refuses: the outbox keeps it
        committed.add(f"autocommit-{i}")
    assert OutboxJob.objects.count() == len(committed)
    own_redis.start()
    assert_each_ran_once(broker, key, committed)
    assert worker.alive()


# -- relays killed with -9 in a loop ---------------------------------------------------------------


def test_relays_killed_mid_batch_lose_nothing_and_push_nothing_twice(broker, prefix, outbox_on, workers, tmp_path):
    key = f"{prefix}:runs"
    total = 10_000
    for start in range(0, total, 2500):
        with transaction.atomic():
            RecordJob.perform_bulk([(key, f"job-{n}") for n in range(start, start + 2500)])
    # One worker runs the jobs and never relays; the relays run nothing (their queue stays empty).
    workers(overrides={"OUTBOX": False})
    kills: list[int] = []
    rng = random.Random()

    def pushed_since(before: set, relay: WorkerProcess) -> bool:
        fresh = set(broker.redis.zrange(broker.keys.outbox_relayed, 0, -1)) - before
        return bool(fresh) or not OutboxJob.objects.exists() or not relay.alive()

    def deleted_below(remaining: int, relay: WorkerProcess) -> bool:
        return OutboxJob.objects.count() < remaining or not relay.alive()

    for _ in range(12):
        remaining = OutboxJob.objects.count()
        if remaining == 0:
            break
        before = set(broker.redis.zrange(broker.keys.outbox_relayed, 0, -1))  # a killed relay's ids
        relay = workers("-q", "low")
        if len(kills) % 2:
            # Right after one of its pushes (new ids recorded), most likely before the rows' delete.
            wait_for(partial(pushed_since, before, relay), 60, "a push", interval=0)
        else:
            wait_for(partial(deleted_below, remaining, relay), 60, "a delete")
            time.sleep(rng.uniform(0.0, 0.15))  # somewhere in a batch: reading, pushing or deleting
        os.killpg(relay.pid, signal.SIGKILL)
        relay.proc.wait(10)
        kills.append(OutboxJob.objects.count())
    assert any(0 < left < total for left in kills), f"no relay was killed while rows remained: {kills}"
    workers("-q", "low")  # the last relay finishes
    assert_each_ran_once(broker, key, {f"job-{n}" for n in range(total)})
    skipped = sum(p.read_text().count("not pushed again") for p in Path(tmp_path).glob("worker-*.log"))
    print(f"\n{len(kills)} relays killed, rows left at each kill: {kills}; batches found relayed already: {skipped}")


# -- the database out of reach ---------------------------------------------------------------------


class CuttableDatabase(Cuttable):
    """The test database as a worker subprocess reaches it, through a way the test can cut:
    PostgreSQL through a TCP proxy that closes every connection, SQLite through a symlink whose
    directory is renamed away (SQLite resolves the link: journals go next to the real file)."""

    def __init__(self, tmp_path: Path) -> None:
        settings_dict = connection.settings_dict
        self.proxy = None
        if settings_dict["ENGINE"].endswith("sqlite3"):
            self.dir = tmp_path / "db"
            self.dir.mkdir()
            (self.dir / "db.sqlite3").symlink_to(settings_dict["NAME"])
            self.url = f"sqlite:///{self.dir / 'db.sqlite3'}"
        else:
            port = free_port()
            self.proxy = Proxy((settings_dict["HOST"] or "127.0.0.1", int(settings_dict["PORT"] or 5432)), port)
            self.proxy.start()
            self.url = database_url(settings_dict, "127.0.0.1", port)


def test_the_relay_backs_off_while_the_database_is_away_and_resumes(broker, prefix, outbox_on, workers, tmp_path):
    key = f"{prefix}:runs"
    database = CuttableDatabase(tmp_path)
    worker = workers(database=database.url)
    with transaction.atomic():
        RecordJob.perform_later(key, "before")
    # The relay deletes a row after its push, so the job can run before its row is gone.
    wait_for(lambda: runs(key) == {"before": 1} and not OutboxJob.objects.exists(), 60, "the relay at work")
    database.cut()
    try:
        wait_for(lambda: "outbox relay (default): database unavailable" in worker.output(), 30, "the relay sees the cut")
        committed = {"before"}
        for i in range(5):
            with transaction.atomic():
                RecordJob.perform_bulk([(key, f"during-{i}-{n}") for n in range(200)])
            committed |= {f"during-{i}-{n}" for n in range(200)}
        time.sleep(2)
        assert OutboxJob.objects.count() == 1000 and set(runs(key)) == {"before"}  # nothing relayed meanwhile
    finally:
        database.restore()
    assert_each_ran_once(broker, key, committed)
    assert worker.alive()
