"""From job objects to Redis: serialize, then one round trip per chunk of jobs.

The equivalent of Sidekiq's client: the only place a job leaves the process. Two decisions
are taken here for every enqueue, single or bulk:

* *when*: inside ``transaction.atomic()`` the push waits for the commit of that database
  (``ENQUEUE_AFTER_COMMIT``), so a worker never looks for a row that is not committed yet, and
  a rollback (of the transaction or of the savepoint the enqueue happened in) drops the job;
* *where*: ``MODE`` "redis" pushes to Redis, "test" records the job in memory and "inline"
  runs it at once (both in ``django_async_jobs.testing``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from django.db import DEFAULT_DB_ALIAS, transaction

from django_async_jobs import signals
from django_async_jobs.broker.client import get_broker
from django_async_jobs.conf import argument_repr, get_settings, validate_queue_name
from django_async_jobs.serialization import encode_job

if TYPE_CHECKING:
    from django_async_jobs.job import ApplicationJob

CHUNK = 1000


def enqueue(jobs: Sequence[ApplicationJob]) -> None:
    """Hand prepared jobs (queue resolved, options validated) to the configured ``MODE``."""
    mode = get_settings().mode
    if mode == "redis":
        _push(jobs)
    else:
        from django_async_jobs import testing

        testing.accept(jobs, inline=mode == "inline")


def _routed(jobs: Sequence[ApplicationJob]) -> list[Any]:
    """The push script's entries for ready jobs: queue, priority, payload for each."""
    entries: list[Any] = []
    for job in jobs:
        entries += (job.queue_name, job.priority, encode_job(job.serialize()))
    return entries


def _push(jobs: Sequence[ApplicationJob]) -> None:
    """Push ready jobs and schedule delayed ones, CHUNK jobs per Redis call."""
    broker = get_broker()
    if len(jobs) == 1 and jobs[0].scheduled_at is None:  # one perform_later
        job = jobs[0]
        broker.push_one(job.queue_name, job.priority, encode_job(job.serialize()))
        return
    if all(job.scheduled_at is None for job in jobs):  # the usual case: stream the chunks
        broker.push_stream(_routed(jobs[start : start + CHUNK]) for start in range(0, len(jobs), CHUNK))
        return
    for start in range(0, len(jobs), CHUNK):
        chunk = jobs[start : start + CHUNK]
        ready = _routed([job for job in chunk if job.scheduled_at is None])
        delayed = [(encode_job(job.serialize()), job.scheduled_at) for job in chunk if job.scheduled_at is not None]
        if ready and delayed:
            with broker.redis.pipeline(transaction=False) as pipe:
                broker.push_routed(ready, client=pipe)
                broker.schedule(delayed, client=pipe)
                pipe.execute()
        elif ready:
            broker.push_routed(ready)
        elif delayed:
            broker.schedule(delayed)


# -- after commit -------------------------------------------------------------------------------


def commit_alias(job_class: type[ApplicationJob], using: str | None) -> str | None:
    """The database alias whose commit this enqueue must wait for, or None to push now.

    The atomic blocks Django's ``TestCase`` wraps each test in are not the application's
    transactions: only those count, so ``perform_later`` in a test body enqueues at once.
    """
    wanted = job_class.enqueue_after_commit
    if wanted is None:
        wanted = get_settings().enqueue_after_commit
    if not wanted:
        return None
    alias = using or job_class.enqueue_using or DEFAULT_DB_ALIAS
    connection = transaction.get_connection(alias)
    if not connection.in_atomic_block:
        return None
    if all(getattr(block, "_from_testcase", False) for block in connection.atomic_blocks):
        return None
    return alias


def now_or_on_commit(jobs: Sequence[ApplicationJob], action: Callable[[], Any], using: str | None) -> None:
    """Run ``action`` (which enqueues ``jobs``, all of one class) now or when the transaction commits."""
    alias = commit_alias(type(jobs[0]), using)
    if alias is None:
        action()
        return
    for job in jobs:
        encode_job(job.serialize())  # a bad argument fails here, in the caller, not at commit time
    # Not robust: if Redis is down at commit, the error reaches the code that committed.
    transaction.on_commit(action, using=alias)


# -- bulk -----------------------------------------------------------------------------------------


def _send(jobs: list[ApplicationJob]) -> None:
    """Push a validated group; unique jobs (``lock``) go one by one through their lock step,
    except in the test modes, which record every job and take no locks."""
    from django_async_jobs import locks

    locking = get_settings().mode == "redis"
    enqueue([job for job in jobs if not (locking and type(job).lock)])
    for job in jobs:
        job.successfully_enqueued = not (locking and type(job).lock) or locks.enqueue(job)
        if job.successfully_enqueued:
            signals.send(signals.job_enqueued, type(job), job=job)


def enqueue_all(jobs: Iterable[ApplicationJob], *, using: str | None = None) -> int:
    """``perform_all_later``: validate every job first, then push in chunks; no enqueue callbacks.

    Jobs whose class waits for the commit are pushed together when their database commits.
    """
    from django_async_jobs.job import ApplicationJob, _validate_priority

    groups: dict[str | None, list[ApplicationJob]] = {}
    aliases: dict[type, str | None] = {}  # one transaction check per class, not per job
    for index, job in enumerate(jobs):
        if not isinstance(job, ApplicationJob):
            raise TypeError(
                f"perform_all_later() takes job instances, got {argument_repr(job)} (a "
                f"{type(job).__name__}) at index {index}; "
                f"build them with MyJob(*args), or use MyJob.perform_bulk([args, ...])."
            )
        job._check_arguments()
        job.priority = _validate_priority(job.priority)
        if job.queue_name is None:
            job.queue_name = job._resolve_queue()
        kind = type(job)
        if kind not in aliases:
            aliases[kind] = commit_alias(kind, using)
        groups.setdefault(aliases[kind], []).append(job)
    for alias, group in groups.items():
        if alias is None:
            _send(group)
        else:
            for job in group:
                encode_job(job.serialize())
            transaction.on_commit(lambda group=group: _send(group), using=alias)
    return sum(len(group) for group in groups.values())


def _call_arguments(item: Any, index: int) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if isinstance(item, dict):
        return (), item
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], (list, tuple)) and isinstance(item[1], dict):
        return tuple(item[0]), item[1]
    if isinstance(item, (list, tuple)):
        return tuple(item), {}
    raise TypeError(
        f"perform_bulk() item {index} is {argument_repr(item)} (a {type(item).__name__}); give "
        f"a list/tuple of arguments, a dict of "
        f"keyword arguments, or an (args, kwargs) pair, e.g. [(1,), (2,)] or [((1,), {{'x': 2}})]."
    )


def enqueue_bulk(job_class: type[ApplicationJob], items: Iterable[Any], **options: Any) -> int:
    """``MyJob.perform_bulk(items, wait=..., queue=..., priority=..., using=...)``."""
    from django_async_jobs.job import _run_at

    unknown = set(options) - {"wait", "wait_until", "queue", "priority", "using"}
    if unknown:
        raise TypeError(
            f"perform_bulk() got unknown option(s) {sorted(unknown)}; it takes wait, wait_until, "
            f"queue, priority and using."
        )
    if isinstance(items, (str, bytes, dict)):
        raise TypeError("perform_bulk() takes a list of argument lists, e.g. [(1,), (2,)].")
    queue = options.get("queue")
    if queue is not None:
        validate_queue_name(queue, "perform_bulk(queue=)")
    run_at = _run_at(options.get("wait"), options.get("wait_until"))
    jobs = []
    for index, item in enumerate(items):
        args, kwargs = _call_arguments(item, index)
        job = job_class(*args, **kwargs)
        job.queue_name = queue
        if options.get("priority") is not None:
            job.priority = options["priority"]
        job.scheduled_at = run_at
        jobs.append(job)
    return enqueue_all(jobs, using=options.get("using"))
