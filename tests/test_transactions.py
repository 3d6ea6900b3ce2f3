"""Enqueue after commit: real commits and rollbacks on the test database (SQLite or PostgreSQL)."""

import json

import pytest
from django.contrib.auth.models import User
from django.db import transaction

from django_async_jobs import SerializationError
from django_async_jobs.worker.launcher import Worker
from tests.helpers import wait_for
from tests.testapp.integration_jobs import HaltedJob, ImmediateNoteJob, NoteJob, UserEmailJob

pytestmark = pytest.mark.django_db(transaction=True)


def queued_ids(broker, queue="default"):
    return [json.loads(p)["jid"] for p in broker.redis.zrange(broker.keys.queue(queue), 0, -1)]


class Rollback(Exception):
    pass


def test_commit_enqueues_once_with_the_id_known_before(broker, prefix):
    with transaction.atomic():
        job = NoteJob.perform_later(f"{prefix}:k", 1)
        assert job.job_id
        assert queued_ids(broker) == []  # nothing a worker could see before the commit
    assert queued_ids(broker) == [job.job_id]
    assert job.successfully_enqueued is True


def test_rollback_drops_the_job(broker, prefix):
    with pytest.raises(Rollback), transaction.atomic():
        NoteJob.perform_later(f"{prefix}:k", 1)
        raise Rollback
    assert queued_ids(broker) == []


def test_savepoint_rollback_drops_only_its_jobs(broker, prefix):
    with transaction.atomic():
        kept = NoteJob.perform_later(f"{prefix}:k", "outer")
        with pytest.raises(Rollback), transaction.atomic():
            NoteJob.perform_later(f"{prefix}:k", "inner")
            raise Rollback
        assert queued_ids(broker) == []
    assert queued_ids(broker) == [kept.job_id]


def test_outside_a_transaction_the_push_is_immediate(broker, prefix):
    job = NoteJob.perform_later(f"{prefix}:k", 1)
    assert queued_ids(broker) == [job.job_id]


def test_class_and_setting_can_turn_it_off(broker, prefix, settings):
    with transaction.atomic():
        job = ImmediateNoteJob.perform_later(f"{prefix}:k", 1)
        assert queued_ids(broker) == [job.job_id]
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "ENQUEUE_AFTER_COMMIT": False}
    with transaction.atomic():
        other = NoteJob.perform_later(f"{prefix}:k", 2)
        assert queued_ids(broker) == [job.job_id, other.job_id]


def test_bad_arguments_fail_at_enqueue_not_at_commit(broker, prefix):
    with transaction.atomic():
        with pytest.raises(SerializationError, match="argument"):
            NoteJob.perform_later(f"{prefix}:k", object())
    assert queued_ids(broker) == []


def test_the_enqueue_chain_runs_at_the_call_and_only_the_push_waits(broker, prefix):
    # As ActiveJob's enqueue_after_transaction_commit: callbacks (and middleware) run when
    # perform_later is called; a halted job is known at once, a pushed one after the commit.
    with transaction.atomic():
        halted = HaltedJob.perform_later(f"{prefix}:k")
        assert halted.successfully_enqueued is False and not halted
        job = NoteJob.perform_later(f"{prefix}:k")
        assert job.successfully_enqueued is None  # the push waits for the commit
    assert job.successfully_enqueued is True
    assert queued_ids(broker) == [job.job_id]


def test_set_using_names_the_alias(broker, prefix):
    with transaction.atomic(using="default"):
        job = NoteJob.set(using="default", queue="low").perform_later(f"{prefix}:k", 1)
        assert queued_ids(broker, "low") == []
    assert queued_ids(broker, "low") == [job.job_id]


def test_worker_sees_the_committed_row(broker, prefix):
    worker = Worker()
    worker.start()
    try:
        with transaction.atomic():
            user = User.objects.create(username="ann", email="ann@example.com")
            UserEmailJob.perform_later(f"{prefix}:emails", user.pk)
        assert wait_for(lambda: broker.redis.lrange(f"{prefix}:emails", 0, -1)) == [b"ann@example.com"]
    finally:
        worker.stop(timeout=2)


def test_bulk_waits_for_the_commit_too(broker, prefix):
    with pytest.raises(Rollback), transaction.atomic():
        NoteJob.perform_bulk([(f"{prefix}:k", i) for i in range(3)])
        raise Rollback
    assert queued_ids(broker) == []
    with transaction.atomic():
        assert NoteJob.perform_bulk([(f"{prefix}:k", i) for i in range(3)]) == 3
        assert queued_ids(broker) == []
    assert len(queued_ids(broker)) == 3


@pytest.mark.django_db(transaction=False)
def test_in_a_test_case_transaction_only_the_tests_own_atomic_defers(
    broker, prefix, django_capture_on_commit_callbacks
):
    # The test runs inside TestCase's atomic block: that one is not the application's.
    first = NoteJob.perform_later(f"{prefix}:k", 1)
    assert queued_ids(broker) == [first.job_id]
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        with transaction.atomic():
            second = NoteJob.perform_later(f"{prefix}:k", 2)
            assert queued_ids(broker) == [first.job_id]
    assert len(callbacks) == 1
    assert queued_ids(broker) == [first.job_id, second.job_id]
