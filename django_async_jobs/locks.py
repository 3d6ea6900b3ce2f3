"""Unique jobs: at most one job per class and lock arguments, enqueued and/or running.

Two kinds of lock, both plain Redis strings with a TTL, so none can stay stuck forever:

* the *enqueue lock* (``until_executing``, ``until_executed``, ``until_and_while_executing``,
  ``until_expired``) is taken in the same Lua step that pushes the job (``lock_push.lua``): 200
  racing ``perform_later`` calls enqueue exactly one job. Its value is the job id, so only that
  job releases it: when a worker starts it (``until_executing``, ``until_and_while_executing``),
  in the settle step that acknowledges or buries it (``until_executed``), or never
  (``until_expired``: the TTL does).
* the *run lock* (``while_executing``, ``until_and_while_executing``) is taken by the worker just
  before ``perform`` and released just after. Its value is the in-flight field, unique per
  fetch, so the recovery and release steps can drop the lock of a job whose worker died.

While a job runs, the locks it holds (its run lock, and ``until_executed``'s enqueue lock) get
their full ``lock_ttl`` again at every heartbeat of its process, so a job that runs longer than
``lock_ttl`` keeps them; a process that dies stops renewing and the TTL ends them.

The payload carries ``"lock": {"mode", "key", "run"}`` so the Lua steps can release without
Python. A retried job keeps its enqueue lock (it is still pending); a dead one releases it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from django.core.exceptions import ImproperlyConfigured

from django_async_jobs.broker.client import get_broker
from django_async_jobs.conf import argument_repr

if TYPE_CHECKING:
    from django_async_jobs.job import ApplicationJob

logger = logging.getLogger("django_async_jobs.job")

MODES = ("until_executing", "until_executed", "until_and_while_executing", "while_executing", "until_expired")
ENQUEUE_LOCKED = frozenset(("until_executing", "until_executed", "until_and_while_executing", "until_expired"))
RUN_LOCKED = frozenset(("while_executing", "until_and_while_executing"))
RELEASED_AT_START = frozenset(("until_executing", "until_and_while_executing"))
CONFLICTS = ("log", "raise", "reschedule")
DEFAULT_TTL = 3600.0
# A job that finds its run lock taken and has on_conflict = "reschedule" tries again this much later.
RESCHEDULE_DELAY = 1.0


# Locks held by the jobs running in this process: lock key -> (holder, TTL in ms).
_held: dict[str, tuple[str, int]] = {}
_held_guard = threading.Lock()


def renew_held() -> int:
    """Renew every lock a running job of this process holds (the heartbeat calls this)."""
    with _held_guard:
        held = [(key, holder, ttl) for key, (holder, ttl) in _held.items()]
    return get_broker().renew_locks(held)


def _hold(locks: list[tuple[str, str]], ttl_ms: int) -> None:
    with _held_guard:
        for key, holder in locks:
            _held[key] = (holder, ttl_ms)


def _let_go(locks: list[tuple[str, str]]) -> None:
    with _held_guard:
        for key, holder in locks:
            if _held.get(key, (None,))[0] == holder:
                del _held[key]


class LockConflict(Exception):
    """A unique job's lock is held by another job (``on_conflict = "raise"``)."""

    def __init__(self, job: ApplicationJob, key: str, holder: str | None, when: str) -> None:
        self.job = job
        self.key = key
        self.holder = holder
        super().__init__(
            f"{type(job).__name__} {job.job_id} (queue {job.queue_name!r}, lock args "
            f"{argument_repr(lock_args(job))}) is already {when} (lock {type(job).lock!r}, "
            f"held by job {holder or 'unknown'}). "
            f"Set on_conflict = 'log' to drop duplicates quietly, or change lock_args()."
        )


def compile_lock(job_class: type) -> int | None:
    """Validate ``lock`` / ``lock_ttl`` / ``on_conflict`` when the class is defined; the TTL in ms."""
    name = job_class.__qualname__
    mode = job_class.lock
    if mode is None:
        return None
    if mode not in MODES:
        raise ImproperlyConfigured(f"{name}.lock = {mode!r}; use one of {', '.join(map(repr, MODES))} or None.")
    if job_class.on_conflict not in CONFLICTS:
        raise ImproperlyConfigured(
            f"{name}.on_conflict = {job_class.on_conflict!r}; use one of {', '.join(map(repr, CONFLICTS))}."
        )
    ttl = job_class.lock_ttl
    seconds = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds <= 0:
        raise ImproperlyConfigured(
            f"{name}.lock_ttl must be a positive number of seconds or a timedelta, got {ttl!r}: "
            "every lock expires, so a lost worker never blocks a job forever."
        )
    if not isinstance(job_class.__dict__.get("lock_args", classmethod(lambda cls: None)), classmethod):
        raise ImproperlyConfigured(f"{name}.lock_args must be a classmethod: @classmethod def lock_args(cls, *args, **kwargs).")
    return max(1, int(seconds * 1000))


def lock_args(job: ApplicationJob) -> Any:
    return type(job).lock_args(*job.arguments, **job.kwargs)


def _digest(job: ApplicationJob) -> str:
    value = lock_args(job)
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=repr)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{type(job).__name__}.lock_args() must return JSON-like values: {exc}") from None
    return hashlib.sha1(text.encode()).hexdigest()


def payload_lock(job: ApplicationJob) -> dict[str, str]:
    """The ``lock`` field of a unique job's payload: its mode and the keys the Lua steps release."""
    mode = type(job).lock
    keys = get_broker().keys
    digest = _digest(job)
    data = {"mode": mode}
    if mode in ENQUEUE_LOCKED:
        data["key"] = keys.lock(job.job_name, digest)
    if mode in RUN_LOCKED:
        data["run"] = keys.run_lock(job.job_name, digest)
    return data


def push(job: ApplicationJob, payload: str) -> bool:
    """Take a unique job's enqueue lock and push it (``payload``, its encoded payload) in one Lua
    step; False (or ``LockConflict``) when the lock is taken.

    There is no window where the lock is held and the job not yet in Redis (or the reverse). The
    TTL counts from the run time of a scheduled job.
    """
    key = job.lock_keys["key"]
    pushed, holder = get_broker().lock_push(key, job.job_id, enqueue_ttl_ms(job), payload, job.scheduled_at)
    if pushed:
        return True
    conflict(job, key, holder, "enqueued")
    return False


def enqueue_ttl_ms(job: ApplicationJob) -> int:
    """The TTL of a serialized unique job's enqueue lock: ``lock_ttl``, counted from the run
    time of a scheduled job."""
    delay = 0.0
    if job.scheduled_at is not None:
        delay = max(0.0, job.scheduled_at - job.enqueued_at)
    return type(job)._lock_ttl_ms + int(delay * 1000)


def conflict(job: ApplicationJob, key: str, holder: str | None, when: str) -> None:
    """What ``on_conflict`` says to do when a lock is held: raise ``LockConflict``, or log."""
    if type(job).on_conflict == "raise":
        raise LockConflict(job, key, holder, when)
    logger.info(
        "%s %s not %s: lock %s is held by job %s", job.job_name, job.job_id,
        "enqueued" if when == "enqueued" else "run", key, holder,
    )


class UniqueJobs:
    """Unique jobs on both chains, for classes with a ``lock``.

    At enqueue, the lock's keys are stamped on the job (``job.lock_keys``, the payload's
    ``lock``), and the push takes the enqueue lock in its own Lua step. In the worker, around
    ``perform``: an ``until_executing`` lock is released at the start, a run lock taken for the
    run (its holder is the in-flight field, so the recovery steps can free it), and both kinds
    renewed at every heartbeat while the job runs.
    """

    def applies_to(self, job_class: type) -> bool:
        return job_class.lock is not None

    def enqueue(self, job: ApplicationJob, call_next: Callable[[Any], Any]) -> Any:
        job.lock_keys = payload_lock(job)
        return call_next(job)

    def perform(self, job: ApplicationJob, call_next: Callable[[Any], Any]) -> Any:
        lock = job.payload.get("lock")
        if not isinstance(lock, dict):
            return call_next(job)
        broker = get_broker()
        field = job.fetched_as
        ttl_ms = type(job)._lock_ttl_ms
        key = _own(lock.get("key"), broker.keys.lock_base)
        held = [(key, job.job_id)] if lock.get("mode") == "until_executed" and key else []
        if lock.get("mode") in RELEASED_AT_START and key:
            broker.unlock(key, job.job_id)
        run_key = _own(lock.get("run"), broker.keys.run_lock_base)
        if run_key:
            taken, holder = broker.take_lock(run_key, field, ttl_ms)
            if not taken:
                return _run_conflict(job, run_key, holder)
            held.append((run_key, field))
        _hold(held, ttl_ms)
        try:
            return call_next(job)
        finally:
            _let_go(held)
            if run_key:
                broker.unlock(run_key, field)


def _own(key: Any, base: str) -> str | None:
    """A lock key from a payload, if it is one of this prefix's lock keys: a payload written
    into Redis by hand must not make the worker take or delete any other key."""
    return key if isinstance(key, str) and key.startswith(base) else None


def _run_conflict(job: ApplicationJob, key: str, holder: str | None) -> None:
    if type(job).on_conflict == "reschedule":
        logger.info("%s %s waits %.1fs: lock %s is held by %s", job.job_name, job.job_id, RESCHEDULE_DELAY, key, holder)
        job.retry_job(wait=RESCHEDULE_DELAY)
        return
    conflict(job, key, holder, "running")

