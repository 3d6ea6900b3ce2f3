"""Queue order (strict and weighted), priority inside a queue, and ``runworker -q`` selection."""

import json
from collections import Counter

import pytest

from django_async_jobs.conf import QueueSpec, get_settings, parse_queues
from django_async_jobs.worker.fetcher import QueueOrder, select_queues
from django_async_jobs.worker.launcher import Worker
from tests.helpers import fetch, wait_for
from tests.testapp.jobs import IncrJob, RecordJob


def run_in_order(broker, key: str, expected: int, **worker_options) -> list[str]:
    """Start a one-thread worker on what is queued now and return the names in execution order."""
    worker = Worker(concurrency=1, **worker_options)
    worker.start()
    try:
        wait_for(lambda: broker.redis.llen(key) == expected, 10, f"{expected} jobs done")
    finally:
        worker.stop(timeout=2)
    return [json.loads(item)["args"][0] for item in broker.redis.lrange(key, 0, -1)]


def test_strict_order_is_always_the_configured_order():
    order = QueueOrder(parse_queues(["a", "b", "c"]))
    assert order.strict
    assert all(order.next() == ["a", "b", "c"] for _ in range(100))


def test_weighted_order_picks_by_weight():
    order = QueueOrder(parse_queues([("critical", 6), ("default", 5), ("notifications", 4), ("low", 1)]))
    assert not order.strict
    firsts = Counter()
    for _ in range(20000):
        names = order.next()
        assert sorted(names) == ["critical", "default", "low", "notifications"]  # every queue, once
        firsts[names[0]] += 1
    # P(first) = weight / 16; the ratio of weight 6 to weight 1 is about 6 (~4 sigma: +-0.7).
    assert 5.3 < firsts["critical"] / firsts["low"] < 6.7
    assert 1.08 < firsts["critical"] / firsts["default"] < 1.32
    assert abs(firsts["notifications"] / 20000 - 4 / 16) < 0.015


def test_one_queue_is_strict():
    order = QueueOrder(parse_queues([("only", 3)]))
    assert order.strict and order.next() == ["only"]


def test_weighted_fetch_from_redis(broker, settings):
    """Real fetches: with both queues always full, the weight-6 queue serves ~6 of 7 jobs."""
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "QUEUES": [("heavy", 6), ("light", 1)]}
    from django_async_jobs import dispatch

    jobs = [IncrJob(f"{broker.keys.prefix}:n") for _ in range(1400)]
    for i, job in enumerate(jobs):
        job.queue_name = "heavy" if i % 2 else "light"
    dispatch.send(jobs)
    order = QueueOrder(get_settings().queues)
    served = Counter()
    for _ in range(700):
        [(field, payload)] = fetch(broker, "tester", order.next(), 1)
        served[json.loads(payload)["queue"]] += 1
    assert served["heavy"] + served["light"] == 700
    assert 3.8 < served["heavy"] / served["light"] < 10  # ~4 sigma around 6; 1 would be round robin
    assert len(broker.inflight("tester")) == 700  # fetched jobs are held, not dropped


def test_strict_order_worker_drains_first_queue_first(broker, prefix, settings):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "QUEUES": ["first", "second"]}
    key = f"{prefix}:order"
    for i in range(4):
        RecordJob.set(queue="second").perform_later(key, f"second-{i}")
    for i in range(4):
        RecordJob.set(queue="first").perform_later(key, f"first-{i}")
    names = run_in_order(broker, key, 8)
    assert names == [f"first-{i}" for i in range(4)] + [f"second-{i}" for i in range(4)]


def test_priority_then_fifo_inside_a_queue(broker, prefix):
    key = f"{prefix}:prio"
    plan = [("a", 0), ("b", 5), ("c", -3), ("d", 5), ("e", 0), ("f", 100), ("g", -100), ("h", 5), ("i", 0)]
    for name, priority in plan:
        RecordJob.set(priority=priority).perform_later(key, name)
    names = run_in_order(broker, key, len(plan))
    assert names == ["f", "b", "d", "h", "a", "e", "i", "c", "g"]


def test_fifo_across_many_equal_priority_jobs(broker):
    from django_async_jobs import dispatch

    jobs = [IncrJob("x", i) for i in range(300)]
    for job in jobs:
        job.queue_name = "default"
    dispatch.send(jobs)
    fetched = fetch(broker, "tester", ["default"], 300)
    assert [json.loads(p)["args"][1] for _, p in fetched] == list(range(300))
    # In-flight fields are "<job id>:<fetch number>".
    assert [f.decode().split(":")[0] for f, _ in fetched] == [j.job_id for j in jobs]


def test_class_priority_is_used_and_set_priority_wins(broker, prefix):
    class Urgent(IncrJob):
        priority = 50

    key = f"{prefix}:n"
    low = IncrJob.perform_later(key)
    urgent = Urgent.perform_later(key)
    lowered = Urgent.set(priority=-1).perform_later(key)
    fetched = [f.decode().split(":")[0] for f, _ in fetch(broker, "tester", ["default"], 3)]
    assert fetched == [urgent.job_id, low.job_id, lowered.job_id]


# -- runworker -q ----------------------------------------------------------------------------------

CONFIGURED = parse_queues([("critical", 6), ("default", 5), ("low", 1)])
STRICT = parse_queues(["a", "b", "c"])


def test_select_queues_without_request_keeps_the_configuration():
    assert select_queues(CONFIGURED, []) is CONFIGURED


def test_select_queues_keeps_configured_weights():
    spec = select_queues(CONFIGURED, ["low", "critical"])
    assert spec == QueueSpec(("low", "critical"), (1, 6), strict=False)


def test_select_queues_explicit_weights_make_it_weighted():
    assert select_queues(STRICT, ["c,3", "a"]) == QueueSpec(("c", "a"), (3, 1), strict=False)
    assert select_queues(CONFIGURED, ["default,2"]) == QueueSpec(("default",), (2,), strict=False)


def test_select_queues_on_a_strict_configuration_stays_strict_in_the_given_order():
    spec = select_queues(STRICT, ["c", "a"])
    assert spec == QueueSpec(("c", "a"), (1, 1), strict=True)
    assert QueueOrder(spec).next() == ["c", "a"]


def test_select_queues_unknown_queue_gets_weight_one():
    assert select_queues(CONFIGURED, ["other"]).weights == (1,)


@pytest.mark.parametrize("item", ["a,0", "a,-1", "a,x", "a,1.5", ",3", "", "a:b", "a,"])
def test_select_queues_rejects_bad_items(item):
    with pytest.raises(ValueError, match=r"-q"):
        select_queues(STRICT, [item])


def test_select_queues_rejects_a_queue_twice():
    with pytest.raises(ValueError, match="twice"):
        select_queues(STRICT, ["a", "a,2"])

