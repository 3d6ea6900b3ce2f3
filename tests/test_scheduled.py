"""Scheduled jobs run at their time: never before, and within a second after, with a worker up."""

import time
from datetime import timedelta

from django.utils import timezone

from tests.helpers import wait_for
from tests.testapp.jobs import StampJob


def started_at(broker, key: str, timeout: float = 30.0) -> float:
    return float(wait_for(lambda: broker.redis.lindex(key, 0), timeout, "the scheduled job to start"))


def test_wait_runs_on_time(worker, broker, prefix):
    key = f"{prefix}:stamp"
    job = StampJob.set(wait=0.5).perform_later(key)
    due = job.scheduled_at
    assert broker.redis.zcard(broker.keys.schedule) == 1
    assert broker.queue_size("default") == 0
    start = started_at(broker, key)
    assert start >= due - 0.005, "ran before its time"
    assert start - due < 1.0
    assert broker.redis.zcard(broker.keys.schedule) == 0


def test_wait_until_runs_on_time(worker, broker, prefix):
    key = f"{prefix}:stamp"
    at = timezone.now() + timedelta(seconds=0.6)
    job = StampJob.set(wait_until=at).perform_later(key)
    assert job.scheduled_at == at.timestamp()
    start = started_at(broker, key)
    assert at.timestamp() - 0.005 <= start < at.timestamp() + 1.0


def test_scheduled_jobs_run_in_due_order(worker, broker, prefix):
    key = f"{prefix}:stamp"
    keys = [f"{key}:{i}" for i in range(3)]
    # Enqueued latest-first: the schedule, not the enqueue order, decides.
    for k, wait in zip(keys, (0.9, 0.6, 0.3), strict=True):
        StampJob.set(wait=wait).perform_later(k)
    starts = [started_at(broker, k) for k in keys[::-1]]
    assert starts == sorted(starts)


def test_past_wait_until_runs_at_once(worker, broker, prefix):
    key = f"{prefix}:stamp"
    enqueued = time.time()
    StampJob.set(wait_until=timezone.now() - timedelta(hours=1)).perform_later(key)
    assert started_at(broker, key) - enqueued < 1.0


def test_scheduled_job_waits_for_a_worker(broker, prefix):
    """Without a worker nothing moves; the job is still there, with its time, when one comes."""
    from django_async_jobs.worker.launcher import Worker

    key = f"{prefix}:stamp"
    job = StampJob.set(wait=0.2).perform_later(key)
    time.sleep(0.4)
    assert broker.redis.zcard(broker.keys.schedule) == 1
    w = Worker()
    w.start()
    try:
        start = started_at(broker, key)
    finally:
        w.stop(timeout=2)
    assert start > job.scheduled_at
