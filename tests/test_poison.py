"""Poison payloads written straight into Redis: every job ends (runs, is retried or dies with a
reason and its raw payload), none stays in flight, and the worker's threads live on."""

import json
import time

import pytest

from django_async_jobs import signals
from django_async_jobs.models import DeathReason
from tests.helpers import wait_for
from tests.testapp.poison_jobs import PoisonExitJob, PoisonOkJob

P = "tests.testapp.poison_jobs."
DEEP = b"[" * 100_000 + b"]" * 100_000


def job(jid: str, name: str, args: bytes = b"[]", extra: bytes = b"") -> bytes:
    return b'{"jid":"%s","job":"%s","queue":"default","args":%s%s}' % (jid.encode(), (P + name).encode(), args, extra)


# The issue's examples, and what becomes of each.
EXAMPLES = {
    "decimal": (job("x-decimal", "PoisonTaggedJob", b'[{"__aj__":"decimal","v":"x"}]', b',"tagged":1'),
                "arguments_mismatch"),
    "timedelta": (job("x-timedelta", "PoisonTaggedJob", b'[{"__aj__":"timedelta","v":[10000000000,0,0]}]', b',"tagged":1'),
                  "arguments_mismatch"),
    "dict": (job("x-dict", "PoisonTaggedJob", b'[{"__aj__":"dict","v":[1,2]}]', b',"tagged":1'), "arguments_mismatch"),
    "zone": (job("x-zone", "PoisonTaggedJob", b'[{"__aj__":"datetime","v":"2024-01-01T00:00:00","tz":"' + b"a" * 5000 + b'"}]',
                 b',"tagged":1'), "arguments_mismatch"),
    "retry_count": (job("x-retry-count", "PoisonFailJob", extra=b',"retry_count":"x"'), "worker_error"),
    "retries": (job("x-retries", "PoisonRuleJob", extra=b',"retries":[1]'), "worker_error"),
    # Counters no worker writes: with the rule's wait=0 they would retry at once, for ever.
    "negative_retries": (job("x-negative", "PoisonRuleJob", extra=b',"retries":{"builtins.ValueError":-1000000000}'),
                         "worker_error"),
    "fractional_retries": (job("x-fraction", "PoisonRuleJob", extra=b',"retries":{"builtins.ValueError":-1e300}'),
                           "worker_error"),
    "text_executions": (job("x-executions", "PoisonOkJob", extra=b',"executions":"x"'), "worker_error"),
    "nan_executions": (job("x-nan", "PoisonFailJob", extra=b',"executions":NaN'), "worker_error"),
    "infinite_priority": (job("x-inf", "PoisonFailJob", extra=b',"priority":Infinity'), "worker_error"),
    "deep": (job("x-deep", "PoisonOkJob", DEEP), "malformed_payload"),
    "deep_alone": (DEEP, "malformed_payload"),
    "invalid_utf8_id": (job("x-\xff", "PoisonOkJob").replace("x-\xff".encode(), b"x-\xff\xfe"), "malformed_payload"),
    "unknown": (job("x-unknown", "Nowhere"), "unknown_class"),
}


def staged(broker) -> list[dict]:
    return [json.loads(raw) for raw in broker.redis.hvals(broker.keys.dead)]


def alive(worker) -> bool:
    threads = [*worker.processors, worker.acker, worker.poller, worker.heart, worker.dead_writer]
    loop = worker.event_loop._thread
    return all(t.is_alive() for t in threads) and (loop is None or loop.is_alive())


def test_the_issues_poison_payloads_end_dead_with_their_reason(worker, broker):
    broker.redis.zadd(broker.keys.queue("default"), {raw: i for i, (raw, _) in enumerate(EXAMPLES.values())})
    broker.redis.publish(broker.keys.notify, "ready")
    wait_for(lambda: broker.redis.hlen(broker.keys.dead) == len(EXAMPLES), 10, "every example staged dead")
    wait_for(lambda: broker.inflight(worker.process_id) == {}, 5, "nothing left in flight")
    assert broker.queue_size("default") == 0 and alive(worker)

    by_payload = {record["payload"]: record for record in staged(broker)}
    for name, (raw, reason) in EXAMPLES.items():
        record = by_payload[raw.decode("utf-8", "replace")]
        assert record["reason"] == reason, name
        assert record["error_class"] and record["error_message"], name
    retry_count = by_payload[EXAMPLES["retry_count"][0].decode()]
    assert retry_count["error_class"] == "builtins.TypeError"
    # The job's own failure is chained in the traceback of the bookkeeping error.
    assert "poison job failed" in retry_count["traceback"]
    assert "decimal" in by_payload[EXAMPLES["decimal"][0].decode()]["error_message"]
    assert set(DeathReason.values) >= {record["reason"] for record in by_payload.values()}


def test_a_retry_payload_with_a_lone_surrogate_is_retried(worker, broker):
    """A "\\ud800" escape reads as a str UTF-8 cannot carry: the retry keeps it as an escape."""
    raw = job("x-surrogate", "PoisonFailJob", b'["\\ud800"]')
    broker.redis.zadd(broker.keys.queue("default"), {raw: 0})
    broker.redis.publish(broker.keys.notify, "ready")
    [(member, _)] = wait_for(lambda: broker.redis.zrange(broker.keys.retry, 0, -1, withscores=True), 10, "the retry")
    assert json.loads(member)["args"] == ["\ud800"] and b"\\ud800" in member
    assert broker.inflight(worker.process_id) == {} and alive(worker)


@pytest.mark.parametrize("job_class", ["PoisonExitJob", "PoisonAsyncExitJob"])
def test_system_exit_in_perform_is_a_failure_the_retry_rules_take(worker, broker, job_class):
    broker.redis.zadd(broker.keys.queue("default"), {job(f"x-{job_class}", job_class): 0})
    broker.redis.publish(broker.keys.notify, "ready")
    [member] = wait_for(lambda: broker.redis.zrange(broker.keys.retry, 0, -1), 10, "the retry")
    assert json.loads(member)["error_class"] == "SystemExit"
    assert broker.inflight(worker.process_id) == {} and alive(worker)


def test_a_base_exception_around_the_job_ends_it_a_poison_pill(worker, broker):
    """A receiver raising SystemExit is outside perform: the heartbeat hands the job back, and
    counts it, until it is set aside past MAX_RECOVERIES."""

    def stop_everything(sender, job, **kwargs):
        raise SystemExit(1)

    signals.job_started.connect(stop_everything, sender=PoisonOkJob, weak=False)
    try:
        PoisonOkJob.perform_later()
        [record] = wait_for(lambda: staged(broker), 30, "the job set aside")
    finally:
        signals.job_started.disconnect(stop_everything, sender=PoisonOkJob)
    assert record["reason"] == "poison_pill"
    wait_for(lambda: broker.inflight(worker.process_id) == {}, 5, "nothing left in flight")
    assert alive(worker)
    PoisonExitJob.perform_later()  # the thread that hit it still works
    wait_for(lambda: broker.redis.zcard(broker.keys.retry), 10, "a later job")


# -- the Lua steps --------------------------------------------------------------------------------


def test_nan_and_huge_priorities_are_moved_by_the_poller_not_lost(broker):
    due = time.time() - 1
    payloads = [job(f"x-p{i}", "PoisonOkJob", extra=b',"priority":' + p) for i, p in enumerate([b"NaN", b"1e999", b'"x"', b"-Infinity"])]
    broker.redis.zadd(broker.keys.schedule, {p: due for p in payloads})
    broker.redis.zadd(broker.keys.retry, {b'{"jid":"x-r","queue":"default","priority":NaN}': due})
    assert broker.poll()[0] == 5
    assert broker.queue_size("default") == 5 and broker.redis.hlen(broker.keys.dead) == 0


def test_release_and_recovery_hand_back_a_nan_priority(broker):
    """A script error halfway would leave the rest in flight, and block recovery for everyone."""
    for process_id in ("stopping", "gone"):
        nan = job(f"{process_id}-nan", "PoisonOkJob", extra=b',"priority":NaN')
        broker.redis.hset(broker.keys.inflight(process_id), mapping={
            f"{process_id}-nan:1": nan, f"{process_id}-plain:2": job(f"{process_id}-plain", "PoisonOkJob"),
        })
    broker.redis.zadd(broker.keys.processes, {"gone": 1})
    assert broker.release("stopping", 3) == (2, 0)
    assert broker.recover(3, 3) == (1, 2, 0)
    assert broker.queue_size("default") == 4
    assert not broker.redis.exists(broker.keys.inflight("stopping"), broker.keys.inflight("gone"))


def test_killing_a_retry_with_nan_executions_stages_it(broker):
    from django_async_jobs import api

    broker.redis.zadd(broker.keys.retry, {job("x-kill", "PoisonOkJob", extra=b',"executions":NaN'): 100})
    [entry] = api.page_of(broker.keys.retry, broker=broker).entries
    assert api.act(broker.keys.retry, "kill", [entry.ref], broker) == 1
    [record] = staged(broker)
    assert record["reason"] == "killed" and "executions" not in record
    assert broker.redis.zcard(broker.keys.retry) == 0


def test_a_nan_run_at_does_not_fail_the_settle_batch(broker):
    for field in ("a:1", "b:2"):
        broker.redis.hset(broker.keys.inflight("p"), field, job(field[0], "PoisonOkJob"))
    broker.settle("p", [("retry", "a:1", float("nan"), b"retry-a", 1), ("ack", "b:2", "", "", 0)])
    assert broker.redis.zrange(broker.keys.retry, 0, -1, withscores=True) == [(b"retry-a", 0.0)]
    assert broker.inflight("p") == {}
