"""The transactional outbox (docs/transactions.md): rows written in the enqueue's transaction,
Redis down outside one, and the relay that pushes committed rows to Redis, once each.

Real commits and rollbacks on the test database (SQLite, or PostgreSQL with DATABASE_URL).
"""

import json
import logging
import math
import threading
import time

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext

from django_async_jobs import ApplicationJob, SerializationError, registry
from django_async_jobs.broker.client import get_broker
from django_async_jobs.conf import get_settings
from django_async_jobs.models import OutboxJob
from django_async_jobs.worker.launcher import Worker
from django_async_jobs.worker.relay import Relay
from tests.helpers import wait_for
from tests.testapp.integration_jobs import HaltedJob, ImmediateNoteJob, NoteJob
from tests.testapp.jobs import RecordJob
from tests.testapp.unique_jobs import UntilExecutedJob

pytestmark = pytest.mark.django_db(transaction=True)

POSTGRES = connection.vendor == "postgresql"


class Rollback(Exception):
    pass


@pytest.fixture
def outbox_on(settings, prefix):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "OUTBOX": True}
    return settings


@pytest.fixture
def own_registry(monkeypatch):
    """Job classes a test defines are known for its test only (a class that opts into the
    outbox would otherwise make every later worker of the session relay)."""
    monkeypatch.setattr(registry, "_jobs", dict(registry._jobs))


def queued(broker, queue="default"):
    return [json.loads(p) for p in broker.redis.zrange(broker.keys.queue(queue), 0, -1)]


def rows():
    return list(OutboxJob.objects.order_by("pk"))


def relay(owner="test"):
    """A relay of the default database, driven round by round from the test."""
    return Relay(get_broker(), "default", get_settings(), threading.Event(), owner)


def relay_all(r):
    while r.round():
        pass


# -- same transaction -------------------------------------------------------------------------------


def test_a_job_in_a_transaction_is_a_row_of_it_and_nothing_waits_for_the_commit(broker, prefix, outbox_on):
    with transaction.atomic():
        job = NoteJob.perform_later(f"{prefix}:k", 1)
        assert [row.job_id for row in rows()] == [job.job_id]
        assert connection.run_on_commit == []  # no on_commit callback: the row is the job
        assert job.successfully_enqueued is True
    row = rows()[0]
    assert (row.queue, row.priority, row.run_at, row.lock) == ("default", 0, None, "")
    assert json.loads(row.payload)["jid"] == job.job_id
    assert queued(broker) == []  # the relay pushes it, not the commit


def test_a_rollback_leaves_no_job(broker, prefix, outbox_on):
    with pytest.raises(Rollback), transaction.atomic():
        NoteJob.perform_later(f"{prefix}:k", 1)
        NoteJob.perform_bulk([(f"{prefix}:k", 2), (f"{prefix}:k", 3)])
        raise Rollback
    assert rows() == []


def test_a_savepoint_rollback_drops_only_its_jobs(broker, prefix, outbox_on):
    with transaction.atomic():
        kept = NoteJob.perform_later(f"{prefix}:k", "outer")
        with pytest.raises(Rollback), transaction.atomic():
            NoteJob.perform_later(f"{prefix}:k", "inner")
            raise Rollback
    assert [row.job_id for row in rows()] == [kept.job_id]


def test_set_options_and_bulk_enqueues_go_into_the_transaction(broker, prefix, outbox_on):
    with transaction.atomic():
        later = NoteJob.set(wait=60, queue="low", priority=5, using="default").perform_later(f"{prefix}:k")
        with CaptureQueriesContext(connection) as queries:
            assert NoteJob.perform_bulk([(f"{prefix}:k", i) for i in range(2500)]) == 2500
        inserts = [q for q in queries.captured_queries if q["sql"].lstrip().upper().startswith("INSERT")]
        # bulk_create: 1,000 rows per statement, or as many as the database takes in one
        fields = [f for f in OutboxJob._meta.concrete_fields if not f.primary_key]
        per_statement = min(1000, connection.ops.bulk_batch_size(fields, [OutboxJob()] * 2500))
        assert len(inserts) == math.ceil(2500 / per_statement) <= 21
    found = rows()
    assert len(found) == 2501
    assert (found[0].job_id, found[0].queue, found[0].priority) == (later.job_id, "low", 5)
    assert found[0].run_at == pytest.approx(time.time() + 60, abs=30)


def test_the_row_is_the_enqueue_chains_last_step(broker, prefix, outbox_on):
    # Middleware (routing, metadata) and callbacks have run when the row is written: it holds
    # what they made, as a push to Redis would.
    from tests.testapp import middleware_jobs as m

    key = f"{prefix}:trace"
    with transaction.atomic():
        routed = m.RoutedJob(f"{prefix}:routed")
        routed.meta["route"] = "low"
        routed.enqueue()
        traced = m.TracedJob.perform_later(key)
    rows_by_job = {row.job_id: row for row in rows()}
    assert (rows_by_job[routed.job_id].queue, rows_by_job[routed.job_id].priority) == ("low", 7)
    assert json.loads(rows_by_job[routed.job_id].payload)["meta"] == {"route": "low"}
    assert traced.job_id in rows_by_job
    assert [t.decode() for t in broker.redis.lrange(key, 0, -1)] == ["class enqueue in", "before_enqueue", "class enqueue out"]


def test_a_bad_argument_fails_in_the_caller_and_writes_nothing(broker, prefix, outbox_on):
    with transaction.atomic():
        with pytest.raises(SerializationError):
            NoteJob.perform_later(f"{prefix}:k", object())
    assert rows() == []


def test_a_halted_job_writes_no_row(broker, prefix, outbox_on):
    with transaction.atomic():
        assert not HaltedJob.perform_later(f"{prefix}:k")
    assert rows() == []


def test_outside_a_transaction_the_push_goes_to_redis(broker, prefix, outbox_on):
    job = NoteJob.perform_later(f"{prefix}:k", 1)
    assert [p["jid"] for p in queued(broker)] == [job.job_id] and rows() == []


def test_jobs_that_do_not_wait_for_a_commit_are_pushed_at_once(broker, prefix, outbox_on):
    with transaction.atomic():
        job = ImmediateNoteJob.perform_later(f"{prefix}:k", 1)  # enqueue_after_commit = False
        assert [p["jid"] for p in queued(broker)] == [job.job_id]
    assert rows() == []


def test_a_class_opts_in_or_out(broker, prefix, settings, own_registry):
    class ViaOutbox(NoteJob):
        enqueue_via_outbox = True

    class NotViaOutbox(NoteJob):
        enqueue_via_outbox = False

    with transaction.atomic():
        ViaOutbox.perform_later(f"{prefix}:k")  # OUTBOX is off
        NotViaOutbox.perform_later(f"{prefix}:k")
    assert [row.payload for row in rows()] != [] and len(rows()) == 1
    assert len(queued(broker)) == 1  # NotViaOutbox: pushed at commit
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "OUTBOX": True}
    with transaction.atomic():
        NotViaOutbox.perform_later(f"{prefix}:k")
    assert len(rows()) == 1 and len(queued(broker)) == 2


def test_a_database_no_worker_relays_is_refused_with_the_fix(broker, prefix, outbox_on, settings):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "OUTBOX_DATABASES": ["ledger"]}
    with transaction.atomic():
        with pytest.raises(ImproperlyConfigured, match=r"add 'default' to ASYNC_JOBS\['OUTBOX_DATABASES'\]"):
            NoteJob.perform_later(f"{prefix}:k")
    assert rows() == []


def test_the_test_modes_keep_the_on_commit_push(prefix, outbox_on, settings, async_jobs):
    with transaction.atomic():
        NoteJob.perform_later(f"{prefix}:k", 1)
        async_jobs.assert_no_enqueued()
    async_jobs.assert_enqueued(NoteJob)
    assert rows() == []


# -- Redis unreachable outside a transaction ------------------------------------------------------


@pytest.fixture
def redis_down(redis_server, settings, prefix):
    """This test's own Redis, stopped: every push is refused."""
    original = settings.ASYNC_JOBS
    settings.ASYNC_JOBS = {**original, "REDIS_URL": redis_server.url}
    redis_server.stop()
    yield redis_server
    settings.ASYNC_JOBS = original  # the server goes before the prefix's clean-up


def test_redis_down_writes_the_row_and_warns_once_per_outage(prefix, outbox_on, redis_down, caplog):
    caplog.set_level(logging.WARNING, "django_async_jobs.outbox")
    jobs = [NoteJob.perform_later(f"{prefix}:k", i) for i in range(5)]
    assert NoteJob.perform_bulk([(f"{prefix}:k", i) for i in range(5, 2500)]) == 2495
    assert all(job.successfully_enqueued for job in jobs)
    assert len(rows()) == 2500
    warnings = [r for r in caplog.records if "Redis is unreachable" in r.getMessage()]
    assert len(warnings) == 1
    redis_down.start()
    NoteJob.perform_later(f"{prefix}:k", "back")
    assert any("answers again" in r.getMessage() and "2501" not in r.getMessage() for r in caplog.records)
    assert len(rows()) == 2500  # pushed to Redis again
    redis_down.stop()
    NoteJob.perform_later(f"{prefix}:k", "again")
    assert len([r for r in caplog.records if "Redis is unreachable" in r.getMessage()]) == 2  # a new outage


def test_redis_down_still_raises_for_classes_without_the_outbox(prefix, redis_down, settings, own_registry):
    import redis

    class ViaOutbox(NoteJob):
        enqueue_via_outbox = True

    with pytest.raises(redis.ConnectionError):
        NoteJob.perform_later(f"{prefix}:k")
    # A bulk of both: the outbox keeps its share, the error reaches the caller for the rest.
    jobs = [ViaOutbox(f"{prefix}:k", 1), NoteJob(f"{prefix}:k", 2)]
    with pytest.raises(redis.ConnectionError):
        ApplicationJob.perform_all_later(jobs)
    assert [row.job_id for row in rows()] == [jobs[0].job_id]
    assert jobs[0].successfully_enqueued is True and jobs[1].successfully_enqueued is None


# -- the relay --------------------------------------------------------------------------------------


def test_a_worker_relays_committed_rows_and_runs_them(broker, prefix, outbox_on):
    with transaction.atomic():
        RecordJob.perform_later(f"{prefix}:runs", 1)
        RecordJob.perform_bulk([(f"{prefix}:runs", i) for i in range(2, 6)])
    worker = Worker()
    assert len(worker.relays) == 1
    worker.start()
    try:
        wait_for(lambda: broker.redis.llen(f"{prefix}:runs") == 5, 30, "the relayed jobs run")
        wait_for(lambda: rows() == [], 10, "the relayed rows deleted")
    finally:
        worker.stop(timeout=2)
    assert sorted(json.loads(r)["args"][0] for r in broker.redis.lrange(f"{prefix}:runs", 0, -1)) == [1, 2, 3, 4, 5]
    assert broker.redis.zcard(broker.keys.outbox_relayed) == 0  # forgotten once the rows were deleted
    assert broker.redis.get(broker.keys.outbox_lease("default")) is None  # handed on at the stop


def test_a_worker_without_the_outbox_runs_no_relay(broker):
    assert Worker().relays == []


def test_one_redis_round_trip_per_batch_of_1000(private_redis, prefix, outbox_on):
    with transaction.atomic():
        NoteJob.perform_bulk([(f"{prefix}:k", i) for i in range(2500)])
    r = relay()
    r._listen = lambda: None  # a notification would not change the count; keep the test the same everywhere
    assert private_redis.relay("elsewhere", "nobody", 1000, [], []) is None  # loads the script
    private_redis.redis.config_resetstat()
    assert [r.round(), r.round(), r.round()] == [True, True, False]
    stats = private_redis.redis.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 3
    assert private_redis.queue_size("default") == 2500 and rows() == []


def test_a_relay_killed_between_its_push_and_its_delete_pushes_nothing_twice(broker, prefix, outbox_on):
    with transaction.atomic():
        RecordJob.perform_bulk([(f"{prefix}:runs", i) for i in range(10)])
    # The first relay's step ran, then its process died: rows still there, jobs in Redis.
    first = relay("first")
    assert broker.take_lock(broker.keys.outbox_lease("default"), first.holder, 60_000)[0]
    from django_async_jobs import outbox

    keys, pending = outbox.pending("default")
    assert broker.relay("default", first.holder, 60_000, [], pending)[:2] == (10, 0)
    fetched = broker.redis.zpopmin(broker.keys.queue("default"), 10)  # a worker took them meanwhile
    assert len(fetched) == 10
    broker.redis.delete(broker.keys.outbox_lease("default"))  # its lease ran out
    second = relay("second")
    assert second.round() is False
    assert rows() == [] and broker.queue_size("default") == 0  # skipped, and the rows deleted
    assert broker.redis.zcard(broker.keys.outbox_relayed) == 10
    second.round()  # the next step forgets the ids of the deleted rows
    assert broker.redis.zcard(broker.keys.outbox_relayed) == 0


def test_one_process_relays_at_a_time_and_a_lost_lease_pushes_nothing(broker, prefix, outbox_on):
    with transaction.atomic():
        NoteJob.perform_later(f"{prefix}:k", 1)
    a, b = relay("a"), relay("b")
    a.round()
    assert a.holding and not b.holding and broker.queue_size("default") == 1
    with transaction.atomic():
        NoteJob.perform_later(f"{prefix}:k", 2)
    assert b.round() is False and len(rows()) == 1  # b waits for the lease
    broker.redis.set(broker.keys.outbox_lease("default"), b.holder)  # a stalled past its lease
    assert a.round() is False and not a.holding and len(rows()) == 1  # refused: nothing pushed
    b.holding = True
    b.round()
    assert rows() == [] and broker.queue_size("default") == 2
    b.stopped.set()
    b._finish()  # a stopping relay hands the lease on at once
    assert a.round() is False and a.holding


def test_unique_jobs_take_their_lock_when_relayed(broker, prefix, outbox_on):
    with transaction.atomic():
        first = UntilExecutedJob.perform_later(f"{prefix}:u", "first")
        second = UntilExecutedJob.perform_later(f"{prefix}:u", "second")
    assert [row.lock for row in rows()] == [first.lock_keys["key"]] * 2
    relay_all(relay())
    assert [p["jid"] for p in queued(broker)] == [first.job_id]  # the second found the lock held
    assert broker.redis.get(first.lock_keys["key"]).decode() == first.job_id
    assert 0 < broker.redis.pttl(first.lock_keys["key"]) <= UntilExecutedJob._lock_ttl_ms
    assert second.job_id not in json.dumps(queued(broker))


def test_scheduled_jobs_go_to_the_schedule(broker, prefix, outbox_on):
    with transaction.atomic():
        job = NoteJob.set(wait=300).perform_later(f"{prefix}:k")
    relay_all(relay())
    [(payload, score)] = broker.redis.zrange(broker.keys.schedule, 0, -1, withscores=True)
    assert json.loads(payload)["jid"] == job.job_id and score == pytest.approx(job.scheduled_at)


def test_a_row_that_cannot_be_routed_becomes_a_dead_job(broker, prefix, outbox_on):
    OutboxJob.objects.create(job_id="j1", queue="no such:queue", payload='{"jid": "j1"}')
    OutboxJob.objects.create(job_id="j2", queue="default", run_at=float("inf"), payload='{"jid": "j2"}')
    relay_all(relay())
    staged = [json.loads(v) for v in broker.redis.hvals(broker.keys.dead)]
    assert sorted((d["job_id"], d["reason"]) for d in staged) == [("j1", "malformed_payload"), ("j2", "malformed_payload")]
    assert rows() == [] and broker.queue_size("default") == 0


@pytest.mark.skipif(not POSTGRES, reason="LISTEN/NOTIFY is PostgreSQL's: elsewhere the relay polls")
def test_on_postgresql_a_commit_wakes_the_relay(broker, prefix, outbox_on, settings):
    # The relay's own waits are 20 s here: only the commit's notification can bring the job sooner.
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "OUTBOX_POLL_INTERVAL": 30, "HEARTBEAT_INTERVAL": 20, "HEARTBEAT_TIMEOUT": 60}
    stopped = threading.Event()
    r = Relay(broker, "default", get_settings(), stopped, "listening")
    r.start()
    try:
        wait_for(lambda: r.listener is not None, 10, "the relay listens")
        time.sleep(0.5)  # let it settle into its 20-second wait
        with transaction.atomic():
            NoteJob.perform_later(f"{prefix}:k", 1)
        wait_for(lambda: broker.queue_size("default") == 1, 10, "the job relayed on the commit's notification")
    finally:
        stopped.set()
        r.join(10)
    assert rows() == []


# -- visible: checks, admin, dashboard -------------------------------------------------------------


@pytest.mark.parametrize("key,value,code", [
    ("OUTBOX", "yes", "async_jobs.E050"),
    ("OUTBOX_DATABASES", "default", "async_jobs.E051"),
    ("OUTBOX_DATABASES", ["default", "ledger"], "async_jobs.E051"),
    ("OUTBOX_POLL_INTERVAL", 0, "async_jobs.E005"),
])
def test_bad_outbox_settings_fail_the_check(settings, key, value, code):
    from django_async_jobs.checks import check_settings

    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, key: value}
    assert code in [e.id for e in check_settings()]


def test_the_check_warns_while_the_outbox_migration_has_not_run(outbox_on):
    from django.db.migrations.recorder import MigrationRecorder

    from django_async_jobs.checks import check_outbox

    assert check_outbox() == []
    recorder = MigrationRecorder(connection)
    recorder.record_unapplied("django_async_jobs", "0004_outboxjob")
    try:
        [warning] = check_outbox()
    finally:
        recorder.record_applied("django_async_jobs", "0004_outboxjob")
    assert warning.id == "async_jobs.W050" and "'default'" in warning.msg
    assert warning.hint == "Run: python manage.py migrate django_async_jobs --database default"
    outbox_on.ASYNC_JOBS = {**outbox_on.ASYNC_JOBS, "OUTBOX": False}
    recorder.record_unapplied("django_async_jobs", "0004_outboxjob")
    try:
        assert check_outbox() == []  # not in use: nothing to say
    finally:
        recorder.record_applied("django_async_jobs", "0004_outboxjob")


@pytest.fixture
def staff(client):
    from django.contrib.auth.models import Permission, User

    user = User.objects.create_user("staff", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_outboxjob"))
    client.force_login(user)
    return user


def test_the_admin_lists_waiting_jobs_read_only_with_count_and_oldest_age(client, staff, prefix, outbox_on):
    with transaction.atomic():
        job = NoteJob.perform_later(f"{prefix}:k", 1)
        NoteJob.set(wait=60).perform_later(f"{prefix}:k", 2)
    OutboxJob.objects.filter(job_id=job.job_id).update(created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 300)))
    response = client.get("/admin/django_async_jobs/outboxjob/")
    assert response.status_code == 200
    assert response.context["title"] == "2 jobs in the outbox, the oldest waiting for 5\xa0minutes"
    assert NoteJob.job_name.encode() in response.content and job.job_id.encode() in response.content
    row = OutboxJob.objects.get(job_id=job.job_id)
    detail = client.get(f"/admin/django_async_jobs/outboxjob/{row.pk}/change/")
    assert detail.status_code == 200 and b'name="_save"' not in detail.content
    assert client.post(f"/admin/django_async_jobs/outboxjob/{row.pk}/delete/").status_code == 403
    assert client.get("/admin/django_async_jobs/outboxjob/add/").status_code == 403


def test_the_admin_needs_the_view_permission(client, prefix, outbox_on):
    from django.contrib.auth.models import User

    client.force_login(User.objects.create_user("other", is_staff=True))
    assert client.get("/admin/django_async_jobs/outboxjob/").status_code == 403


def test_the_dashboard_shows_the_outbox_card(client, staff, broker, prefix, outbox_on):
    with transaction.atomic():
        NoteJob.perform_bulk([(f"{prefix}:k", i) for i in range(3)])
    OutboxJob.objects.update(created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 120)))
    response = client.get("/admin/django_async_jobs/dashboard/")
    assert response.context["outbox"] == {"outbox": 3, "outbox_age": "2 min ago"}
    assert b'data-stat="outbox">3<' in response.content
    assert b"/admin/django_async_jobs/outboxjob/" in response.content
    stats = client.get("/admin/django_async_jobs/dashboard/stats.json").json()["stats"]
    assert (stats["outbox"], stats["outbox_age"]) == (3, "2 min ago")


def test_without_the_outbox_the_dashboard_has_no_card(client, staff, broker):
    response = client.get("/admin/django_async_jobs/dashboard/")
    assert response.context["outbox"] == {} and b'data-stat="outbox"' not in response.content
    assert "outbox" not in client.get("/admin/django_async_jobs/dashboard/stats.json").json()["stats"]
