"""Prefetch and hand-back order: what a worker holds beyond its running jobs, and where those
jobs go when it stops."""

import pytest
from django.conf import settings
from django.test import override_settings

from django_async_jobs.checks import check_settings
from django_async_jobs.serialization import decode_payload
from django_async_jobs.worker.launcher import Worker
from tests.helpers import fetch, wait_for
from tests.testapp.jobs import IncrJob, TraceJob


def queued(broker, queue="default"):
    return [decode_payload(raw)["jid"] for raw in broker.redis.zrange(broker.keys.queue(queue), 0, -1)]


def test_jobs_handed_back_keep_their_fetch_order_ahead_of_the_rest(broker):
    jobs = [IncrJob.perform_later(f"k{i}") for i in range(5)]
    fetch(broker, "p1", ["default"], 2)
    fetch(broker, "p1", ["default"], 1)
    assert queued(broker) == [j.job_id for j in jobs[3:]]
    assert broker.release("p1", max_recoveries=3) == (3, 0)
    assert queued(broker) == [j.job_id for j in jobs]


def test_recovered_jobs_also_keep_their_order(broker):
    jobs = [IncrJob.perform_later(f"k{i}") for i in range(4)]
    broker.heartbeat("gone", {"pid": 1}, ttl=60)
    fetch(broker, "gone", ["default"], 3)
    broker.redis.zadd(broker.keys.processes, {"gone": 0})  # its last beat, long ago
    assert broker.recover(timeout=1, max_recoveries=3) == (1, 3, 0)
    assert queued(broker) == [j.job_id for j in jobs]


@pytest.mark.parametrize(("prefetch", "held"), [(0, 2), (None, 4), (1, 3)])
def test_a_busy_worker_holds_its_running_jobs_plus_prefetch(broker, settings, prefix, prefetch, held):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "PREFETCH": prefetch}
    key, gate = f"{prefix}:trace", f"{prefix}:gate"
    for i in range(8):
        TraceJob.perform_later(key, f"j{i}", gate=gate)  # none ends before the gate opens
    worker = Worker(concurrency=2)
    worker.start()
    try:
        try:
            wait_for(lambda: broker.redis.llen(key) == 2, 30, "two jobs running")
            wait_for(lambda: len(broker.inflight(worker.process_id)) == held, 30, f"{held} jobs held")
            assert broker.queue_size("default") == 8 - held
        finally:
            worker.stop(timeout=0)
        # Stopping at once hands every held job back, the running ones too: none is lost.
        assert broker.queue_size("default") == 8
        assert broker.inflight(worker.process_id) == {}
    finally:
        broker.redis.rpush(gate, *[1] * 8)  # the two cut-off jobs' threads end


def test_a_bad_prefetch_fails_the_system_check():
    with override_settings(ASYNC_JOBS={**settings.ASYNC_JOBS, "PREFETCH": -1}):
        assert [e.id for e in check_settings() if e.id == "async_jobs.E009"] == ["async_jobs.E009"]
