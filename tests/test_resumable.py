"""Resumable jobs (``IterableJob``, steps, checkpoints) and cancelling a job, on a real Redis and
database with real workers: in this process, and ``runworker`` processes that are stopped with
SIGTERM or killed with SIGKILL in the middle of a job."""

import json
import logging
import signal
import time

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import connection

from django_async_jobs import ApplicationJob, IterableJob, api, iterable, signals
from django_async_jobs.checks import check_settings
from django_async_jobs.models import JobProgress
from django_async_jobs.serialization import SerializationError
from django_async_jobs.worker.launcher import Worker
from tests.helpers import fetch, registered, wait_for
from tests.testapp.jobs import IncrJob
from tests.testapp.resumable_jobs import (
    AtomicStepsJob,
    ErrorsJob,
    ItemsJob,
    ShortRunsJob,
    StepsJob,
    WatchJob,
)

START_TIMEOUT = 20


@pytest.fixture
def key(prefix):
    return f"{prefix}:items"


def done(broker, key):
    """The items done, in order (an item done twice shows twice)."""
    return [int(entry.split()[0]) for entry in _texts(broker, key)]


def done_at(broker, key):
    return [(int(item), float(at)) for item, at in (entry.split() for entry in _texts(broker, key))]


def builds(broker, key):
    """The cursor each execution started from."""
    return [json.loads(entry) for entry in _texts(broker, f"{key}:builds")]


def events(broker, key):
    return _texts(broker, f"{key}:events")


def _texts(broker, key):
    return [item.decode() for item in broker.redis.lrange(key, 0, -1)]


def queued(broker, queue="default"):
    return [json.loads(p) for p in broker.redis.zrange(broker.keys.queue(queue), 0, -1)]


def progress_row(job, status):
    return wait_for(lambda: JobProgress.objects.filter(job_id=job.job_id, status=status).first(), 20, f"progress {status}")


def database_url():
    """The test database, as DATABASE_URL gives it to a worker process (tests/settings.py)."""
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}:{db['PASSWORD'] or ''}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


@pytest.fixture
def collect():
    """``collect(signal)``: the keyword arguments of every ``signal`` sent during the test."""
    connected = []

    def start(sig):
        seen = []
        receiver = lambda sender, **kwargs: seen.append({"sender": sender, **kwargs})  # noqa: E731
        sig.connect(receiver, weak=False)
        connected.append((sig, receiver))
        return seen

    yield start
    for sig, receiver in connected:
        sig.disconnect(receiver)


# -- iterations ----------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_an_error_in_iteration_500_is_retried_from_500(broker, worker, key):
    job = ItemsJob.perform_later(key, 1000, 0.0, 500)
    wait_for(lambda: len(done(broker, key)) == 1000, 60, "every item")
    assert done(broker, key) == list(range(1000))  # each once, in order: 500 failed, then was done
    assert builds(broker, key) == [None, 500]  # the retry started after item 499
    row = progress_row(job, "completed")
    assert (row.total, row.processed, row.percent, row.cursor, row.error_count) == (1000, 1000, 100.0, 1000, 0)
    assert broker.redis.hlen(broker.keys.dead) == 0 and broker.redis.zcard(broker.keys.retry) == 0


@pytest.mark.django_db(transaction=True)
def test_max_iteration_runtime_puts_a_long_run_back_to_go_on(broker, worker, key, caplog):
    with caplog.at_level(logging.INFO, "django_async_jobs.job"):
        job = ShortRunsJob.perform_later(key, 60, 0.03)
        row = progress_row(job, "completed")
    assert done(broker, key) == list(range(60))
    starts = builds(broker, key)
    assert len(starts) >= 3 and starts[0] is None and starts[1:] == sorted(starts[1:])  # 1.8 s of items in 0.5 s runs
    assert (row.processed, row.total) == (60, 60)
    assert caplog.text.count("outcome=interrupted") == len(starts) - 1
    assert "interrupted (max_iteration_runtime reached)" in caplog.text
    assert broker.stat("failed") == 0 and broker.redis.hlen(broker.keys.recoveries) == 0


@pytest.mark.django_db(transaction=True)
def test_progress_goes_on_across_executions_errors_counted_once(broker, worker, key):
    job = ErrorsJob.perform_later(key, 30)
    row = progress_row(job, "completed_with_errors")
    assert len(builds(broker, key)) >= 2  # 0.9 s of items in runs of 0.3 s
    assert (row.processed, row.total, row.error_count) == (30, 30, 10)
    assert [d["row"] for d in row.error_details] == list(range(0, 30, 3))


@pytest.mark.django_db(transaction=True)
def test_a_job_stopped_by_its_worker_goes_on_elsewhere_and_its_steps_are_not_done_again(broker, key):
    first = Worker(concurrency=1)
    first.start()
    try:
        job = StepsJob.perform_later(key, 200, None, 0.01)
        wait_for(lambda: len(_texts(broker, key)) > 20, 20, "twenty rows")
    finally:
        assert first.stop(timeout=10) is True
    [payload] = queued(broker)
    cont = payload["continuation"]
    assert (payload["jid"], cont["completed"], cont["step"]) == (job.job_id, ["first"], "rows")
    assert cont["cursor"] == len(_texts(broker, key)) - 1  # the row in progress finished, then it stopped
    assert "retry_count" not in payload and broker.redis.hlen(broker.keys.recoveries) == 0
    second = Worker(concurrency=1)
    second.start()
    try:
        wait_for(lambda: _texts(broker, key)[-1:] == ["last"], 30, "the last step")
    finally:
        second.stop(timeout=5)
    assert _texts(broker, key) == ["first", *(f"row {i}" for i in range(200)), "last"]
    assert builds(broker, key) == [0, cont["cursor"]]
    assert events(broker, key) == ["execution 1 resumptions 0", "execution 2 resumptions 1"]


def test_an_error_in_a_step_is_retried_from_its_cursor_and_completed_steps_are_skipped(broker, worker, key):
    StepsJob.perform_later(key, 5, 3)
    wait_for(lambda: _texts(broker, key)[-1:] == ["last"], 30, "the last step")
    assert _texts(broker, key) == ["first", "row 0", "row 1", "row 2", "row 3", "row 4", "last"]
    assert builds(broker, key) == [0, 3]
    assert events(broker, key) == ["execution 1 resumptions 0", "execution 2 resumptions 1"]


@pytest.mark.django_db(transaction=True)
def test_progress_is_saved_in_flight_every_checkpoint_interval(broker, settings, key):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "CHECKPOINT_INTERVAL": 0}
    worker = Worker(concurrency=1)
    worker.start()
    try:
        job = ItemsJob.perform_later(key, 300, 0.02)
        wait_for(lambda: len(done(broker, key)) >= 10, 20, "ten items")
        before = len(done(broker, key))
        [raw] = broker.inflight(worker.process_id).values()
        after = len(done(broker, key))
        saved = json.loads(raw)["continuation"]
        # Saved at the checkpoint after each item: the last one recorded, or the one before it
        # when its checkpoint had not run yet.
        assert saved["done"] == saved["cursor"] and before - 1 <= saved["cursor"] <= after
        assert json.loads(raw)["jid"] == job.job_id
    finally:
        worker.stop(timeout=10)


# -- crashes and deploys ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_sigterm_mid_iteration_then_a_new_worker_does_every_item_once(broker, spawn, key, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", database_url())
    a = spawn("-c", "1")
    wait_for(lambda: registered(broker), START_TIMEOUT, "worker A registered")
    job = ItemsJob.perform_later(key, 300, 0.02)
    wait_for(lambda: len(done(broker, key)) >= 40, 30, "forty items")
    a.send(signal.SIGTERM)
    assert a.wait(30) == 0, a.output()
    assert "interrupted (the worker is stopping)" in a.output()
    [payload] = queued(broker)
    assert payload["continuation"]["cursor"] == len(done(broker, key))  # at most the item in progress: it finished
    spawn("-c", "1")
    row = progress_row(job, "completed")
    assert done(broker, key) == list(range(300))  # every item once, none skipped
    assert builds(broker, key) == [None, payload["continuation"]["cursor"]]
    assert (row.processed, row.total) == (300, 300)
    assert broker.redis.hlen(broker.keys.recoveries) == 0


@pytest.mark.django_db(transaction=True)
def test_kill_9_mid_iteration_repeats_only_what_the_last_checkpoint_interval_did(broker, spawn, key, monkeypatch):
    interval = 1.0
    monkeypatch.setenv("DATABASE_URL", database_url())
    a = spawn("-c", "1", overrides={"CHECKPOINT_INTERVAL": interval})
    wait_for(lambda: registered(broker), START_TIMEOUT, "worker A registered")
    job = ItemsJob.perform_later(key, 400, 0.02)
    wait_for(lambda: len(done(broker, key)) >= 150, 60, "three seconds of items")
    a.send(signal.SIGKILL)
    a.wait(10)
    spawn("-c", "1", overrides={"CHECKPOINT_INTERVAL": interval})  # recovers A's job once A's beat is old
    row = progress_row(job, "completed")
    records = done_at(broker, key)
    resumed_at = builds(broker, key)[1]
    assert resumed_at is not None  # from a saved cursor, not from the start
    by_a = len(records) - (400 - resumed_at)  # the new worker did the items from resumed_at on
    assert [item for item, _ in records] == list(range(by_a)) + list(range(resumed_at, 400))  # none skipped
    assert 0 < resumed_at <= by_a
    repeated = records[resumed_at:by_a]  # done before the kill, and again after it
    if repeated:  # all done after the last save: within one CHECKPOINT_INTERVAL
        assert repeated[-1][1] - repeated[0][1] < interval
    assert (row.processed, row.total) == (400, 400)


@pytest.mark.django_db(transaction=True)
def test_a_checkpoint_inside_a_transaction_is_refused_before_the_cursor_moves(broker, worker, key):
    AtomicStepsJob.perform_later(key)
    [retry] = wait_for(lambda: [json.loads(p) for p in broker.redis.zrange(broker.keys.retry, 0, -1)], 20, "a retry")
    assert retry["error_class"] == "CheckpointError" and "inside transaction.atomic()" in retry["error_message"]
    assert retry["continuation"] == {"step": "rows", "cursor": 0}  # the row rolled back; so did its cursor


# -- steps and classes -----------------------------------------------------------------------------


def test_steps_outside_a_worker_run_to_the_end(broker, key):
    assert StepsJob.perform_now(key, 3) == "done"
    assert _texts(broker, key) == ["first", "row 0", "row 1", "row 2", "last"]


def test_a_step_met_twice_or_out_of_order_is_refused(broker, key):
    class Twice(ApplicationJob):
        def perform(self):
            self.step(self.a)
            self.step(self.a)

        def a(self):
            pass

    with pytest.raises(ValueError, match="step 'a' came twice"):
        Twice.perform_now()

    class Renamed(ApplicationJob):
        def perform(self):
            self.step(self.b)

        def b(self, step):
            pass

    job = Renamed()
    job.payload = {"continuation": {"completed": [], "step": "a", "cursor": 4}}
    with pytest.raises(ValueError, match="step 'a' was in progress"):
        job.perform_now()

    class TwoArguments(ApplicationJob):
        def perform(self):
            self.step(self.c)

        def c(self, step, other):
            pass

    with pytest.raises(TypeError, match="must take no argument, or one"):
        TwoArguments.perform_now()
    with pytest.raises(TypeError, match="needs a name"):
        Renamed().step(lambda: None)


def test_a_continuation_no_worker_wrote_is_ignored(broker, key, caplog):
    job = StepsJob(key, 2)
    job.payload = {"continuation": {"completed": "first", "cursor": 1, "done": -1, "extra": 1}}
    with caplog.at_level(logging.WARNING, "django_async_jobs.job"):
        job.perform_now()
    assert "holds values no worker wrote" in caplog.text
    assert _texts(broker, key) == ["first", "row 0", "row 1", "last"]  # from the start: redone, never skipped


def test_an_iterable_job_is_checked_when_defined():
    with pytest.raises(ImproperlyConfigured, match="define those instead of perform"):
        class WithPerform(IterableJob):
            def perform(self):
                pass

    with pytest.raises(ImproperlyConfigured, match="cursor as a keyword"):
        class NoCursor(IterableJob):
            def build_enumerator(self, a):
                return []

    with pytest.raises(ImproperlyConfigured, match="must not be async"):
        class Async(IterableJob):
            def build_enumerator(self, *, cursor):
                return []

            async def each_iteration(self, item):
                pass

    with pytest.raises(ImproperlyConfigured, match="max_iteration_runtime"):
        class Negative(IterableJob):
            max_iteration_runtime = -1

            def build_enumerator(self, *, cursor):
                return []

    class Fine(IterableJob):
        def build_enumerator(self, category, *, cursor):
            return self.list_enumerator([], cursor=cursor)

    with pytest.raises(TypeError, match="cannot take these arguments"):
        Fine.perform_later()  # the arguments fit build_enumerator, without its cursor


@pytest.mark.django_db
def test_a_cursor_that_is_not_json_is_refused_with_its_type(broker):
    class UuidCursors(IterableJob):
        def build_enumerator(self, *, cursor):
            import uuid

            return [("item", uuid.uuid4())]

        def each_iteration(self, item):
            pass

    with pytest.raises(SerializationError, match="UuidCursors.build_enumerator.*UUID.*strict JSON"):
        UuidCursors.perform_now()


def test_the_checkpoint_interval_setting_is_checked(settings):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "CHECKPOINT_INTERVAL": -1}
    assert [e.id for e in check_settings()] == ["async_jobs.E013"]
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "CHECKPOINT_INTERVAL": 0}
    assert check_settings() == []


# -- cancelling -------------------------------------------------------------------------------------


def test_cancelling_a_queued_job_drops_it(broker, key, collect):
    cancelled = collect(signals.job_cancelled)
    job = ItemsJob.perform_later(key, 3)
    other = ItemsJob.perform_later(key, 3)
    found = api.cancel(job.job_id)
    assert (found.removed, found.running) == (["queue default"], [])
    assert [p["jid"] for p in queued(broker)] == [other.job_id]
    assert broker.redis.exists(broker.keys.cancel(job.job_id))
    assert [(c["sender"], c["job"], c["job_id"]) for c in cancelled] == [(ItemsJob, None, job.job_id)]
    assert broker.redis.hlen(broker.keys.dead) == 0


def test_cancelling_a_scheduled_job_or_a_retry_drops_it(broker, key, collect):
    cancelled = collect(signals.job_cancelled)
    scheduled = ItemsJob.set(wait=600).perform_later(key, 3)
    assert api.cancel(scheduled.job_id).removed == ["scheduled"]
    retried = ItemsJob(key, 3)
    broker.redis.zadd(broker.keys.retry, {json.dumps({**retried.serialize(), "retry_count": 1}): time.time() + 600})
    assert api.cancel(retried.job_id).removed == ["retries"]
    assert broker.redis.zcard(broker.keys.schedule) == broker.redis.zcard(broker.keys.retry) == 0
    assert [c["job_id"] for c in cancelled] == [scheduled.job_id, retried.job_id]
    gone = api.cancel(scheduled.job_id)
    assert not gone.found and broker.redis.ttl(broker.keys.cancel(scheduled.job_id)) > 6 * 86400
    with pytest.raises(ValueError, match="is not a job id"):
        api.cancel("a*b")


@pytest.mark.django_db(transaction=True)
def test_cancelling_a_running_iterable_job_stops_it_at_its_next_checkpoint(broker, one_thread_worker, key, collect):
    cancelled = collect(signals.job_cancelled)
    job = ItemsJob.perform_later(key, 500, 0.02)
    wait_for(lambda: len(done(broker, key)) >= 5, 20, "five items")
    found = api.cancel(job.job_id)
    assert (found.removed, found.running) == ([], [one_thread_worker.process_id])
    row = progress_row(job, "cancelled")
    wait_for(lambda: cancelled, 10, "the signal")
    assert len(done(broker, key)) < 500 and row.processed == len(done(broker, key))
    assert [(c["sender"], c["job"].job_id) for c in cancelled] == [(ItemsJob, job.job_id)]
    wait_for(lambda: broker.inflight(one_thread_worker.process_id) == {}, 10, "settled")
    assert broker.redis.hlen(broker.keys.dead) == 0 and broker.stat("failed") == 0
    assert queued(broker) == [] and broker.redis.zcard(broker.keys.retry) == 0


def test_cancelling_a_running_stepped_job_stops_it_at_its_next_checkpoint(broker, one_thread_worker, key, caplog):
    with caplog.at_level(logging.INFO, "django_async_jobs.job"):
        job = StepsJob.perform_later(key, 500, None, 0.02)
        wait_for(lambda: len(_texts(broker, key)) >= 5, 20, "five rows")
        api.cancel(job.job_id)
        wait_for(lambda: "outcome=cancelled" in caplog.text, 20, "the job stopped")
    assert "last" not in _texts(broker, key) and len(_texts(broker, key)) < 500
    assert f"{job.job_id}: cancelled, it stops in step 'rows' at cursor" in caplog.text


def test_a_plain_running_job_sees_self_cancelled(broker, one_thread_worker, key):
    job = WatchJob.perform_later(key)
    wait_for(lambda: events(broker, key) == ["started"], 20, "the job started")
    api.cancel(job.job_id)
    wait_for(lambda: events(broker, key) == ["started", "saw cancelled"], 20, "self.cancelled")
    assert WatchJob(key).cancelled is False  # outside a worker


def test_an_async_job_on_the_event_loop_sees_self_cancelled_and_ends_cancelled(broker, one_thread_worker, key, collect):
    from tests.testapp.resumable_jobs import AsyncWatchJob

    cancelled = collect(signals.job_cancelled)
    job = AsyncWatchJob.perform_later(key)
    wait_for(lambda: events(broker, key) == ["started"], 20, "the job started")
    assert one_thread_worker.event_loop.running == 1  # on the loop, not on a thread
    api.cancel(job.job_id)
    wait_for(lambda: cancelled, 20, "the job cancelled")
    assert events(broker, key) == ["started", "saw cancelled"] and cancelled[0]["job"].job_id == job.job_id


def test_a_cancelled_job_a_worker_fetched_but_did_not_start_is_dropped(broker, settings, key, collect):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "PREFETCH": 1}
    cancelled = collect(signals.job_cancelled)
    running = WatchJob.perform_later(f"{key}:first")
    waiting = WatchJob.perform_later(key)
    worker = Worker(concurrency=1)  # one fetch takes both: one runs, one waits in the buffer
    worker.start()
    try:
        wait_for(lambda: len(broker.inflight(worker.process_id)) == 2, 20, "the second job waiting in the buffer")
        assert api.cancel(waiting.job_id).running == [worker.process_id]
        wait_for(lambda: waiting.job_id in worker.state.cancelled, 20, "the heart read the mark")
        api.cancel(running.job_id)  # the first job ends; the second one's turn comes
        wait_for(lambda: len(cancelled) == 2, 20, "both cancelled")
    finally:
        worker.stop(timeout=5)
    assert events(broker, key) == []  # never started
    assert [c["job_id"] for c in cancelled] == [running.job_id, waiting.job_id]


# -- enumerators ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_a_queryset_is_walked_by_primary_key_a_page_at_a_time_never_with_offset():
    from django.contrib.auth.models import User
    from django.test.utils import CaptureQueriesContext

    users = [User.objects.create(username=f"u{i:02d}") for i in range(25)]
    everyone = User.objects.filter(username__startswith="u").order_by("-username")  # its order is replaced by pk
    with CaptureQueriesContext(connection) as queries:
        walked = iterable.queryset_enumerator(everyone, batch_size=10)
        pairs = list(walked)
    assert walked.total == 25
    assert [(row.pk, cursor) for row, cursor in pairs] == [(u.pk, u.pk) for u in users]
    sql = [q["sql"].upper() for q in queries.captured_queries]
    assert len(sql) == 4 and "COUNT(" in sql[0]  # a count, then pages of 10, 10 and 5
    assert all("OFFSET" not in s and "LIMIT 10" in s and "ORDER BY" in s for s in sql[1:])
    assert all('"AUTH_USER"."ID" >' in s for s in sql[2:])
    users[13].delete()  # rows deleted (or added) meanwhile shift nothing
    resumed = iterable.queryset_enumerator(everyone, cursor=users[11].pk, batch_size=10, count=False)
    assert resumed.total is None
    assert [cursor for _, cursor in resumed] == [u.pk for u in users[12:] if u.pk != users[13].pk]
    with pytest.raises(TypeError, match="sliced"):
        iterable.queryset_enumerator(everyone[:5])
    with pytest.raises(ValueError, match="primary key"):
        iterable.queryset_enumerator(everyone, cursor=[1])


@pytest.mark.django_db
def test_an_iterable_job_over_a_queryset_resumes_after_the_last_row_done():
    from django.contrib.auth.models import User

    seen = []

    class Rename(IterableJob):
        def build_enumerator(self, prefix, *, cursor):
            return self.queryset_enumerator(User.objects.filter(username__startswith=prefix), cursor=cursor, batch_size=2)

        def each_iteration(self, user, prefix):
            seen.append(user.username)

    users = [User.objects.create(username=f"r{i}") for i in range(5)]
    job = Rename("r")
    job.payload = {"continuation": {"cursor": users[2].pk, "done": 3}}
    job.perform_now()
    assert seen == ["r3", "r4"]
    row = JobProgress.objects.get(job_id=job.job_id)
    assert (row.status, row.processed, row.total, row.cursor) == ("completed", 5, 5, users[4].pk)


def test_a_list_a_csv_file_and_batches_go_on_after_their_cursor(tmp_path):
    import io

    items = list("abcdefghij")
    assert list(iterable.list_enumerator(items)) == [(x, i + 1) for i, x in enumerate(items)]
    assert list(iterable.list_enumerator(items, cursor=8)) == [("i", 9), ("j", 10)]
    assert list(iterable.list_enumerator(items, cursor=10)) == []
    with pytest.raises(ValueError, match="at most 10"):
        iterable.list_enumerator(items, cursor=11)
    with pytest.raises(TypeError, match="list or a tuple"):
        iterable.list_enumerator(iter(items))

    path = tmp_path / "people.csv"
    path.write_text('name,city\nAna,"Porto, PT"\nBo,Oslo\nCy,Lima\n')
    assert list(iterable.csv_enumerator(path)) == [
        ({"name": "Ana", "city": "Porto, PT"}, 1), ({"name": "Bo", "city": "Oslo"}, 2), ({"name": "Cy", "city": "Lima"}, 3),
    ]
    assert list(iterable.csv_enumerator(str(path), cursor=2)) == [({"name": "Cy", "city": "Lima"}, 3)]
    assert list(iterable.csv_enumerator(io.StringIO("1;2\n3;4\n"), header=False, delimiter=";", cursor=1)) == [(["3", "4"], 2)]
    assert iterable.csv_enumerator(path).total is None

    batches = iterable.batch_enumerator(iterable.list_enumerator(items), size=4)
    assert batches.total == 3
    assert list(batches) == [(list("abcd"), 4), (list("efgh"), 8), (list("ij"), 10)]
    assert list(iterable.batch_enumerator(iterable.list_enumerator(items, cursor=8), size=4)) == [(list("ij"), 10)]
    with pytest.raises(ValueError, match="size"):
        iterable.batch_enumerator(items, size=0)


@pytest.mark.django_db
def test_build_enumerator_must_give_pairs(broker):
    class NotPairs(IterableJob):
        def build_enumerator(self, *, cursor):
            return [1, 2]

        def each_iteration(self, item):
            pass

    class NotIterable(NotPairs):
        def build_enumerator(self, *, cursor):
            return 3

    class Nothing(NotPairs):
        def build_enumerator(self, *, cursor):
            return None

    with pytest.raises(TypeError, match=r"must yield \(item, cursor\) pairs, got int"):
        NotPairs.perform_now()
    with pytest.raises(TypeError, match=r"must return \(item, cursor\) pairs, got a int"):
        NotIterable.perform_now()
    assert Nothing.perform_now() is None


# -- storage ----------------------------------------------------------------------------------------


def test_a_checkpoint_replaces_the_in_flight_payload_only_while_the_job_is_there(broker):
    IncrJob.perform_later("k")
    [(field, raw)] = fetch(broker, "p1", ["default"], 5)
    saved = json.dumps({**json.loads(raw), "continuation": {"cursor": 2, "done": 2}}).encode()
    assert broker.checkpoint("p1", field.decode(), saved) is True
    assert broker.inflight("p1") == {field: saved}
    broker.release("p1", 3)  # handed back: the saved payload goes back to the queue
    assert [p["continuation"] for p in queued(broker)] == [{"cursor": 2, "done": 2}]
    assert broker.checkpoint("p1", field.decode(), raw) is False  # no longer ours: nothing written
    assert broker.inflight("p1") == {}


def test_the_heart_finds_the_cancelled_jobs_among_those_its_process_holds(broker):
    jobs = [IncrJob.perform_later("k") for _ in range(3)]
    fetch(broker, "p1", ["default"], 5)
    assert broker.cancelled_in_flight("p1") == frozenset() and broker.cancelled_in_flight("idle") == frozenset()
    broker.mark_cancelled(jobs[1].job_id, 60)
    broker.mark_cancelled("not-held", 60)
    assert broker.cancelled_in_flight("p1") == {jobs[1].job_id}
    assert 0 < broker.redis.ttl(broker.keys.cancel(jobs[1].job_id)) <= 60


def test_the_cancellation_layer_sits_inside_the_retry_rules_and_outside_run_locks():
    from django_async_jobs.locks import UniqueJobs
    from django_async_jobs.resumable import Cancellation
    from django_async_jobs.retries import RetryPolicy
    from django_async_jobs.worker.processor import WORKER_LAYERS, JobSignals

    kinds = [type(layer) for layer in WORKER_LAYERS]
    assert kinds.index(JobSignals) < kinds.index(RetryPolicy) == kinds.index(Cancellation) - 1 == kinds.index(UniqueJobs) - 2


def test_the_iterable_base_class_is_no_job_of_its_own_for_the_checks(settings):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "QUEUES": ["low"]}
    assert IterableJob not in [error.obj for error in check_settings()]


@pytest.mark.django_db(transaction=True)
def test_a_crafted_continuation_is_ignored_or_fails_the_job_never_the_worker(broker, worker, key):
    def push(continuation, tag):
        job = ItemsJob(f"{key}:{tag}", 3)
        job.queue_name = "default"
        broker.push([json.dumps({**job.serialize(), "continuation": continuation}, separators=(",", ":"))])
        return job

    ignored = push("not an object", "ignored")
    wrong = push({"cursor": "x", "done": 1}, "wrong")
    wait_for(lambda: done(broker, f"{key}:ignored") == [0, 1, 2], 20, "the job run from the start")
    [retried] = wait_for(lambda: [json.loads(p) for p in broker.redis.zrange(broker.keys.retry, 0, -1)], 20, "a retry")
    assert (retried["jid"], retried["error_class"]) == (wrong.job_id, "ValueError")
    assert "the cursor must be None or an integer" in retried["error_message"]
    assert progress_row(ignored, "completed").processed == 3
    wait_for(lambda: broker.inflight(worker.process_id) == {}, 10, "nothing left in flight")
    assert all(thread.is_alive() for thread in worker.processors)
