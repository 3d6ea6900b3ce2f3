"""Expiring jobs: a job not started by its deadline (enqueue or run-at + ``expires_in``) is
dropped when fetched: not run, counted as expired, logged, signalled."""

import json
import logging
import time

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_async_jobs import ApplicationJob, api, flow, metrics, prometheus, signals, tracing
from django_async_jobs.batches import BatchMembership
from django_async_jobs.middleware import chain
from django_async_jobs.worker import processor
from django_async_jobs.worker.connections import DatabaseConnections
from django_async_jobs.worker.job_log import JobLog
from django_async_jobs.worker.launcher import Worker
from tests.helpers import wait_for
from tests.testapp.flow_jobs import (
    AsyncExpiringJob,
    ExpiringJob,
    ExpiryPerEnqueueJob,
    FailingExpiringJob,
)
from tests.testapp.jobs import IncrJob


@pytest.fixture
def key(prefix):
    return f"{prefix}:out"


@pytest.fixture
def expired_signals():
    received = []

    def receiver(sender, job, **kwargs):
        received.append((sender, job.job_id))

    signals.job_expired.connect(receiver, weak=False)
    yield received
    signals.job_expired.disconnect(receiver)


def queued_payload(broker, queue="default"):
    [member] = broker.redis.zrange(broker.keys.queue(queue), 0, -1)
    return json.loads(member)


def test_the_deadline_is_the_enqueue_plus_expires_in(broker, key):
    ExpiringJob.perform_later(key)
    payload = queued_payload(broker)
    assert abs(payload["expires_at"] - (payload["enqueued_at"] + 60)) < 1
    ExpiringJob.set(expires_in=5).perform_later(key)  # one enqueue's own
    later = json.loads(broker.redis.zrange(broker.keys.queue("default"), 0, -1)[1])
    assert abs(later["expires_at"] - (later["enqueued_at"] + 5)) < 1


def test_a_scheduled_jobs_deadline_counts_from_its_run_at(broker, key):
    at = time.time() + 3600
    ExpiringJob.set(wait_until=at).perform_later(key)
    [member] = broker.redis.zrange(broker.keys.schedule, 0, -1)
    assert json.loads(member)["expires_at"] == round(at + 60, 3)


def test_a_job_past_its_deadline_is_dropped_counted_logged_and_signalled(broker, key, worker, caplog, expired_signals):
    started = []
    signals.job_started.connect(receiver := lambda sender, **kw: started.append(sender), weak=False)
    try:
        with caplog.at_level(logging.INFO, logger="django_async_jobs.job"):  # before the worker can take it
            late = ExpiringJob.set(wait_until=time.time() - 120).perform_later(key)  # due 2 minutes ago
            wait_for(lambda: broker.stat("expired") == 1, 30, "the expired count")
            on_time = ExpiringJob.perform_later(key)
            wait_for(lambda: broker.redis.llen(key) == 1, 30, "the job on time to run")
    finally:
        signals.job_started.disconnect(receiver)
    assert broker.redis.lrange(key, 0, -1) == [f"ran {on_time.job_id}".encode()]
    assert expired_signals == [(ExpiringJob, late.job_id)]
    assert started == [ExpiringJob]  # the expired job never started
    wait_for(lambda: broker.inflight(worker.process_id) == {}, 10, "settled")
    assert (broker.stat("processed"), broker.stat("failed"), broker.stat("expired")) == (1, 0, 1)
    lines = [r.getMessage() for r in caplog.records if late.job_id in r.getMessage()]
    assert any(line.startswith(f"expired {ExpiringJob.job_name} {late.job_id} queue=default: not started by ")
               for line in lines)
    assert any("outcome=expired" in line for line in lines)  # the job's own log line says so too


def test_set_expires_in_on_a_class_that_declares_none(broker, key, worker):
    late = ExpiryPerEnqueueJob.set(wait_until=time.time() - 120, expires_in=60).perform_later(key)
    plain = ExpiryPerEnqueueJob.set(wait_until=time.time() - 120).perform_later(key)  # no deadline at all
    wait_for(lambda: broker.redis.llen(key) == 1 and broker.stat("expired") == 1, 30, "one run, one expired")
    assert broker.redis.lrange(key, 0, -1) == [f"ran {plain.job_id}".encode()]
    assert late.job_id != plain.job_id


def test_an_async_job_expires_on_the_event_loop(broker, key, worker):
    assert processor.worker_chain(AsyncExpiringJob).arun is not None
    AsyncExpiringJob.set(wait_until=time.time() - 120).perform_later(key)
    wait_for(lambda: broker.stat("expired") == 1, 30, "the expired count")
    assert broker.redis.llen(key) == 0


def test_a_retry_keeps_the_deadline(broker, key):
    job = FailingExpiringJob.perform_later(key)
    deadline = queued_payload(broker)["expires_at"]
    worker = Worker()
    worker.start()
    try:
        [member] = wait_for(lambda: broker.redis.zrange(broker.keys.retry, 0, -1), 30, "the retry")
    finally:
        worker.stop(timeout=2)
    retry = json.loads(member)
    assert (retry["jid"], retry["expires_at"]) == (job.job_id, deadline)


def test_a_deadline_that_is_not_a_number_is_ignored(broker, key, worker):
    for bad in ("soon", None, [1], True, float("nan")):
        payload = {"jid": f"bad{bad!r}", "job": ExpiringJob.job_name, "queue": "default", "args": [key],
                   "expires_at": bad, "enqueued_at": time.time()}
        broker.push([json.dumps(payload)])  # NaN too, as a payload written by hand may hold
    wait_for(lambda: broker.redis.llen(key) == 5, 30, "every job to run")
    assert broker.stat("expired") == 0


def test_only_classes_that_declare_expires_in_get_the_layer():
    assert flow.Expiry().applies_to(ExpiringJob) and flow.Expiry().applies_to(ExpiryPerEnqueueJob)
    assert not flow.Expiry().applies_to(IncrJob)
    with pytest.raises(TypeError, match="declares no expires_in"):
        IncrJob.set(expires_in=30)
    with pytest.raises(TypeError, match="declares no expires_in"):
        IncrJob.perform_bulk([("k",)], expires_in=30)


def test_the_flow_layers_sit_inside_the_log_line_and_metrics_and_outside_the_rest():
    types = [type(layer) for layer in processor.WORKER_LAYERS]
    # Batch membership sits between: it sees every outcome, an expired job's included.
    assert types[:8] == [
        tracing.Tracing, JobLog, metrics.Metrics, prometheus.Exporter, BatchMembership, flow.Expiry,
        flow.ConcurrencyLimits, DatabaseConnections,
    ]
    enqueue = [type(layer) for layer in chain.BUILTIN_ENQUEUE]
    assert enqueue[-2:] == [flow.Expiry, flow.ConcurrencyLimits]  # innermost: the final options


@pytest.mark.parametrize("value", [0, -5, "1h", float("inf")])
def test_bad_expiry_values_are_refused(value):
    with pytest.raises(ImproperlyConfigured, match="expires_in"):
        type("BadExpiryJob", (ApplicationJob,), {"expires_in": value, "perform": lambda self: None,
                                                  "__module__": __name__})
    with pytest.raises((TypeError, ValueError), match="expires_in"):
        ExpiringJob.set(expires_in=value)


def test_perform_bulk_takes_expires_in(broker, key):
    assert ExpiringJob.perform_bulk([(key,), (key,)], expires_in=7) == 2
    payloads = [json.loads(m) for m in broker.redis.zrange(broker.keys.queue("default"), 0, -1)]
    assert all(abs(p["expires_at"] - (p["enqueued_at"] + 7)) < 1 for p in payloads)


def test_the_stats_count_expired_jobs(broker, db):
    broker.redis.incrby(broker.keys.stat("expired"), 3)
    assert api.stats().expired == 3 and api.stats().as_json()["expired"] == 3
