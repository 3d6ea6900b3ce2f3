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


def test_a_client_bug_in_every_thread_does_not_end_the_worker(broker, prefix, monkeypatch):
    """A non-Redis exception from the Redis client (redis-py 5.0 raised TypeError on a Sentinel
    subscription) in the fetch, settle, poll and heartbeat loops: each logs it and goes on."""
    import redis.connection

    from django_async_jobs.worker.launcher import Worker

    key = f"{prefix}:n"
    worker = Worker()
    worker.start()
    try:
        IncrJob.perform_later(key)
        wait_for(lambda: broker.redis.get(key) == b"1", 20, "a first job")
        send = redis.connection.AbstractConnection.send_packed_command
        failures = {"left": 12}

        def flaky(self, command, check_health=True):
            if failures["left"] > 0:
                failures["left"] -= 1
                raise TypeError("a client bug")
            return send(self, command, check_health)

        monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", flaky)
        wait_for(lambda: failures["left"] == 0, 20, "the bug hit every thread's calls")
        monkeypatch.undo()
        IncrJob.perform_later(key)
        wait_for(lambda: broker.redis.get(key) == b"2", 30, "a job after the bug")
        threads = [*worker.processors, worker.acker, worker.heart, worker.poller]
        assert all(thread.is_alive() for thread in threads)
    finally:
        worker.stop(timeout=5)


def test_a_client_bug_on_the_notify_channel_does_not_end_the_thread_that_waits(broker, prefix, monkeypatch):
    """An idle worker's leading thread waits on the notify channel; a non-Redis exception there
    (from the client's PubSub) used to end that thread, and with it the process's fetching."""
    import redis.client

    from django_async_jobs.worker.launcher import Worker

    key = f"{prefix}:n"
    worker = Worker(concurrency=1)
    worker.start()
    try:
        IncrJob.perform_later(key)
        wait_for(lambda: broker.redis.get(key) == b"1", 20, "a first job")
        receive = redis.client.PubSub.get_message
        failures = {"left": 3}

        def flaky(self, *args, **kwargs):
            if failures["left"] > 0:
                failures["left"] -= 1
                raise TypeError("a client bug")
            return receive(self, *args, **kwargs)

        monkeypatch.setattr(redis.client.PubSub, "get_message", flaky)
        wait_for(lambda: failures["left"] == 0, 20, "the bug hit the idle worker's wait")
        monkeypatch.undo()
        IncrJob.perform_later(key)
        wait_for(lambda: broker.redis.get(key) == b"2", 30, "a job after the bug")
        assert all(thread.is_alive() for thread in worker.processors)
    finally:
        worker.stop(timeout=5)
