"""Unique jobs on a real Redis: each lock mode, conflicts, TTLs, races and a SIGKILLed worker."""

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_async_jobs import ApplicationJob
from django_async_jobs.locks import LockConflict
from django_async_jobs.worker.launcher import Worker
from tests.helpers import wait_for
from tests.testapp.unique_jobs import (
    ExpiringJob,
    FailingUniqueJob,
    RaisingUniqueJob,
    ShortTtlUntilExecutedJob,
    ShortTtlWhileExecutingJob,
    UntilAndWhileExecutingJob,
    UntilExecutedJob,
    UntilExecutingJob,
    WhileExecutingDropJob,
    WhileExecutingJob,
)

ROOT = Path(__file__).resolve().parent.parent



@pytest.fixture
def key(prefix):
    return f"{prefix}:effects"


def events(broker, key):
    return [e.decode().rsplit(":", 1)[0] if e.startswith(b"start:") else e.decode()
            for e in broker.redis.lrange(key, 0, -1)]


def _lock_keys(job):
    from django_async_jobs.locks import payload_lock

    return payload_lock(job)


def open_gate(broker, gate):
    broker.redis.rpush(gate, 1)


def queued(broker, queue="default"):
    return broker.queue_size(queue)


def test_until_executing_allows_a_new_job_once_the_first_starts(broker, key):
    first = UntilExecutingJob.perform_later(key, "a", f"{key}:gate")
    second = UntilExecutingJob.perform_later(key, "b")
    assert first and first.successfully_enqueued
    assert not second and second.successfully_enqueued is False
    assert queued(broker) == 1
    lock = _lock_keys(first)["key"]
    assert broker.redis.get(lock) == first.job_id.encode()
    assert 3590_000 < broker.redis.pttl(lock) <= 3600_000

    w = Worker()
    w.start()
    try:
        wait_for(lambda: events(broker, key) == ["start:a"])
        assert broker.redis.get(lock) is None  # released when the worker started it
        third = UntilExecutingJob.perform_later(key, "c")
        assert third
        open_gate(broker, f"{key}:gate")
        # "c" may start on another thread before "a" ends: only their own order is given.
        wait_for(lambda: sorted(events(broker, key)) == ["done:a", "done:c", "start:a", "start:c"], 30, "both ran")
        assert events(broker, key)[0] == "start:a"
    finally:
        w.stop(timeout=2)


def test_until_executed_holds_the_lock_until_the_job_finishes(broker, worker, key):
    gate = f"{key}:gate"
    first = UntilExecutedJob.perform_later(key, "a", gate)
    lock = _lock_keys(first)["key"]
    wait_for(lambda: events(broker, key) == ["start:a"])
    assert broker.redis.get(lock) == first.job_id.encode()
    assert not UntilExecutedJob.perform_later(key, "b")  # still running: still locked
    open_gate(broker, gate)
    wait_for(lambda: broker.redis.get(lock) is None)  # released by the settle step
    assert events(broker, key) == ["start:a", "done:a"]
    assert UntilExecutedJob.perform_later(key, "c")
    wait_for(lambda: events(broker, key)[-1:] == ["done:c"])


def test_lock_args_pick_the_arguments_that_define_uniqueness(broker, key):
    assert UntilExecutedJob.perform_later(key, "a")
    assert not UntilExecutedJob.perform_later(key, "b")  # same first argument
    assert UntilExecutedJob.perform_later(f"{key}:other", "a")
    assert FailingUniqueJob.perform_later(key)  # another class: its own lock
    assert queued(broker) == 3


def test_default_lock_args_are_all_arguments(broker, key):
    class AllArgsJob(ApplicationJob):
        lock = "until_executed"

        def perform(self, a, b=0):
            pass

    assert AllArgsJob.perform_later(key, b=1)
    assert not AllArgsJob.perform_later(key, b=1)
    assert AllArgsJob.perform_later(key, b=2)
    assert AllArgsJob.perform_later(key)


def test_on_conflict_raise_names_the_job_and_the_holder(broker, key):
    first = RaisingUniqueJob.perform_later(key, "a")
    with pytest.raises(LockConflict, match=rf"RaisingUniqueJob .* held by job {first.job_id}"):
        RaisingUniqueJob.perform_later(key, "b")
    assert queued(broker) == 1


def test_until_expired_lock_ends_only_with_its_ttl(broker, worker, key):
    first = ExpiringJob.perform_later(key, "a")
    wait_for(lambda: events(broker, key) == ["start:a", "done:a"])
    assert not ExpiringJob.perform_later(key, "b")  # ran, but the lock stays until it expires
    lock = _lock_keys(first)["key"]
    assert 0 < broker.redis.pttl(lock) <= 4000
    wait_for(lambda: broker.redis.get(lock) is None, timeout=30)
    assert ExpiringJob.perform_later(key, "c")


def test_while_executing_never_runs_two_at_once_and_reschedules(broker, worker, key):
    gate = f"{key}:gate"
    assert WhileExecutingJob.perform_later(key, "a", gate)
    wait_for(lambda: events(broker, key) == ["start:a"])
    assert WhileExecutingJob.perform_later(key, "b")  # no enqueue lock
    # "b" finds the run lock taken and waits in the schedule instead of running.
    wait_for(lambda: broker.redis.zcard(broker.keys.schedule) == 1)
    assert events(broker, key) == ["start:a"]
    open_gate(broker, gate)
    wait_for(lambda: events(broker, key) == ["start:a", "done:a", "start:b", "done:b"], timeout=30)  # the 1 s reschedule plus a loaded machine
    run_lock = _lock_keys(WhileExecutingJob(key, "x"))["run"]
    # Released right after perform returns, a moment after the job's own "done" line.
    wait_for(lambda: broker.redis.get(run_lock) is None, timeout=30)


def test_a_job_running_longer_than_lock_ttl_keeps_its_locks(broker, worker, key):
    """Heartbeats (every 0.5 s here) renew a running job's locks: twice the 1.5 s TTL later
    both are still held by their jobs, and the duplicates are still kept out."""
    executed = ShortTtlUntilExecutedJob.perform_later(key, "a", f"{key}:gate-a")
    ShortTtlWhileExecutingJob.perform_later(f"{key}:w", "w", f"{key}:gate-w")
    enqueue_lock = _lock_keys(executed)["key"]
    run_lock = _lock_keys(ShortTtlWhileExecutingJob(f"{key}:w", "x"))["run"]
    wait_for(lambda: events(broker, key) == ["start:a"] and events(broker, f"{key}:w") == ["start:w"])
    time.sleep(3)
    assert broker.redis.get(enqueue_lock) == executed.job_id.encode()
    assert broker.redis.get(run_lock) is not None
    assert not ShortTtlUntilExecutedJob.perform_later(key, "b")
    ShortTtlWhileExecutingJob.perform_later(f"{key}:w", "w2")
    wait_for(lambda: broker.stat("processed") == 1)  # "w2" found the run lock held and was dropped
    open_gate(broker, f"{key}:gate-a")
    open_gate(broker, f"{key}:gate-w")
    wait_for(lambda: broker.redis.get(enqueue_lock) is None and broker.redis.get(run_lock) is None)
    assert events(broker, key) == ["start:a", "done:a"]
    assert events(broker, f"{key}:w") == ["start:w", "done:w"]


def test_while_executing_with_log_drops_the_duplicate(broker, worker, key):
    gate = f"{key}:gate"
    WhileExecutingDropJob.perform_later(key, "a", gate)
    wait_for(lambda: events(broker, key) == ["start:a"])
    WhileExecutingDropJob.perform_later(key, "b")
    wait_for(lambda: broker.stat("processed") == 1)  # "b" settled without running
    open_gate(broker, gate)
    wait_for(lambda: broker.stat("processed") == 2)
    assert events(broker, key) == ["start:a", "done:a"]


def test_until_and_while_executing(broker, worker, key):
    gate = f"{key}:gate"
    first = UntilAndWhileExecutingJob.perform_later(key, "a", gate)
    wait_for(lambda: events(broker, key) == ["start:a"])
    locks = _lock_keys(first)
    assert broker.redis.get(locks["key"]) is None  # enqueue lock gone at start
    assert broker.redis.get(locks["run"])  # run lock held while it runs
    assert UntilAndWhileExecutingJob.perform_later(key, "b")
    assert not UntilAndWhileExecutingJob.perform_later(key, "c")  # "b" is pending
    wait_for(lambda: broker.redis.zcard(broker.keys.schedule) == 1)  # "b" waits for "a"
    open_gate(broker, gate)
    wait_for(lambda: events(broker, key) == ["start:a", "done:a", "start:b", "done:b"], 30, "b after a")
    wait_for(lambda: not broker.redis.exists(locks["key"], locks["run"]))


def test_a_retry_keeps_the_lock_and_death_releases_it(broker, worker, key):
    job = FailingUniqueJob.perform_later(key)
    lock = _lock_keys(job)["key"]
    wait_for(lambda: broker.redis.zcard(broker.keys.retry) == 1)
    assert broker.redis.get(lock) == job.job_id.encode()
    assert not FailingUniqueJob.perform_later(key)
    wait_for(lambda: broker.redis.hlen(broker.keys.dead) == 1)
    assert broker.redis.get(key) == b"2"
    assert broker.redis.get(lock) is None


def test_a_scheduled_jobs_lock_lasts_until_its_run_time_plus_ttl(broker, key):
    job = ExpiringJob.set(wait=timedelta(seconds=30)).perform_later(key, "a")
    assert broker.redis.zcard(broker.keys.schedule) == 1
    assert 32_000 < broker.redis.pttl(_lock_keys(job)["key"]) <= 34_000  # 30 s, then its 4 s TTL
    assert not ExpiringJob.perform_later(key, "b")


def test_bad_declarations_are_refused_when_the_class_is_defined():
    with pytest.raises(ImproperlyConfigured, match="lock = 'until_done'"):
        class BadMode(ApplicationJob):
            lock = "until_done"

            def perform(self):
                pass

    with pytest.raises(ImproperlyConfigured, match="on_conflict = 'ignore'"):
        class BadConflict(ApplicationJob):
            lock = "until_executed"
            on_conflict = "ignore"

            def perform(self):
                pass

    with pytest.raises(ImproperlyConfigured, match="lock_ttl must be a positive"):
        class NoTtl(ApplicationJob):
            lock = "until_executed"
            lock_ttl = None

            def perform(self):
                pass

    with pytest.raises(ImproperlyConfigured, match="lock_args must be a classmethod"):
        class InstanceLockArgs(ApplicationJob):
            lock = "until_executed"

            def lock_args(self, *args):
                return args

            def perform(self):
                pass


def _race(start, results, key, calls):
    from django_async_jobs.broker.client import reset

    reset()  # a connection of this process's own
    start.wait()
    ok = sum(1 for _ in range(calls) if UntilExecutedJob.perform_later(key, f"p{os.getpid()}"))
    results.put(ok)


# Threads of earlier tests' workers may still be winding down when this forks; the children use
# only a broker of their own (new connection pool) and logging, which re-creates its locks at fork.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_200_concurrent_perform_later_calls_from_4_processes_enqueue_one_job(broker, key):
    ctx = multiprocessing.get_context("fork")
    start = ctx.Event()
    results = ctx.Queue()
    procs = [ctx.Process(target=_race, args=(start, results, key, 50)) for _ in range(4)]
    for p in procs:
        p.start()
    start.set()
    counts = [results.get(timeout=20) for _ in procs]
    for p in procs:
        p.join(10)
    assert sum(counts) == 1
    assert queued(broker) == 1


def _spawn_worker(prefix):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "ASYNC_JOBS_KEY_PREFIX": prefix}
    return subprocess.Popen(
        [sys.executable, "-m", "django", "runworker", "-c", "2"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def test_locks_of_a_sigkilled_worker_are_released_or_handed_to_the_recovered_job(broker, settings, prefix, key):
    executed = UntilExecutedJob.perform_later(key, "executed", f"{key}:gate1")
    running = WhileExecutingDropJob.perform_later(f"{key}:w", "running", f"{key}:gate2")
    enqueue_lock = _lock_keys(executed)["key"]
    run_lock = _lock_keys(running)["run"]
    proc = _spawn_worker(prefix)
    try:
        wait_for(lambda: len(events(broker, key)) == 1 and len(events(broker, f"{key}:w")) == 1, timeout=30)
        killed_holder = broker.redis.get(run_lock)
        assert killed_holder and killed_holder.startswith(running.job_id.encode() + b":")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    finally:
        if proc.poll() is None:
            proc.kill()
    # Dead worker: the enqueue lock still belongs to its job, the run lock to its fetch.
    assert broker.redis.get(enqueue_lock) == executed.job_id.encode()
    assert broker.redis.get(run_lock) == killed_holder

    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "HEARTBEAT_TIMEOUT": 1}
    w = Worker()
    w.start()
    try:
        # Recovery hands both jobs back; the run lock of the dead fetch is dropped, so the
        # recovered job runs (a stuck lock would make WhileExecutingDropJob drop it instead).
        wait_for(lambda: len(events(broker, key)) == 2 and len(events(broker, f"{key}:w")) == 2, timeout=30)
        new_holder = broker.redis.get(run_lock)
        assert new_holder and new_holder != killed_holder
        assert broker.redis.get(enqueue_lock) == executed.job_id.encode()  # handed to the recovered job
        assert not UntilExecutedJob.perform_later(key, "duplicate")
        open_gate(broker, f"{key}:gate1")
        open_gate(broker, f"{key}:gate2")
        wait_for(lambda: not broker.redis.exists(enqueue_lock, run_lock))
        assert events(broker, key) == ["start:executed", "start:executed", "done:executed"]
        assert events(broker, f"{key}:w") == ["start:running", "start:running", "done:running"]
    finally:
        w.stop(timeout=2)


@pytest.mark.django_db(transaction=True)
def test_inside_a_transaction_the_lock_is_taken_at_commit(broker, key):
    from django.db import transaction

    with transaction.atomic():
        first = UntilExecutedJob.perform_later(key, "a")
        second = UntilExecutedJob.perform_later(key, "b")
        assert queued(broker) == 0 and second  # nothing pushed, nothing known yet
    assert first and not second
    assert queued(broker) == 1
    with pytest.raises(LockConflict):
        with transaction.atomic():
            RaisingUniqueJob.perform_later(key, "c")
            RaisingUniqueJob.perform_later(key, "d")
