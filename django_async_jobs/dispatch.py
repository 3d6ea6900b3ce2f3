"""From job objects to Redis: serialize, then one round trip per chunk of jobs.

The equivalent of Sidekiq's client: the only place a job leaves the process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from django_async_jobs.broker.client import get_broker
from django_async_jobs.serialization import encode_payload

if TYPE_CHECKING:
    from django_async_jobs.job import ApplicationJob

CHUNK = 1000


def enqueue(jobs: Sequence[ApplicationJob]) -> None:
    """Push ready jobs and schedule delayed ones, CHUNK jobs per Redis call."""
    broker = get_broker()
    for start in range(0, len(jobs), CHUNK):
        ready: list[str] = []
        delayed: list[tuple[str, float]] = []
        for job in jobs[start : start + CHUNK]:
            payload = encode_payload(job.serialize())
            if job.scheduled_at is None:
                ready.append(payload)
            else:
                delayed.append((payload, job.scheduled_at))
        if ready and delayed:
            with broker.redis.pipeline(transaction=False) as pipe:
                broker.push(ready, client=pipe)
                broker.schedule(delayed, client=pipe)
                pipe.execute()
        elif ready:
            broker.push(ready)
        elif delayed:
            broker.schedule(delayed)
