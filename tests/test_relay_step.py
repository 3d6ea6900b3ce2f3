"""The outbox relay's Lua step (relay.lua) on real Redis: the lease, each job id pushed once,
scheduled and unroutable rows, unique jobs' locks."""

import json
import time

from django_async_jobs.serialization import encode_payload

LEASE_MS = 60_000


def row(job_id, queue="default", priority=0, run_at=None, lock="", lock_ttl=None):
    payload = encode_payload({"jid": job_id, "job": "tests.Job", "queue": queue, "args": []})
    return (job_id, queue, priority, run_at, lock, lock_ttl, payload)


def holding(broker, holder="me"):
    assert broker.take_lock(broker.keys.outbox_lease("default"), holder, LEASE_MS)[0]
    return holder


def ids(broker, key):
    return [json.loads(p)["jid"] for p in broker.redis.zrange(key, 0, -1)]


def test_only_the_lease_holder_pushes_and_its_step_renews_the_lease(broker):
    assert broker.relay("default", "me", LEASE_MS, [], [row("a")]) is None
    holding(broker, "other")
    assert broker.relay("default", "me", LEASE_MS, [], [row("a")]) is None
    assert broker.queue_size("default") == 0 and broker.redis.zcard(broker.keys.outbox_relayed) == 0
    broker.redis.set(broker.keys.outbox_lease("default"), "me", px=500)
    assert broker.relay("default", "me", LEASE_MS, [], [row("a")]) == (1, 0, [])
    assert broker.redis.pttl(broker.keys.outbox_lease("default")) > 50_000


def test_each_job_id_is_pushed_once_until_it_is_forgotten(broker):
    holder = holding(broker)
    assert broker.relay("default", holder, LEASE_MS, [], [row("a"), row("b", queue="low", priority=5)]) == (2, 0, [])
    broker.redis.delete(broker.keys.queue("default"))  # a worker took "a"
    assert broker.relay("default", holder, LEASE_MS, [], [row("a"), row("b", queue="low", priority=5)]) == (0, 2, [])
    assert broker.queue_size("default") == 0 and ids(broker, broker.keys.queue("low")) == ["b"]
    assert broker.relay("default", holder, LEASE_MS, ["a", "b"], []) == (0, 0, [])
    assert broker.redis.zcard(broker.keys.outbox_relayed) == 0
    assert set(broker.redis.smembers(broker.keys.queues)) == {b"default", b"low"}


def test_ids_older_than_a_day_are_dropped(broker):
    holder = holding(broker)
    broker.redis.zadd(broker.keys.outbox_relayed, {"old": time.time() - 2 * 86400, "recent": time.time()})
    broker.relay("default", holder, LEASE_MS, [], [])
    assert broker.redis.zrange(broker.keys.outbox_relayed, 0, -1) == [b"recent"]


def test_scheduled_and_unroutable_rows(broker):
    holder = holding(broker)
    at = time.time() + 600
    assert broker.relay("default", holder, LEASE_MS, [], [row("later", run_at=at), row("bad", queue="")]) == (2, 0, [])
    assert broker.redis.zrange(broker.keys.schedule, 0, -1, withscores=True)[0][1] == at
    [record] = [json.loads(v) for v in broker.redis.hvals(broker.keys.dead)]
    assert (record["job_id"], record["reason"]) == ("bad", "malformed_payload")


def test_unique_jobs_take_their_enqueue_lock(broker):
    holder = holding(broker)
    lock = broker.keys.lock("tests.Job", "digest")
    broker.redis.set(lock, "earlier")
    rows = [row("a", lock=lock, lock_ttl=5000), row("b", lock=broker.keys.lock("tests.Job", "other"), lock_ttl=5000)]
    assert broker.relay("default", holder, LEASE_MS, [], rows) == (1, 0, [("a", "earlier")])
    assert ids(broker, broker.keys.queue("default")) == ["b"]
    assert 0 < broker.redis.pttl(broker.keys.lock("tests.Job", "other")) <= 5000
    broker.redis.set(lock, "c")  # the lock's own job enqueued again: it renews its lock
    assert broker.relay("default", holder, LEASE_MS, [], [row("c", lock=lock, lock_ttl=5000)])[0] == 1


def test_a_lock_key_of_another_prefix_is_never_set(broker):
    holder = holding(broker)
    foreign = "someone-else:lock:x"
    assert broker.relay("default", holder, LEASE_MS, [], [row("a", lock=foreign, lock_ttl=5000)]) == (1, 0, [])
    assert broker.redis.get(foreign) is None
