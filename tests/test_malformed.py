"""Payloads a worker cannot run, written straight into Redis: staged dead, and the worker goes on."""

import json
from collections import Counter

from tests.helpers import wait_for
from tests.testapp.jobs import IncrJob

BAD = {
    b"not json at all": "malformed_payload",
    b"\xff\xfe\x00garbage": "malformed_payload",
    b"[1, 2, 3]": "malformed_payload",
    b'{"jid":"m1","job":"tests.testapp.jobs.IncrJob"}': "malformed_payload",
    b'{"jid":"m2","job":"tests.testapp.jobs.IncrJob","queue":"default","args":{}}': "malformed_payload",
    b'{"jid":"u1","job":"nowhere.NoSuchJob","queue":"default","args":[]}': "unknown_class",
    b'{"jid":"u2","job":"os.system","queue":"default","args":["true"]}': "unknown_class",  # never imported
    b'{"jid":"a1","job":"tests.testapp.jobs.IncrJob","queue":"default","args":[]}': "arguments_mismatch",
    b'{"jid":"a2","job":"tests.testapp.jobs.TaggedEchoJob","queue":"default",'
    b'"args":["k",{"__aj__":"datetime","v":"not a date"}],"tagged":1}': "arguments_mismatch",
}


def dead_records(broker) -> list[dict]:
    return [json.loads(raw) for raw in broker.redis.hvals(broker.keys.dead)]


def test_bad_payloads_are_staged_dead_and_the_worker_keeps_going(worker, broker, prefix):
    key = f"{prefix}:n"
    # Scores below every real band: the bad payloads come first.
    broker.redis.zadd(broker.keys.queue("default"), {raw: i for i, raw in enumerate(BAD)})
    IncrJob.perform_later(key)
    wait_for(lambda: broker.redis.get(key) == b"1", 30, "the good job after the bad ones")
    wait_for(lambda: broker.redis.hlen(broker.keys.dead) == len(BAD), 30, "every bad payload staged")
    records = dead_records(broker)
    assert Counter(r["reason"] for r in records) == Counter(BAD.values())
    assert {r["payload"].encode() for r in records if b"\xff" not in r["payload"].encode()} >= {
        raw for raw in BAD if b"\xff" not in raw
    }
    by_job = {r["job_id"]: r["reason"] for r in records}
    assert by_job["u1"] == "unknown_class" and by_job["a1"] == "arguments_mismatch"
    assert broker.queue_size("default") == 0
    wait_for(lambda: broker.inflight(worker.process_id) == {}, 30, "everything settled")
    assert all(t.is_alive() for t in worker.processors)
    # Still working afterwards.
    IncrJob.perform_later(key, 2)
    wait_for(lambda: broker.redis.get(key) == b"3", 30, "a later job")


def test_bad_scheduled_payload_is_staged_dead_by_the_poller(worker, broker, prefix):
    key = f"{prefix}:n"
    broker.redis.zadd(broker.keys.schedule, {b"{broken": 0, b'{"jid":"s1","queue":""}': 0})
    IncrJob.set(wait=0.1).perform_later(key)
    wait_for(lambda: broker.redis.get(key) == b"1", 30, "the good scheduled job")
    wait_for(lambda: broker.redis.hlen(broker.keys.dead) == 2, 30, "both bad payloads staged")
    assert {r["reason"] for r in dead_records(broker)} == {"malformed_payload"}
    assert broker.redis.zcard(broker.keys.schedule) == 0
