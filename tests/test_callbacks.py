"""before/around/after callbacks for enqueue and perform: order, inheritance, halting."""

import pytest

from django_async_jobs import (
    ApplicationJob,
    after_enqueue,
    after_perform,
    around_enqueue,
    around_perform,
    before_enqueue,
    before_perform,
)
from django_async_jobs.worker.launcher import Worker
from tests.helpers import wait_for

LOG: list[str] = []


@pytest.fixture(autouse=True)
def clear_log():
    LOG.clear()
    yield
    LOG.clear()


class Traced(ApplicationJob):
    @before_enqueue
    def b_enq(self):
        LOG.append(f"before_enqueue queued={self.successfully_enqueued}")

    @around_enqueue
    def a_enq_outer(self, proceed):
        LOG.append("around_enqueue outer in")
        proceed()
        LOG.append("around_enqueue outer out")

    @around_enqueue
    def a_enq_inner(self, proceed):
        LOG.append("around_enqueue inner in")
        proceed()
        LOG.append(f"around_enqueue inner out queued={self.successfully_enqueued}")

    @after_enqueue
    def af_enq(self):
        LOG.append(f"after_enqueue queue={self.queue_name}")

    @before_perform
    def b_perf(self):
        LOG.append(f"before_perform executions={self.executions}")

    @around_perform
    def a_perf(self, proceed):
        LOG.append("around_perform in")
        result = proceed()
        LOG.append(f"around_perform out result={result}")

    @after_perform
    def af_perf(self):
        LOG.append("after_perform")

    def perform(self, x):
        LOG.append(f"perform {x}")
        return x * 2


class Child(Traced):
    @before_perform
    def child_before(self):
        LOG.append("child before_perform")

    @after_enqueue
    def child_after_enqueue(self):
        LOG.append("child after_enqueue")


class HaltBefore(ApplicationJob):
    @before_enqueue
    def refuse(self):
        LOG.append("refuse")
        return False

    @after_enqueue
    def never(self):
        LOG.append("after_enqueue ran")

    def perform(self):
        LOG.append("perform")


class HaltAround(ApplicationJob):
    @around_enqueue
    def swallow(self, proceed):
        LOG.append("swallow")

    @around_perform
    def skip(self, proceed):
        LOG.append("skip perform")

    @after_perform
    def never(self):
        LOG.append("after_perform ran")

    def perform(self):
        LOG.append("perform")
        return "value"


class Swallowing(ApplicationJob):
    """The guide's error wrapper, reduced: it catches what perform raises."""

    @around_perform
    def rescue(self, proceed):
        try:
            return proceed()
        except LookupError:
            LOG.append("rescued")
            return "the wrapper's value"

    @after_perform
    def after(self):
        LOG.append("after_perform ran")

    def perform(self, fail):
        if fail:
            raise LookupError("missing row")
        return "perform's value"


class HaltPerform(ApplicationJob):
    @before_perform
    def stop(self):
        return False

    def perform(self, key):
        LOG.append("perform")


class FalsyButNotFalse(ApplicationJob):
    """Only a literal False halts: None (no return) and 0 do not."""

    @before_enqueue
    def returns_none(self):
        return None

    @before_enqueue
    def returns_zero(self):
        return 0

    def perform(self):
        pass


def test_enqueue_callbacks_order(broker):
    job = Traced.perform_later(1)
    assert job
    assert LOG == [
        "before_enqueue queued=None",
        "around_enqueue outer in",
        "around_enqueue inner in",
        "around_enqueue inner out queued=True",
        "around_enqueue outer out",
        "after_enqueue queue=default",
    ]
    assert broker.queue_size("default") == 1


def test_perform_callbacks_order(broker):
    assert Traced.perform_now(21) == 42
    assert LOG == [
        "before_perform executions=1",
        "around_perform in",
        "perform 21",
        "around_perform out result=42",
        "after_perform",
    ]


def test_subclass_runs_inherited_callbacks_first(broker):
    Child.perform_later(2)
    assert LOG[-2:] == ["after_enqueue queue=default", "child after_enqueue"]
    LOG.clear()
    Child.perform_now(2)
    assert LOG[:2] == ["before_perform executions=1", "child before_perform"]
    assert LOG.count("child before_perform") == 1 and LOG[-1] == "after_perform"
    # The parent is not affected by its subclass's callbacks.
    LOG.clear()
    Traced.perform_now(1)
    assert not any(line.startswith("child") for line in LOG)


def test_before_enqueue_false_halts(broker):
    job = HaltBefore.perform_later()
    assert not job
    assert job.successfully_enqueued is False
    assert job.job_id  # still a job object, as ActiveJob returns the job
    assert LOG == ["refuse"]
    assert broker.queue_size("default") == 0
    assert broker.redis.zcard(broker.keys.schedule) == 0


def test_around_enqueue_without_proceed_halts(broker):
    job = HaltAround.set(wait=5).perform_later()
    assert not job
    assert LOG == ["swallow"]
    assert broker.queue_size("default") == 0
    assert broker.redis.zcard(broker.keys.schedule) == 0


def test_halted_perform_returns_none_and_skips_after(broker):
    assert HaltAround.perform_now() is None
    assert LOG == ["skip perform"]
    LOG.clear()
    assert HaltPerform.perform_now("k") is None
    assert LOG == []


def test_an_around_perform_that_catches_ends_the_job_with_none(broker):
    assert Swallowing.perform_now(True) is None  # perform never returned; the wrapper's value is not used
    assert LOG == ["rescued"]  # the stage ended early: no after_perform
    LOG.clear()
    assert Swallowing.perform_now(False) == "perform's value"
    assert LOG == ["after_perform ran"]


def test_only_false_halts(broker):
    assert FalsyButNotFalse.perform_later()
    assert broker.queue_size("default") == 1


def test_callbacks_run_in_the_worker(broker):
    # Enqueued before the worker starts: the enqueue callbacks have all run, and the log is
    # cleared, before any worker thread can take the job.
    Traced.perform_later(5)
    assert LOG[-1] == "after_enqueue queue=default"
    LOG.clear()
    worker = Worker()
    worker.start()
    try:
        wait_for(lambda: "after_perform" in LOG, 30, "the job's after_perform")
    finally:
        worker.stop(timeout=2)
    assert LOG == [
        "before_perform executions=1",
        "around_perform in",
        "perform 5",
        "around_perform out result=10",
        "after_perform",
    ]


def test_halted_perform_in_the_worker_is_acknowledged(worker, broker):
    HaltPerform.perform_later("k")
    wait_for(lambda: broker.stat("processed") == 1, 30, "the halted job settled")
    assert LOG == []
    assert broker.inflight(worker.process_id) == {}
