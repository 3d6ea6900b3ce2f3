"""The test modes' transport: ``MODE = "test"`` keeps enqueued jobs in memory, ``"inline"``
runs each at once in the enqueuing thread.

Where ``MODE = "redis"`` pushes a job, the enqueue chain hands it here instead. A job still goes
through the same JSON round trip as on a worker, so an argument that would not survive Redis
fails in a test too. ``django_async_jobs.testing`` reads and drives what is kept here.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from django_async_jobs import registry, retries, signals
from django_async_jobs.serialization import decode_payload, encode_payload, load_arguments

if TYPE_CHECKING:
    from django_async_jobs.job import ApplicationJob

# A flush that performs more jobs than this is a job enqueueing itself forever.
MAX_PERFORMS = 10_000


@dataclass(frozen=True)
class EnqueuedJob:
    """One recorded enqueue, as a worker would see it (arguments after the JSON round trip)."""

    job_class: type[ApplicationJob] | None
    job_id: str
    args: list[Any]
    kwargs: dict[str, Any]
    queue: str
    priority: int
    at: datetime | None
    payload: dict[str, Any]

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> EnqueuedJob:
        args, kwargs = load_arguments(payload["args"], payload.get("kwargs") or {}, bool(payload.get("tagged")))
        at = payload.get("at")
        return cls(
            job_class=registry.lookup(payload["job"]),
            job_id=payload["jid"],
            args=args,
            kwargs=kwargs,
            queue=payload["queue"],
            priority=payload.get("priority", 0),
            at=datetime.fromtimestamp(at, UTC) if at is not None else None,
            payload=payload,
        )


Filter = Callable[[EnqueuedJob], bool]


class Store:
    """The process-wide record of test-mode jobs (one test runs at a time per process)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.enqueued: list[EnqueuedJob] = []
        self.performed: list[EnqueuedJob] = []
        self.perform_at_once: list[Filter] = []  # innermost ``with perform_enqueued_jobs()`` last

    def clear(self) -> None:
        with self.lock:
            self.enqueued.clear()
            self.performed.clear()

    def take(self, wanted: Filter) -> EnqueuedJob | None:
        with self.lock:
            for index, record in enumerate(self.enqueued):
                if wanted(record):
                    return self.enqueued.pop(index)
        return None


store = Store()


def accept(job: ApplicationJob, payload: str, *, inline: bool) -> None:
    """Where a job goes instead of Redis in the "test" and "inline" modes (``payload`` is its
    encoded payload)."""
    record = EnqueuedJob.from_payload(decode_payload(payload))
    if inline:
        perform_inline(record)
    else:
        add(record)


def add(record: EnqueuedJob | None) -> None:
    """Record a job, or perform it at once inside a matching ``with perform_enqueued_jobs()``
    (its retries are added the same way, so they run at once only if they match too)."""
    performs = 0
    while record is not None:
        filters = store.perform_at_once
        if not (filters and filters[-1](record)):
            with store.lock:
                store.enqueued.append(record)
            return
        record = perform(record)
        performs = count_perform(performs)


def perform_inline(record: EnqueuedJob | None) -> None:
    """Inline mode: perform a job and, at once, the retries it asks for."""
    performs = 0
    while record is not None:
        record = perform(record)
        performs = count_perform(performs)


def count_perform(performs: int) -> int:
    if performs >= MAX_PERFORMS:
        raise RuntimeError(f"performed more than {MAX_PERFORMS} jobs in a row; does a job enqueue itself forever?")
    return performs + 1


def perform(record: EnqueuedJob) -> EnqueuedJob | None:
    """Run one recorded job as a worker would; return its retry, if a ``retry_on`` rule asks
    (or a ``Reschedule`` put it back)."""
    job_class = record.job_class
    if job_class is None:
        raise LookupError(f"no registered job is named {record.payload['job']!r}")
    raw = encode_payload(record.payload)
    job = job_class.deserialize(decode_payload(raw))
    job._check_arguments()
    with store.lock:
        store.performed.append(record)
    signals.send(signals.job_started, job_class, job=job)
    try:
        job.perform_now()
    except retries.Reschedule as request:  # kept, as a worker would put it back
        return EnqueuedJob.from_payload(decode_payload(retries.reschedule(job, request).payload))
    except Exception as exc:
        if retries.match(job._rules, exc) is None:
            raise
        outcome = retries.handle_failure(job, exc)
        if outcome.name == "dead":
            raise
        if outcome.name == "retry":
            return EnqueuedJob.from_payload(decode_payload(outcome.payload))
        return None  # discarded, or an on_exhausted callback took it
    signals.send(signals.job_succeeded, job_class, job=job)
    return None


