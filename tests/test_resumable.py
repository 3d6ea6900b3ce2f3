"""Resumable jobs: the storage steps their checkpoints and cancelling use, on a real Redis."""

import json

from tests.helpers import fetch
from tests.testapp.jobs import IncrJob


def queued(broker, queue="default"):
    return [json.loads(p) for p in broker.redis.zrange(broker.keys.queue(queue), 0, -1)]


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
