"""``async def perform`` jobs: awaited on the worker's event loop, holding no processor thread."""

import asyncio
import json
import threading

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import User
from django.db.backends.signals import connection_created

from django_async_jobs import ApplicationJob, around_perform, before_perform
from django_async_jobs.broker.client import get_broker
from django_async_jobs.worker.launcher import Worker
from tests.helpers import wait_for
from tests.testapp.integration_jobs import FailingAsyncJob, NoteJob, SlowAsyncJob


class CallbackAsyncJob(ApplicationJob):
    @before_perform
    def note_before(self):
        get_broker().redis.rpush(self.arguments[0], "before")

    async def perform(self, key):
        await asyncio.sleep(0)
        get_broker().redis.rpush(key, "perform")
        return "done"


class AroundAsyncJob(ApplicationJob):
    @around_perform
    def wrap(self, proceed):
        get_broker().redis.rpush(self.arguments[0], "around")
        return proceed()

    async def perform(self, key):
        get_broker().redis.rpush(key, "perform")


class CountUsersAsyncJob(ApplicationJob):
    """Queries through the async ORM; notes the thread where its query ran."""

    async def perform(self, key):
        await User.objects.acount()
        get_broker().redis.rpush(key, await sync_to_async(threading.get_ident)())


def events(broker, key):
    return [item.decode() for item in broker.redis.lrange(key, 0, -1)]


def test_perform_now_runs_an_async_job_to_completion(broker, prefix):
    assert SlowAsyncJob.perform_now(f"{prefix}:k", 0.01) == 0.01
    assert [e.split(":")[0] for e in events(broker, f"{prefix}:k")] == ["start", "done"]


def test_slow_async_jobs_do_not_hold_the_only_thread(broker, prefix, one_thread_worker):
    key, gate = f"{prefix}:k", f"{prefix}:gate"
    for _ in range(3):
        SlowAsyncJob.perform_later(key, 30, gate)  # none ends before the test sets the gate
    NoteJob.perform_later(f"{prefix}:notes", "sync")
    wait_for(lambda: broker.redis.llen(f"{prefix}:notes") == 1, 30, "the sync job")
    # the sync job ran on the single thread while three async jobs were still waiting
    assert one_thread_worker.event_loop.running == 3
    wait_for(lambda: [e.split(":")[0] for e in events(broker, key)] == ["start"] * 3, 30, "three async starts")
    broker.redis.set(gate, 1)
    wait_for(lambda: len(events(broker, key)) == 6, 30, "three async ends")
    starts = [float(e.split(":")[1]) for e in events(broker, key) if e.startswith("start")]
    dones = [float(e.split(":")[1]) for e in events(broker, key) if e.startswith("done")]
    assert max(starts) < min(dones)  # all three were in flight together
    wait_for(lambda: broker.stat("processed") == 4)
    assert broker.inflight(one_thread_worker.process_id) == {}


def test_an_async_failure_goes_through_the_retry_rules(broker, prefix, one_thread_worker):
    job = FailingAsyncJob.perform_later(f"{prefix}:count")
    [entry] = wait_for(lambda: broker.redis.zrange(broker.keys.retry, 0, -1))
    payload = json.loads(entry)
    assert payload["jid"] == job.job_id
    assert payload["executions"] == 1
    assert payload["error_class"] == "Flaky"
    assert broker.inflight(one_thread_worker.process_id) == {}


def test_before_perform_callbacks_run_for_loop_jobs(broker, prefix, one_thread_worker):
    CallbackAsyncJob.perform_later(f"{prefix}:k")
    assert wait_for(lambda: events(broker, f"{prefix}:k") if len(events(broker, f"{prefix}:k")) == 2 else None) == [
        "before", "perform",
    ]


def test_around_perform_async_jobs_still_run_on_a_thread(broker, prefix, one_thread_worker):
    AroundAsyncJob.perform_later(f"{prefix}:k")
    wait_for(lambda: len(events(broker, f"{prefix}:k")) == 2)
    assert events(broker, f"{prefix}:k") == ["around", "perform"]
    assert one_thread_worker.event_loop._loop is None  # never needed the loop


def test_stop_hands_back_an_unfinished_async_job(broker, prefix, settings):
    worker = Worker(concurrency=1)
    worker.start()
    SlowAsyncJob.perform_later(f"{prefix}:k", 30)
    wait_for(lambda: events(broker, f"{prefix}:k"))
    worker.stop(timeout=0.3)
    assert broker.queue_size("default") == 1  # back in its queue for another worker
    assert broker.stat("processed") == 0


def test_async_concurrency_bounds_jobs_on_the_loop(broker, prefix, settings):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "ASYNC_CONCURRENCY": 1}
    worker = Worker(concurrency=2)
    worker.start()
    try:
        key = f"{prefix}:k"
        SlowAsyncJob.perform_later(key, 0.3)
        SlowAsyncJob.perform_later(key, 0.3)
        wait_for(lambda: len(events(broker, key)) == 4, 30, "both async jobs")
    finally:
        worker.stop(timeout=2)
    assert [e.split(":")[0] for e in events(broker, key)] == ["start", "done", "start", "done"]


def test_async_concurrency_is_checked(settings):
    from django_async_jobs.checks import check_settings

    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "ASYNC_CONCURRENCY": 0}
    assert [(e.id, e.msg) for e in check_settings() if "ASYNC_CONCURRENCY" in e.msg] == [
        ("async_jobs.E004", "ASYNC_JOBS['ASYNC_CONCURRENCY'] must be an integer of at least 1, got 0."),
    ]


@pytest.mark.django_db(transaction=True)
def test_database_connections_an_async_job_opened_are_closed_after_it(broker, prefix, one_thread_worker):
    """With CONN_MAX_AGE = 0 each job gets a fresh connection: one left open by the async ORM
    would be reused by the next job forever, broken or not (and keep its session open)."""
    opened = []

    def note(sender, connection, **kwargs):
        opened.append(threading.get_ident())

    connection_created.connect(note)
    try:
        for n in range(2):
            CountUsersAsyncJob.perform_later(f"{prefix}:orm")
            wait_for(lambda n=n: broker.stat("processed") == n + 1, what=f"async job {n + 1} settled")
    finally:
        connection_created.disconnect(note)
    orm_threads = {int(ident) for ident in broker.redis.lrange(f"{prefix}:orm", 0, -1)}
    assert len(orm_threads) == 1  # asgiref's one thread for sync code
    assert opened.count(orm_threads.pop()) == 2  # closed after the first job, opened again
