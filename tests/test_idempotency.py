"""Idempotency markers: the body runs once per key, commits with its marker, and racing workers
on one key run it once (real Redis, real worker threads; the blocking race on PostgreSQL)."""

import threading
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.core import mail
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from django_async_jobs import ApplicationJob
from django_async_jobs.broker.client import get_broker
from django_async_jobs.idempotency import prune
from django_async_jobs.models import IdempotencyMarker
from django_async_jobs.worker.launcher import Worker
from tests.helpers import wait_for


class SendWelcomeEmailJob(ApplicationJob):
    """The guide's job, with a marker instead of a hand-made ``welcome_email_sent_at`` column."""

    def idempotency_key(self, user_id):
        return f"welcome:{user_id}"

    def perform(self, user_id):
        user = User.objects.get(pk=user_id)
        mail.send_mail("Welcome", f"Hello {user.username}", "app@example.com", [user.email])


class CreateGroupJob(ApplicationJob):
    """A database write under a key; optionally slow or held until a test pushes to ``gate``
    (holding its transaction), or failing."""

    def idempotency_key(self, name, hold=0.0, fail=False, log=None, gate=None):
        return f"group:{name}"

    def perform(self, name, hold=0.0, fail=False, log=None, gate=None):
        if log:
            get_broker().redis.rpush(log, f"run:{self.job_id}")
        Group.objects.create(name=name)
        if hold:
            time.sleep(hold)
        if gate:
            get_broker().redis.blpop(gate, timeout=20)
        if fail:
            raise RuntimeError("failed after the write")


class StepsJob(ApplicationJob):
    def perform(self, task_id, log):
        redis = get_broker().redis
        redis.rpush(log, "always")
        with self.once("sms", task_id) as first:
            if first:
                redis.rpush(log, "sms")
                Group.objects.create(name=f"sms-{task_id}")


@pytest.fixture
def user(db):
    return User.objects.create(username="ada", email="ada@example.com")


def test_send_welcome_email_runs_once_per_user(user, settings):
    settings.MAILERS = {"default": {"BACKEND": "django.core.mail.backends.locmem.EmailBackend"}}
    first = SendWelcomeEmailJob(user.pk)
    first.perform_now()
    SendWelcomeEmailJob.perform_now(user.pk)  # enqueued twice, retried or recovered: same key
    assert len(mail.outbox) == 1
    marker = IdempotencyMarker.objects.get()
    assert (marker.key, marker.job_id, marker.job_class) == (f"welcome:{user.pk}", first.job_id, first.job_name)
    other = User.objects.create(username="bob", email="bob@example.com")
    SendWelcomeEmailJob.perform_now(other.pk)
    assert len(mail.outbox) == 2


def test_a_failed_body_rolls_back_its_marker_and_writes_so_the_retry_runs(db):
    with pytest.raises(RuntimeError):
        CreateGroupJob.perform_now("g", fail=True)
    assert not Group.objects.exists() and not IdempotencyMarker.objects.exists()
    CreateGroupJob.perform_now("g")
    CreateGroupJob.perform_now("g")
    assert Group.objects.count() == 1 and IdempotencyMarker.objects.count() == 1


def test_once_guards_one_step_of_a_job(broker, db):
    log = f"{broker.keys.prefix}:log"
    for _ in range(3):
        StepsJob.perform_now(7, log)
    StepsJob.perform_now(8, log)
    assert [x.decode() for x in broker.redis.lrange(log, 0, -1)] == ["always", "sms", "always", "always", "always", "sms"]
    assert sorted(IdempotencyMarker.objects.values_list("key", flat=True)) == ["sms:7", "sms:8"]


def test_expired_markers_no_longer_block_and_are_pruned(db):
    class ExpiringJob(ApplicationJob):
        idempotency_expires = timedelta(microseconds=1)

        def idempotency_key(self, name):
            return name

        def perform(self, name):
            Group.objects.create(name=f"{name}-{Group.objects.count()}")

    ExpiringJob.perform_now("x")
    ExpiringJob.perform_now("x")  # the first marker expired: runs again
    assert Group.objects.count() == 2
    assert prune() == 1


def test_bad_keys_and_async_perform_are_refused(db):
    class BadKey(ApplicationJob):
        def idempotency_key(self):
            return 42

        def perform(self):
            pass

    with pytest.raises(TypeError, match="must return a string or None"):
        BadKey.perform_now()
    with pytest.raises(ImproperlyConfigured, match="perform is async"):
        class AsyncJob(ApplicationJob):
            def idempotency_key(self):
                return "k"

            async def perform(self):
                pass


@pytest.mark.django_db(transaction=True)
def test_two_workers_racing_on_one_key_run_the_body_once(broker):
    """Both jobs are fetched together and start at once in two worker threads."""
    log = f"{broker.keys.prefix}:log"
    jobs = [CreateGroupJob.perform_later("race", hold=0.3, log=log) for _ in range(2)]
    w = Worker(concurrency=2)
    w.start()
    try:
        wait_for(lambda: broker.stat("processed") >= 2, 30, "both jobs settled")
    finally:
        w.stop(timeout=2)
    assert broker.stat("processed") == 2 and broker.stat("failed") == 0
    assert broker.redis.llen(log) == 1
    assert Group.objects.filter(name="race").count() == 1
    assert IdempotencyMarker.objects.get().job_id in {j.job_id for j in jobs}


def _run_in_thread(job, results, name):
    def target():
        try:
            job.perform_now()
            results[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - the outcome is what the test checks
            results[name] = exc
        finally:
            from django.db import connections

            connections.close_all()

    thread = threading.Thread(target=target)
    thread.start()
    return thread


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="PostgreSQL only: the row-level wait on the unique marker key is what this proves; "
    "SQLite serialises all writers with one database lock (covered by the race test above). "
    "Run with DATABASE_URL=postgres://postgres@127.0.0.1:5432/test.",
)
@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("first_fails", [False, True])
def test_postgresql_second_worker_waits_for_the_first_commit_then_skips_or_runs(broker, first_fails):
    log, gate = f"{broker.keys.prefix}:log", f"{broker.keys.prefix}:gate"
    results = {}
    # The first holds the marker row, in its open transaction, until the gate opens.
    first = _run_in_thread(CreateGroupJob("pg", fail=first_fails, log=log, gate=gate), results, "first")
    wait_for(lambda: broker.redis.llen(log) >= 1, 30, "the first job holding the marker row")
    second = _run_in_thread(CreateGroupJob("pg", log=log), results, "second")
    second.join(1)
    assert second.is_alive() and "second" not in results, "the second did not wait for the first's commit"
    broker.redis.rpush(gate, 1)
    first.join(30)
    second.join(30)
    first_outcome, second_outcome = results["first"], results["second"]
    assert second_outcome == "ok"  # never an IntegrityError: it waited, then decided
    if first_fails:
        assert isinstance(first_outcome, RuntimeError)
        assert broker.redis.llen(log) == 2  # the first rolled back, so the second ran
    else:
        assert first_outcome == "ok"
        assert broker.redis.llen(log) == 1  # the second skipped
    assert Group.objects.filter(name="pg").count() == 1
    assert IdempotencyMarker.objects.count() == 1
