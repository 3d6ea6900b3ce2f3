"""The worker's dead writer: staged dead jobs become rows without anyone calling a command."""

import json
import time

import pytest
from django.conf import settings
from django.test import override_settings

from django_async_jobs.checks import check_settings
from django_async_jobs.models import DeadJob
from django_async_jobs.worker import dead_writer
from django_async_jobs.worker.launcher import Worker
from tests.helpers import wait_for
from tests.testapp.retry_jobs import NoRetryJob


@pytest.mark.django_db(transaction=True)
def test_a_dead_job_reaches_the_database_through_the_worker(broker, monkeypatch, prefix):
    monkeypatch.setattr(dead_writer, "INTERVAL", 0.1)
    worker = Worker()
    worker.start()
    try:
        job = NoRetryJob.perform_later(f"{prefix}:effects")
        row = wait_for(lambda: DeadJob.objects.filter(job_id=job.job_id).first(), timeout=10)
    finally:
        worker.stop(timeout=1)
    assert row.reason == "retries_exhausted"
    assert row.error_class == "builtins.ValueError"
    assert broker.redis.hlen(broker.keys.dead) == 0
    # The flush lease was given back; the prune lease is held for the hour.
    assert not broker.redis.exists(broker.keys.lease("dead-flush"))
    assert broker.redis.pttl(broker.keys.lease("dead-prune")) > 3_000_000


def test_a_bad_retention_setting_fails_the_system_check():
    with override_settings(ASYNC_JOBS={**settings.ASYNC_JOBS, "DEAD_JOB_RETENTION": "six months"}):
        errors = [e for e in check_settings() if e.id == "async_jobs.E007"]
    assert errors and "DEAD_JOB_RETENTION" in errors[0].msg


@pytest.mark.django_db(transaction=True)
def test_a_record_it_cannot_read_holds_back_none_beside_it(broker, monkeypatch):
    monkeypatch.setattr(dead_writer, "INTERVAL", 0.1)
    deep = "[" * 100_000 + "]" * 100_000
    records = {
        "deep": {"dead_id": "deep", "job_id": "", "payload": deep, "reason": "malformed_payload", "died_at": time.time()},
        "plain": {"dead_id": "plain", "job_id": "j1", "reason": "retries_exhausted", "died_at": time.time(),
                  "payload": json.dumps({"jid": "j1", "job": NoRetryJob.job_name, "queue": "default", "args": ["k"]})},
    }
    broker.redis.hset(broker.keys.dead, mapping={k: json.dumps(v) for k, v in records.items()})
    broker.redis.hset(broker.keys.dead, "deep-record", deep)
    worker = Worker()
    worker.start()
    try:
        wait_for(lambda: DeadJob.objects.count() == 3, timeout=10, what="every staged record written")
    finally:
        worker.stop(timeout=1)
    assert broker.redis.hlen(broker.keys.dead) == 0
    assert DeadJob.objects.get(dead_id="plain").arguments == ["k"]
    assert DeadJob.objects.get(dead_id="deep").payload == deep
