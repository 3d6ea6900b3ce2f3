"""perform_all_later / perform_bulk: one Redis round trip per 1,000 jobs, validation up front."""

import gc
import json
import time

import pytest

from django_async_jobs import ApplicationJob, signals
from tests.testapp.integration_jobs import CountingJob, HaltedJob, NoteJob


def queued(broker, queue="default"):
    return [json.loads(p) for p in broker.redis.zrange(broker.keys.queue(queue), 0, -1)]


def test_one_round_trip_per_thousand_jobs(private_redis):
    broker = private_redis
    NoteJob.perform_bulk([("warm-up",), ("warm-up",)])  # loads the push script (one job takes push_one)
    broker.redis.config_resetstat()
    assert NoteJob.perform_bulk([("k", i) for i in range(2500)]) == 2500
    stats = broker.redis.info("commandstats")
    calls = {name: value["calls"] for name, value in stats.items()}
    assert calls.pop("cmdstat_evalsha") == 3
    # the rest ran inside the three scripts, not as round trips of their own
    assert set(calls) <= {"cmdstat_sadd", "cmdstat_zadd", "cmdstat_publish", "cmdstat_info", "cmdstat_config|resetstat"}
    jobs = queued(broker)
    assert len(jobs) == 2502
    assert [job["args"][1] for job in jobs[2:]] == list(range(2500))  # FIFO kept across chunks


def test_item_forms(broker):
    NoteJob.perform_bulk([("k", 1), ["k", 2], {"key": "k"}, (("k", 3), {"x": 4})])
    assert [(j["args"], j.get("kwargs")) for j in queued(broker)] == [
        (["k", 1], None), (["k", 2], None), ([], {"key": "k"}), (["k", 3], {"x": 4}),
    ]


def test_options_apply_to_every_job(broker):
    before = time.time()
    CountingJob.perform_bulk([(1,), (2,)], queue="critical", priority=7)
    CountingJob.perform_bulk([(3,)], wait=60)
    assert [(j["args"], j["priority"]) for j in queued(broker, "critical")] == [([1], 7), ([2], 7)]
    [(payload, score)] = broker.redis.zrange(broker.keys.schedule, 0, -1, withscores=True)
    assert json.loads(payload)["args"] == [3] and json.loads(payload)["queue"] == "low"
    assert before + 59 < score < time.time() + 61


def test_everything_is_validated_before_anything_is_pushed(broker):
    with pytest.raises(TypeError, match="item 2"):
        NoteJob.perform_bulk([("k",), ("k",), "k"])
    with pytest.raises(TypeError, match="cannot take these arguments"):
        CountingJob.perform_bulk([(1,), (1, 2, 3, 4, 5)])
    with pytest.raises(ValueError, match="priority"):
        CountingJob.perform_bulk([(1,)], priority=500)
    with pytest.raises(TypeError, match="unknown option"):
        CountingJob.perform_bulk([(1,)], delay=5)
    with pytest.raises(TypeError, match="index 1"):
        ApplicationJob.perform_all_later([CountingJob(1), (1,)])
    assert queued(broker) == [] and queued(broker, "low") == []


@pytest.mark.parametrize("wait", [None, 60])
def test_a_value_json_cannot_carry_late_in_a_big_bulk_pushes_nothing(broker, wait):
    """The first chunks are not pushed before a later one is found to hold a value JSON cannot
    carry: every payload is encoded before the first push."""
    from django_async_jobs import SerializationError

    items = [("k", i) for i in range(1500)] + [("k", object())]
    with pytest.raises(SerializationError):
        NoteJob.perform_bulk(items, **({"wait": wait} if wait else {}))
    assert queued(broker) == [] and broker.redis.zcard(broker.keys.schedule) == 0


def test_perform_all_later_mixes_classes_and_runs_each_jobs_enqueue_chain(broker):
    seen = []

    def receiver(sender, job, **kwargs):
        seen.append(job.job_id)

    signals.job_enqueued.connect(receiver)
    try:
        jobs = [NoteJob("k", 1), HaltedJob("k", 2), CountingJob(3)]
        jobs[2].priority = 3
        assert ApplicationJob.perform_all_later(jobs) == 2  # HaltedJob's before_enqueue halts it
    finally:
        signals.job_enqueued.disconnect(receiver)
    assert [j["jid"] for j in queued(broker)] == [jobs[0].job_id]
    assert [(j["jid"], j["priority"]) for j in queued(broker, "low")] == [(jobs[2].job_id, 3)]
    assert [bool(job) for job in jobs] == [True, False, True]
    assert seen == [jobs[0].job_id, jobs[2].job_id]


def test_a_bulk_carries_any_text_byte_for_byte(broker):
    """The bulk's packets are built by the broker itself (``_resp``): each argument's length
    is its UTF-8 length, whatever its characters or size."""
    texts = ["plain", "é", "日本語", "🙂 and \u2028", "x" * 7_000, "\x00\r\n$3\r\n"]
    items = [("k", texts[i % len(texts)], i) for i in range(1_500)]  # two chunks
    assert NoteJob.perform_bulk(items) == 1_500
    assert [j["args"] for j in queued(broker)] == [list(item) for item in items]


def test_the_garbage_collector_is_paused_during_a_bulk_and_restored_after(broker):
    seen = []

    def receiver(sender, job, **kwargs):
        seen.append(gc.isenabled())

    signals.job_enqueued.connect(receiver)
    try:
        assert gc.isenabled()
        NoteJob.perform_bulk([("k", 1), ("k", 2)])
        assert seen == [False, False] and gc.isenabled()
        ApplicationJob.perform_all_later([NoteJob("k", 3)])
        assert seen[2:] == [False] and gc.isenabled()
        with pytest.raises(TypeError, match="cannot take these arguments"):
            CountingJob.perform_bulk([(1,), (1, 2, 3, 4, 5)])
        assert gc.isenabled()  # back on after a bulk that raised
        gc.disable()  # the caller's own pause: a bulk leaves the collector as it found it
        try:
            NoteJob.perform_bulk([("k", 4)])
            assert not gc.isenabled()
        finally:
            gc.enable()
    finally:
        signals.job_enqueued.disconnect(receiver)
