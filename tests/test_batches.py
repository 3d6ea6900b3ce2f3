"""Batches on a real Redis: each callback rule, retries, nesting, chains, cancelling, and
callbacks exactly once with worker processes racing and being killed."""

import json
import signal
import time

import pytest

from django_async_jobs import Batch, chain, chord
from django_async_jobs.batches import BatchGone
from tests.helpers import registered, wait_for
from tests.testapp.batch_jobs import (
    AsyncMemberJob,
    CallbackRecordJob,
    CancelAwareJob,
    MemberJob,
    SpawnJob,
    StepJob,
)
from tests.testapp.flow_jobs import ExpiringJob

pytestmark = pytest.mark.django_db(transaction=True)  # dead jobs are written to the database


def callbacks(broker, key):
    return [json.loads(raw) for raw in broker.redis.lrange(f"{key}:callbacks", 0, -1)]


def events(broker, key, bid=None):
    return [c["event"] for c in callbacks(broker, key) if bid is None or c["batch_id"] == bid]


def runs(broker, key):
    return [raw.decode() for raw in broker.redis.lrange(key, 0, -1)]


def watched(key, description=""):
    batch = Batch(description=description)
    for event in ("complete", "success", "death"):
        batch.on(event, CallbackRecordJob, key, event)
    return batch


def test_complete_and_success_fire_once_when_every_job_succeeded(worker, broker, prefix):
    key = f"{prefix}:runs"
    batch = Batch(description="Import #7")
    batch.on("complete", CallbackRecordJob, key, "complete")
    batch.on("success", CallbackRecordJob, key, "success", notify=True)
    with batch.jobs():
        MemberJob.perform_bulk([(key, f"j{i}") for i in range(5)])
        MemberJob.perform_later(key, "single")
    wait_for(lambda: len(callbacks(broker, key)) == 2, 20, "both callbacks")
    time.sleep(0.3)  # nothing more arrives
    found = callbacks(broker, key)
    assert [c["event"] for c in found] in (["complete", "success"], ["success", "complete"])
    assert {c["batch_id"] for c in found} == {batch.bid}
    assert next(c for c in found if c["event"] == "success")["options"] == {"notify": True}
    assert sorted(runs(broker, key)) == sorted([f"run:j{i}" for i in range(5)] + ["run:single"])
    status = Batch.status(batch.bid)
    assert status["description"] == "Import #7"
    assert (status["total"], status["pending"], status["succeeded"], status["failures"], status["dead"]) == (6, 0, 6, 0, 0)
    assert status["complete"] and status["success"] and status["death_at"] is None
    assert status["callbacks"]["success"]["jobs"] == [CallbackRecordJob.job_name]
    assert status["callbacks"]["success"]["fired_at"] is not None
    assert status["callbacks"]["death"] == {"jobs": [], "fired_at": None}
    assert 0 < broker.redis.ttl(broker.keys.batch(batch.bid)) <= 86400  # BATCH_RETENTION once finished


def test_a_callback_runs_on_the_queue_and_priority_set_gives_it(broker, prefix):
    batch = Batch()
    batch.on("success", CallbackRecordJob.set(queue="low", priority=7), "k", "x")
    with batch.jobs():
        pass
    (payload, score), = broker.redis.zrange(broker.keys.queue("low"), 0, -1, withscores=True)
    data = json.loads(payload)
    assert (data["job"], data["priority"], data["fired_by"]) == (CallbackRecordJob.job_name, 7, batch.bid)


def test_an_empty_batch_fires_complete_and_success_at_once(worker, broker, prefix):
    key = f"{prefix}:runs"
    batch = watched(key)
    with batch.jobs():
        pass
    wait_for(lambda: sorted(events(broker, key)) == ["complete", "success"], 20, "the callbacks")
    assert Batch.status(batch.bid)["total"] == 0


def test_no_callback_fires_while_the_block_is_open(worker, broker, prefix):
    key = f"{prefix}:runs"
    batch = watched(key)
    with batch.jobs():
        first = MemberJob.perform_later(key, "first")
        member = broker.keys.batch(batch.bid), f"j:{first.job_id}"
        wait_for(lambda: broker.redis.hget(*member) in (b"s", b"S"), 20, "the first job settled")
        time.sleep(0.3)
        assert events(broker, key) == []
        MemberJob.perform_later(key, "second")
    wait_for(lambda: sorted(events(broker, key)) == ["complete", "success"], 20, "the callbacks")
    assert Batch.status(batch.bid)["total"] == 2


def test_a_job_failing_into_its_retries_has_run_for_complete_and_succeeds_later(worker, broker, prefix):
    key = f"{prefix}:runs"
    batch = watched(key)
    with batch.jobs():
        MemberJob.perform_later(key, "flaky", fail=2)
        MemberJob.perform_later(key, "fine")
    wait_for(lambda: "success" in events(broker, key), 30, "success after the retries")
    assert events(broker, key) == ["complete", "success"]
    complete = callbacks(broker, key)[0]["status"]
    assert complete["pending"] >= 1  # complete came while the flaky job was still in its retries
    assert runs(broker, key).count("run:flaky") == 3
    status = Batch.status(batch.bid)
    assert (status["total"], status["pending"], status["failures"], status["dead"]) == (2, 0, 2, 0)


def test_death_fires_once_and_success_never(worker, broker, prefix):
    key = f"{prefix}:runs"
    batch = watched(key)
    with batch.jobs():
        MemberJob.perform_later(key, "doomed", die=True)
        MemberJob.perform_later(key, "doomed too", die=True)
        MemberJob.perform_later(key, "fine")
    wait_for(lambda: Batch.status(batch.bid)["dead"] == 2, 30, "both jobs dead")
    wait_for(lambda: sorted(events(broker, key)) == ["complete", "death"], 20, "complete and death")
    time.sleep(0.5)
    assert sorted(events(broker, key)) == ["complete", "death"]
    status = Batch.status(batch.bid)
    assert (status["total"], status["pending"], status["failures"], status["dead"]) == (3, 2, 6, 2)
    assert status["complete"] and not status["success"]
    assert 0 < broker.redis.ttl(broker.keys.batch(batch.bid)) <= 86400  # finished: only dead jobs left


def test_discarded_jobs_count_as_done(worker, broker, prefix):
    key = f"{prefix}:runs"
    batch = watched(key)
    with batch.jobs():
        MemberJob.perform_later(key, "unwanted", discard=True)
    wait_for(lambda: sorted(events(broker, key)) == ["complete", "success"], 20, "the callbacks")
    assert Batch.status(batch.bid)["failures"] == 0


def test_expired_and_async_jobs_count_too(worker, broker, prefix):
    key = f"{prefix}:runs"
    batch = watched(key)
    with batch.jobs():
        # Due two minutes ago with a minute to live: expired when fetched, done, never ran. (A
        # short expires_in could still be met: an idle worker starts a job within a millisecond.)
        ExpiringJob.set(wait_until=time.time() - 120).perform_later(key)
        AsyncMemberJob.perform_later(key, "async")
    wait_for(lambda: sorted(events(broker, key)) == ["complete", "success"], 20, "the callbacks")
    assert runs(broker, key) == ["run:async"]
    assert Batch.status(batch.bid)["total"] == 2


def test_a_job_enqueued_twice_is_one_member_and_two_enqueues_are_two(worker, broker, prefix):
    key = f"{prefix}:runs"
    batch = watched(key)
    with batch.jobs():
        job = MemberJob(key, "twice")
        job.enqueue()
        job.enqueue()  # the same job id: one member, however often it runs
        MemberJob.perform_later(key, "same")
        MemberJob.perform_later(key, "same")  # two jobs with the same arguments: two members
    wait_for(lambda: sorted(events(broker, key)) == ["complete", "success"], 20, "the callbacks")
    time.sleep(0.3)
    assert sorted(events(broker, key)) == ["complete", "success"]
    assert runs(broker, key).count("run:same") == 2
    assert Batch.status(batch.bid)["total"] == 3


def test_jobs_added_from_inside_a_batch_job_keep_the_batch_open(worker, broker, prefix):
    key = f"{prefix}:runs"
    batch = watched(key)
    with batch.jobs():
        SpawnJob.perform_later(key, 3)
    wait_for(lambda: sorted(events(broker, key)) == ["complete", "success"], 20, "the callbacks")
    assert sorted(runs(broker, key)) == ["run:added0", "run:added1", "run:added2", "run:spawn"]
    success = next(c for c in callbacks(broker, key) if c["event"] == "success")
    assert success["status"]["total"] == 4


def test_a_batch_opened_in_a_batch_job_is_a_child_the_parent_waits_for(worker, broker, prefix):
    key = f"{prefix}:runs"
    parent = watched(key)
    with parent.jobs():
        SpawnJob.perform_later(key, 3, child=True)
    wait_for(lambda: "success" in events(broker, key, parent.bid), 20, "the parent's success")
    assert len([r for r in runs(broker, key) if r.startswith("run:child")]) == 3
    child_bid = next(c["batch_id"] for c in callbacks(broker, key) if c["event"] == "child-success")
    child, status = Batch.status(child_bid), Batch.status(parent.bid)
    assert child["parent"] == parent.bid and child["total"] == 3
    assert status["total"] == 1 and status["children_pending"] == 0
    assert status["success_at"] >= child["success_at"]
    assert status["complete_at"] >= child["complete_at"]


def test_a_child_batch_holds_its_parent_until_it_succeeds(broker, prefix, settings):
    key = f"{prefix}:runs"
    parent = watched(key)
    with parent.jobs():
        child = Batch(description="inner")
        with child.jobs():
            MemberJob.perform_later(key, "inner")
    assert Batch.status(child.bid)["parent"] == parent.bid
    status = Batch.status(parent.bid)
    assert status["total"] == 0 and status["children_pending"] == 1 and not status["complete"]
    from django_async_jobs.worker.launcher import Worker

    w = Worker()
    w.start()
    try:
        wait_for(lambda: sorted(events(broker, key, parent.bid)) == ["complete", "success"], 20, "the parent fires")
    finally:
        w.stop(timeout=2)
    assert Batch.status(child.bid)["success"]


def test_death_in_a_child_batch_reaches_its_parent(worker, broker, prefix):
    key = f"{prefix}:runs"
    parent = watched(key)
    with parent.jobs():
        with Batch(description="inner").jobs():
            MemberJob.perform_later(key, "doomed", die=True)
    wait_for(lambda: "death" in events(broker, key, parent.bid), 30, "the parent's death")
    assert not Batch.status(parent.bid)["success"]


def test_cancel_drops_queued_jobs_tells_running_ones_and_fires_nothing(one_thread_worker, broker, prefix):
    key = f"{prefix}:runs"
    gate = f"{prefix}:gate"
    batch = watched(key)
    with batch.jobs():
        CancelAwareJob.perform_later(key, gate)
        MemberJob.perform_bulk([(key, f"queued{i}") for i in range(3)])
    wait_for(lambda: runs(broker, key) == ["start"], 20, "the first job started")
    assert Batch.cancel(batch.bid) is True
    broker.redis.rpush(gate, 1)
    wait_for(lambda: "cancelled:True" in runs(broker, key), 20, "the running job saw the cancel")
    wait_for(lambda: Batch.status(batch.bid)["pending"] == 0, 20, "every job settled")
    time.sleep(0.5)
    assert runs(broker, key) == ["start", "cancelled:True"]  # the queued ones never ran
    assert events(broker, key) == []
    status = Batch.status(batch.bid)
    assert status["cancelled"] and status["complete"]
    assert status["callbacks"]["complete"]["fired_at"] is None
    assert Batch.cancel("nosuchbatch") is False


def test_chain_runs_each_step_after_the_previous_one_succeeded(worker, broker, prefix):
    key = f"{prefix}:runs"
    bids = chain(StepJob(key, "a"), [StepJob(key, "b1"), StepJob(key, "b2")], StepJob(key, "c"), description="etl")
    assert len(bids) == 3
    wait_for(lambda: len(runs(broker, key)) == 4, 20, "every step")
    order = runs(broker, key)
    assert order[0] == "step:a" and sorted(order[1:3]) == ["step:b1", "step:b2"] and order[3] == "step:c"
    wait_for(lambda: Batch.status(bids[2])["success"], 20, "the last step's batch")
    assert Batch.status(bids[1])["description"] == "etl (step 2/3)"


def test_a_chain_stops_at_a_step_that_dies(worker, broker, prefix):
    key = f"{prefix}:runs"
    bids = chain(StepJob(key, "a"), StepJob(key, "b", die=True), StepJob(key, "c"))
    wait_for(lambda: Batch.status(bids[1])["dead"] == 1, 20, "step b dead")
    time.sleep(0.5)
    assert runs(broker, key) == ["step:a", "step:b"]
    assert Batch.status(bids[2])["pending"] == 1


def test_a_chain_inside_a_batch_holds_it_until_its_last_step(worker, broker, prefix):
    key = f"{prefix}:runs"
    outer = watched(key)
    with outer.jobs():
        chain(StepJob(key, "a"), StepJob(key, "b"))
    wait_for(lambda: "success" in events(broker, key, outer.bid), 20, "the outer batch succeeded")
    assert runs(broker, key) == ["step:a", "step:b"]


def test_chord_runs_its_body_after_every_header_job(worker, broker, prefix):
    key = f"{prefix}:runs"
    chord([StepJob(key, f"h{i}") for i in range(4)], CallbackRecordJob(key, "body"))
    wait_for(lambda: events(broker, key) == ["body"], 20, "the body")
    assert sorted(runs(broker, key)) == [f"step:h{i}" for i in range(4)]


def test_wrong_uses_are_refused_with_the_fix(broker, prefix):
    batch = Batch()
    with pytest.raises(ValueError, match="complete, success, death"):
        batch.on("done", CallbackRecordJob, "k", "x")
    with pytest.raises(TypeError, match="job class"):
        batch.on("success", print)
    with pytest.raises(TypeError, match="cannot take these arguments"):
        batch.on("success", CallbackRecordJob)
    with pytest.raises(TypeError, match=r"takes set\(queue=\.\.\., priority=\.\.\.\) only"):
        batch.on("success", CallbackRecordJob.set(wait=5), "k", "x")
    with batch.jobs():
        pass
    with pytest.raises(RuntimeError, match="before"):
        batch.on("success", CallbackRecordJob, "k", "x")
    with pytest.raises(TypeError, match="step 2"):
        chain(StepJob("k", "a"), "nope")
    assert Batch.status("nosuchbatch") is None
    broker.redis.delete(broker.keys.batch(batch.bid))
    with pytest.raises(BatchGone), batch.jobs():
        pass


def test_a_malformed_batch_field_leaves_the_job_running(worker, broker, prefix):
    key = f"{prefix}:runs"
    job = MemberJob(key, "odd")
    job.payload["batch"] = ["elsewhere:batch:x"]
    job.enqueue()
    wait_for(lambda: runs(broker, key) == ["run:odd"], 20, "the job ran")


# -- exactly once, across processes --------------------------------------------------------------


def test_callbacks_fire_exactly_once_with_three_processes_racing(spawn, broker, prefix):
    key = f"{prefix}:runs"
    workers = [spawn("-c", "4") for _ in range(3)]
    wait_for(lambda: len(registered(broker)) == len(workers), 60, "the workers registered")
    batches = []
    for n in range(20):
        batch = watched(key, f"race {n}")
        with batch.jobs():
            MemberJob.perform_bulk([(key, f"{n}-{i}", 0, False, False, 0.01) for i in range(15)])
        batches.append(batch)
    wait_for(lambda: len(callbacks(broker, key)) >= 40, 60, "every batch's callbacks")
    time.sleep(1)
    found = callbacks(broker, key)
    for batch in batches:
        assert sorted(c["event"] for c in found if c["batch_id"] == batch.bid) == ["complete", "success"]
    assert len({c["pid"] for c in found}) > 1  # the processes shared the work
    assert len(runs(broker, key)) == 300


def test_callbacks_fire_exactly_once_while_workers_are_killed(spawn, broker, prefix):
    key = f"{prefix}:runs"
    overrides = {"HEARTBEAT_TIMEOUT": 1.5, "MAX_RECOVERIES": 100}
    batches = []
    for n in range(5):
        batch = watched(key, f"kill {n}")
        with batch.jobs():
            MemberJob.perform_bulk([(key, f"{n}-{i}", 0, False, False, 0.1) for i in range(40)])
        batches.append(batch)
    procs = [spawn("-c", "4", overrides=overrides) for _ in range(2)]
    for round_ in range(8):
        time.sleep(0.7)
        victim = procs[round_ % 2]
        victim.send(signal.SIGKILL)
        victim.wait(10)
        procs[round_ % 2] = spawn("-c", "4", overrides=overrides)
    wait_for(lambda: all(Batch.status(b.bid)["success"] for b in batches), 90, "every batch succeeded")
    wait_for(lambda: len(callbacks(broker, key)) >= 10, 60, "every callback ran")
    time.sleep(1)
    found = callbacks(broker, key)
    for batch in batches:
        assert sorted(c["event"] for c in found if c["batch_id"] == batch.bid) == ["complete", "success"]
        status = Batch.status(batch.bid)
        assert (status["total"], status["pending"], status["dead"]) == (40, 0, 0)
    assert len(runs(broker, key)) >= 200  # every job ran; the killed ones' jobs again


# -- listings -----------------------------------------------------------------------------------


def test_the_api_pages_batches_newest_first_and_the_command_shows_them(broker, prefix):
    from io import StringIO

    from django.core.management import CommandError, call_command

    from django_async_jobs import api

    made = []
    for n in range(3):
        batch = Batch(description=f"import {n}")
        with batch.jobs():
            MemberJob.perform_later("k", f"j{n}")
        made.append(batch.bid)
    page = api.batches(1, 2)
    assert [row["bid"] for row in page.batches] == [made[2], made[1]]
    assert (page.total, page.pages) == (3, 2)
    assert [row["bid"] for row in api.batches(2, 2).batches] == [made[0]]
    assert api.batch(made[0])["pending"] == 1
    broker.redis.delete(broker.keys.batch(made[1]))  # expired: left out of the page
    assert [row["bid"] for row in api.batches(1, 25).batches] == [made[2], made[0]]
    entry = api.page_of(broker.keys.queue("default")).entries[0]
    assert entry.batch_id in made and entry.as_json()["batch_id"] == entry.batch_id
    assert api.batch_of({"batch": ["p:batch:abc", "p:batch:parent"]}) == "abc"
    assert api.batch_of({"batch": "nonsense"}) is None and api.batch_of(None) is None

    out = StringIO()
    call_command("jobs", "batches", stdout=out)
    text = out.getvalue()
    assert "import 2" in text and "import 0" in text and "running" in text
    out = StringIO()
    call_command("jobs", "batches", "--json", stdout=out)
    assert [row["bid"] for row in json.loads(out.getvalue())] == [made[2], made[0]]
    out = StringIO()
    call_command("jobs", "batches", made[0], "--json", stdout=out)
    assert json.loads(out.getvalue())["total"] == 1
    with pytest.raises(CommandError, match="No batch"):
        call_command("jobs", "batches", "nosuchbatch")


def test_a_poison_pill_member_counts_dead_and_fires_death_once(worker, broker, prefix):
    """A member that crashes its worker every time is buried by a recovery, not a settle step:
    the dead-job writer tells its batch, so death and complete fire (once), success never."""
    from django_async_jobs import signals

    key = f"{prefix}:runs"

    def crash(sender, job, **kwargs):
        if job.arguments[1] == "pill":
            raise SystemExit(1)  # outside perform: no settlement, the heartbeat hands it back

    batch = watched(key)
    signals.job_started.connect(crash, sender=MemberJob, weak=False)
    try:
        with batch.jobs():
            MemberJob.perform_later(key, "ok")
            MemberJob.perform_later(key, "pill")
        wait_for(lambda: sorted(events(broker, key)) == ["complete", "death"], 60, "death and complete")
    finally:
        signals.job_started.disconnect(crash, sender=MemberJob)
    time.sleep(0.5)  # nothing more arrives
    assert sorted(events(broker, key)) == ["complete", "death"]
    status = Batch.status(batch.bid)
    assert (status["dead"], status["pending"]) == (1, 1)
    assert broker.redis.hlen(broker.keys.dead) == 0  # the row is written, the record gone
