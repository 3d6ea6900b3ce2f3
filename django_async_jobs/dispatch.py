"""Where a job leaves the process: the end of the enqueue chain (Sidekiq's client).

The enqueue chain (middleware, callbacks) runs when ``perform_later`` is called; its innermost
step, ``deliver``, decides two things for each job, single or bulk:

* *when*: inside ``transaction.atomic()`` only the push waits for the commit of that database
  (``ENQUEUE_AFTER_COMMIT``), as ActiveJob defers only the adapter's enqueue: a worker never
  looks for a row that is not committed yet, and a rollback (of the transaction or of the
  savepoint the enqueue happened in) drops the job. With the outbox (``outbox.py``), the job
  does not wait: it is written at once as a row of that transaction, which a worker relays;
* *where*: ``MODE`` "redis" pushes to Redis (a unique job through its lock step), one round trip
  per job or per chunk of ``CHUNK`` jobs; "test" and "inline" hand the job to ``memory``. A push
  Redis cannot take (unreachable) goes to the outbox instead, for classes that use it.

``job_enqueued`` is sent for each job that reached Redis, an outbox, or the test modes' memory.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis
from django.db import DEFAULT_DB_ALIAS, transaction

from django_async_jobs import locks, memory, outbox, signals
from django_async_jobs.broker.client import get_broker
from django_async_jobs.conf import get_settings, validate_queue_name
from django_async_jobs.serialization import encode_job

if TYPE_CHECKING:
    from django_async_jobs.job import ApplicationJob

CHUNK = 1000
# What a push raises when Redis is out of reach (refused, reset, no answer in time): the jobs
# of classes that use the outbox are written there instead.
UNREACHABLE = (redis.ConnectionError, redis.TimeoutError)


def deliver(job: ApplicationJob) -> ApplicationJob:
    """The enqueue chain's innermost step for one job: push it now, or when its transaction
    commits. A bulk enqueue (or a recurring tick) gives the job a ``route`` of its own instead."""
    job._delivered = True
    if job.queue_name is not job._checked_queue:  # a middleware routed it elsewhere
        validate_queue_name(job.queue_name, f"{type(job).__name__}: the queue a middleware set")
    if job._route is not None:
        job._route(job)
        return job
    alias = commit_alias(type(job), job._using)
    if alias is None:
        _send_now([job])
    elif outbox.applies(type(job)):
        outbox.write([job], alias)
        _enqueued(job)
    else:
        encode_job(job.serialize())  # a bad argument fails here, in the caller, not at commit time
        # Not robust: if Redis is down at commit, the error reaches the code that committed.
        transaction.on_commit(lambda: send([job]), using=alias)
    return job


def deliver_all(jobs: Sequence[ApplicationJob], using: str | None) -> int:
    """Send jobs that went through their chains together: the ones whose class waits for a
    commit to that database's outbox or when it commits, the rest now. Returns how many were
    sent, written or deferred."""
    groups: defaultdict[tuple[str | None, bool], list[ApplicationJob]] = defaultdict(list)
    routes: dict[type, tuple[str | None, bool]] = {}  # one transaction check per class, not per job
    for job in jobs:
        kind = type(job)
        route = routes.get(kind)
        if route is None:
            alias = commit_alias(kind, using)
            route = routes[kind] = (alias, alias is not None and outbox.applies(kind))
        groups[route].append(job)
    for (alias, via_outbox), group in groups.items():
        if alias is None:
            _send_now(group)
        elif via_outbox:
            outbox.write(group, alias)
            for job in group:
                _enqueued(job)
        else:
            for job in group:
                encode_job(job.serialize())
            transaction.on_commit(lambda group=group: send(group), using=alias)
    return len(jobs)


def _send_now(jobs: Sequence[ApplicationJob]) -> None:
    """``send``, keeping in the outbox what Redis could not take, for classes that use it."""
    try:
        send(jobs)
    except UNREACHABLE as error:
        waiting = [job for job in jobs if job.successfully_enqueued is None]
        for job in outbox.keep(waiting, error):
            _enqueued(job)
        if any(job.successfully_enqueued is None for job in waiting):
            raise
    else:
        if outbox.OUTAGE.since is not None:
            outbox.OUTAGE.ended()


def send(jobs: Sequence[ApplicationJob]) -> None:
    """Push jobs to where ``MODE`` says and mark each enqueued (or not: a unique job's lock was
    taken). Unique jobs with an enqueue lock go one by one through their lock step."""
    mode = get_settings().mode
    if mode != "redis":
        for job in jobs:
            memory.accept(job, encode_job(job.serialize()), inline=mode == "inline")
            _enqueued(job)
        return
    if len(jobs) == 1:  # one perform_later: the hot path
        job = jobs[0]
        if job.lock_keys is None and job.scheduled_at is None:
            get_broker().push_one(job.queue_name, job.priority, encode_job(job.serialize()))
            _enqueued(job)
            return
    plain = [job for job in jobs if job.lock_keys is None or "key" not in job.lock_keys]
    if plain:
        _push(plain)
    if len(plain) < len(jobs):
        for job in jobs:
            if job.lock_keys is not None and "key" in job.lock_keys:
                if locks.push(job, encode_job(job.serialize())):
                    _enqueued(job)
                else:
                    job.successfully_enqueued = False


def _enqueued(job: ApplicationJob) -> None:
    job.successfully_enqueued = True
    signals.send(signals.job_enqueued, type(job), job=job)


def _routed(jobs: Sequence[ApplicationJob]) -> list[Any]:
    """The push script's entries for ready jobs: queue, priority, payload for each."""
    entries: list[Any] = []
    for job in jobs:
        entries += (job.queue_name, job.priority, encode_job(job.serialize()))
    return entries


def _push(jobs: Sequence[ApplicationJob]) -> None:
    """Push ready jobs and schedule delayed ones, CHUNK jobs per Redis call; each chunk's jobs
    are marked enqueued once Redis took it (so a failure part-way says which were not). Every
    payload is encoded before the first push: a value JSON cannot carry raises with nothing
    pushed."""
    broker = get_broker()
    chunks = [jobs[start : start + CHUNK] for start in range(0, len(jobs), CHUNK)]
    if all(job.scheduled_at is None for job in jobs):  # the usual case: stream the chunks
        routed = [_routed(chunk) for chunk in chunks]
        broker.push_stream(routed, on_pushed=lambda index: _all_enqueued(chunks[index]))
        return
    steps = [
        (
            _routed([job for job in chunk if job.scheduled_at is None]),
            [(encode_job(job.serialize()), job.scheduled_at) for job in chunk if job.scheduled_at is not None],
        )
        for chunk in chunks
    ]
    for chunk, (ready, delayed) in zip(chunks, steps, strict=True):
        if ready and delayed:
            broker.push_and_schedule(ready, delayed)
        elif ready:
            broker.push_routed(ready)
        elif delayed:
            broker.schedule(delayed)
        _all_enqueued(chunk)


def _all_enqueued(jobs: Sequence[ApplicationJob]) -> None:
    for job in jobs:
        _enqueued(job)


def commit_alias(job_class: type[ApplicationJob], using: str | None) -> str | None:
    """The database alias whose commit this enqueue must wait for, or None to push now.

    Only the application's transactions count (``in_transaction``), so ``perform_later`` in a
    test body enqueues at once.
    """
    wanted = job_class.enqueue_after_commit
    if wanted is None:
        wanted = get_settings().enqueue_after_commit
    if not wanted:
        return None
    alias = using or job_class.enqueue_using or DEFAULT_DB_ALIAS
    connection = transaction.get_connection(alias)
    if not connection.in_atomic_block:  # the usual case, without a call
        return None
    return alias if in_transaction(connection) else None


def in_transaction(connection: Any) -> bool:
    """Whether ``connection`` is inside an application's ``transaction.atomic()``: the atomic
    blocks Django's ``TestCase`` wraps each test in do not count."""
    return connection.in_atomic_block and not all(
        getattr(block, "_from_testcase", False) for block in connection.atomic_blocks
    )
