"""The helpers users put in their own suites: test mode, inline mode, the fixture, the mixin,
and fakeredis as a server-less Redis."""

from datetime import UTC, datetime, timedelta

import pytest
from django.test import TestCase

from django_async_jobs import SerializationError
from django_async_jobs.conf import get_settings
from django_async_jobs.testing import EnqueuedJob, JobsTestCaseMixin, jobs_test_mode
from tests.helpers import wait_for
from tests.testapp.integration_jobs import (
    ChainJob,
    CountingJob,
    Flaky,
    NoteJob,
    RetryingJob,
    UniqueCountingJob,
)


@pytest.fixture(autouse=True)
def fresh_runs():
    CountingJob.runs.clear()
    yield
    CountingJob.runs.clear()


@pytest.fixture
def no_redis(settings):
    """A Redis URL nothing listens on: test mode must not need a server."""
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "REDIS_URL": "redis://127.0.0.1:1/0"}


def test_our_suite_stays_in_redis_mode_without_the_fixture():
    assert get_settings().mode == "redis"


def test_fixture_records_jobs_without_redis(no_redis, async_jobs):
    assert get_settings().mode == "test"
    job = CountingJob.set(priority=5).perform_later(1)
    NoteJob.perform_later("k", (1, 2), flag=True)
    [record] = async_jobs.assert_enqueued(CountingJob, args=[1], queue="low", priority=5)
    assert isinstance(record, EnqueuedJob)
    assert record.job_id == job.job_id
    # arguments are what a worker would get after the JSON round trip: tuples become lists
    async_jobs.assert_enqueued(NoteJob, args=["k", [1, 2]], kwargs={"flag": True}, queue="default")
    async_jobs.assert_enqueued(count=2)
    async_jobs.assert_no_enqueued(CountingJob, args=[2])
    assert CountingJob.runs == []


def test_unserializable_arguments_fail_in_test_mode_too(async_jobs):
    with pytest.raises(SerializationError):
        CountingJob.perform_later(object())
    assert async_jobs.enqueued_jobs == []


def test_assertion_messages_list_what_was_enqueued(async_jobs):
    CountingJob.perform_later(1)
    with pytest.raises(AssertionError, match=r"(?s)args=\[2\].*CountingJob\(args=\[1\]"):
        async_jobs.assert_enqueued(CountingJob, args=[2])
    with pytest.raises(AssertionError, match="Expected 2 enqueued job"):
        async_jobs.assert_enqueued(CountingJob, count=2)
    with pytest.raises(AssertionError, match="Expected 0 enqueued"):
        async_jobs.assert_no_enqueued(CountingJob)
    with pytest.raises(TypeError, match="count="):
        async_jobs.assert_enqueued(CountingJob, count=-1)


def test_at_matches_the_scheduled_time(async_jobs):
    when = datetime.now(UTC) + timedelta(hours=1)
    CountingJob.set(wait_until=when).perform_later(1)
    async_jobs.assert_enqueued(CountingJob, at=when)
    async_jobs.assert_no_enqueued(CountingJob, at=when + timedelta(minutes=1))


def test_perform_enqueued_jobs_runs_scheduled_and_follow_up_jobs(async_jobs):
    ChainJob.perform_later(10)
    assert async_jobs.perform_enqueued_jobs() == 2
    assert CountingJob.runs == [11]  # enqueued by ChainJob with wait=60, run all the same
    async_jobs.assert_performed(ChainJob, args=[10])
    async_jobs.assert_performed(CountingJob, args=[11], count=1)
    assert async_jobs.enqueued_jobs == []


def test_filters_leave_other_jobs_enqueued(async_jobs):
    CountingJob.perform_later(1)
    NoteJob.perform_later("k")
    RetryingJob.set(queue="default").perform_later(2)
    assert async_jobs.perform_enqueued_jobs(only=CountingJob, queue="low") == 1
    assert CountingJob.runs == [1]
    assert async_jobs.perform_enqueued_jobs(except_=[NoteJob]) == 1
    assert CountingJob.runs == [1, 2]
    async_jobs.assert_enqueued(NoteJob, count=1)
    with pytest.raises(TypeError, match="only="):
        async_jobs.perform_enqueued_jobs(only="CountingJob")


def test_block_form_performs_jobs_as_they_are_enqueued(async_jobs):
    CountingJob.perform_later(1)
    with async_jobs.perform_enqueued_jobs(only=CountingJob):
        assert CountingJob.runs == [1]  # the call itself performed what was already enqueued
        CountingJob.perform_later(2)
        assert CountingJob.runs == [1, 2]
        NoteJob.perform_later("k")
    CountingJob.perform_later(3)
    assert CountingJob.runs == [1, 2]
    async_jobs.assert_enqueued(NoteJob)
    async_jobs.assert_enqueued(CountingJob, args=[3])


def test_retries_are_performed_until_success(async_jobs):
    RetryingJob.perform_later(7, fail_times=2)
    async_jobs.assert_enqueued(RetryingJob, count=1)
    async_jobs.perform_enqueued_jobs()
    assert CountingJob.runs == [7, 7, 7]
    async_jobs.assert_performed(RetryingJob, args=[7], count=3)
    assert async_jobs.enqueued_jobs == []


def test_exhausted_retries_raise(async_jobs):
    RetryingJob.perform_later(7, fail_times=5)
    with pytest.raises(Flaky):
        async_jobs.perform_enqueued_jobs()
    assert CountingJob.runs == [7, 7, 7]  # attempts=3


def test_a_failed_retry_waits_in_enqueued_jobs_with_its_time(async_jobs):
    with async_jobs.perform_enqueued_jobs(only=lambda record: record.payload.get("retries") is None):
        RetryingJob.perform_later(7, fail_times=1)
    [retry] = async_jobs.assert_enqueued(RetryingJob, args=[7])
    assert retry.at is not None and retry.at > datetime.now(UTC) + timedelta(seconds=25)


def test_discard_and_unmatched_errors(async_jobs):
    RetryingJob.perform_later(1, fail_times=1, error="unwanted")
    assert async_jobs.perform_enqueued_jobs() == 1  # discarded: no error, no retry
    RetryingJob.perform_later(2, fail_times=1, error="other")
    with pytest.raises(RuntimeError):
        async_jobs.perform_enqueued_jobs()  # no rule matches: raised at once
    assert CountingJob.runs == [1, 2]


def test_unique_jobs_take_no_locks_in_test_mode(no_redis, async_jobs):
    UniqueCountingJob.perform_later(1)
    UniqueCountingJob.perform_bulk([(1,)])
    async_jobs.assert_enqueued(UniqueCountingJob, args=[1], count=2)


def test_clear(async_jobs):
    CountingJob.perform_later(1)
    async_jobs.perform_enqueued_jobs()
    CountingJob.perform_later(2)
    async_jobs.clear()
    assert async_jobs.enqueued_jobs == [] and async_jobs.performed_jobs == []


def test_inline_mode_runs_jobs_and_retries_at_once(no_redis, async_jobs_inline):
    job = RetryingJob.perform_later(3, fail_times=1)
    assert CountingJob.runs == [3, 3]
    assert async_jobs_inline.enqueued_jobs == []
    async_jobs_inline.assert_performed(RetryingJob, args=[3], count=2)
    assert job.job_id == async_jobs_inline.performed_jobs[0].job_id
    with pytest.raises(Flaky):
        RetryingJob.perform_later(4, fail_times=9)
    with pytest.raises(ValueError, match="mode="):
        with jobs_test_mode("redis"):
            pass


class MixinTests(JobsTestCaseMixin, TestCase):
    def test_helpers_are_methods(self):
        CountingJob.perform_later(5)
        self.assert_enqueued(CountingJob, args=[5])
        self.perform_enqueued_jobs()
        self.assert_performed(CountingJob, args=[5])
        self.assertEqual(CountingJob.runs, [5])

    def test_each_test_starts_empty(self):
        self.assertEqual(self.enqueued_jobs, [])
        self.assertEqual(get_settings().mode, "test")


class InlineMixinTests(JobsTestCaseMixin, TestCase):
    async_jobs_mode = "inline"

    def test_inline(self):
        CountingJob.perform_later(6)
        self.assertEqual(CountingJob.runs, [6])


def test_fakeredis_runs_the_real_code_path(settings, prefix):
    pytest.importorskip("lupa")
    from django_async_jobs.broker.client import get_broker
    from django_async_jobs.worker.launcher import Worker

    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "REDIS_URL": "fakeredis://"}
    broker = get_broker()
    assert type(broker.redis).__module__.startswith("fakeredis")
    NoteJob.perform_later(f"{prefix}:notes", 1, 2)
    NoteJob.set(wait=0.1).perform_later(f"{prefix}:notes", 3)
    assert broker.queue_size("default") == 1
    worker = Worker()
    worker.start()
    try:
        wait_for(lambda: broker.redis.llen(f"{prefix}:notes") == 2)
    finally:
        worker.stop(timeout=2)
    assert broker.queue_size("default") == 0
    assert broker.stat("processed") == 2
    broker.flush()
