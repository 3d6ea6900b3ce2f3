"""Batches: a group of jobs with callbacks when all have run, all have succeeded, or one died.

Sidekiq Pro's batches, on the middleware chains::

    batch = Batch(description="Import #7")
    batch.on("success", ImportDoneJob, 7)
    with batch.jobs():
        ImportChunkJob.perform_bulk([(7, start) for start in range(0, 200_000, 1_000)])

* ``complete`` fires once every job of the batch ran at least once (a job failing into its
  retries has run; a discarded one is done), ``success`` once every job succeeded, ``death``
  the first time one of its jobs dies. A callback is a job pushed by Redis itself, in the Lua
  step that settles the batch's last job (settle.lua), so it is pushed exactly once whatever
  process races or is killed: the member's new state, the counters and the push are one step.
* Enqueue side: ``BatchMembership.enqueue`` writes the batch's key list into the payload of
  each job enqueued inside ``with batch.jobs():`` and registers the job ids, one round trip per
  1,000 (before their push when a bulk fills a chunk, else at the block's end). A member may
  settle before its registration (lib.lua's states allow for it), and the batch cannot fire
  while a ``jobs()`` block is open, nor while the job adding to its own batch runs.
* Worker side: ``BatchMembership.perform`` drops the jobs of a cancelled batch, makes the
  running job's batch the parent of batches it opens, and hands the batch's keys to the settle
  step.
* Nesting: a batch opened inside a ``jobs()`` block or a running batch job is a child; its
  parent's ``complete`` and ``success`` wait for it. ``death`` goes up to every ancestor.
* Members are job ids: the same job (same id) enqueued twice into a batch is one member, and a
  run of it after it succeeded changes nothing; two ``perform_later`` calls are two jobs, both
  members.
* A process killed inside a ``jobs()`` block (other than a job's block of its own batch)
  leaves the batch open: it never fires, as Sidekiq's uncommitted batch; its jobs still run.

A batch is one Redis hash (``keys.batch``); it expires ``BATCH_RETENTION`` after it finished
and ``PENDING_TTL`` after its last addition otherwise. ``chain`` and ``chord`` build on it.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from django_async_jobs import conf, retries, signals
from django_async_jobs.broker.client import get_broker
from django_async_jobs.serialization import encode_job, new_job_id

if TYPE_CHECKING:
    from django_async_jobs.job import ApplicationJob, ConfiguredJob

logger = logging.getLogger("django_async_jobs.job")

EVENTS = ("complete", "success", "death")
# Job ids per registration round trip.
CHUNK = 1000
# Seconds an unfinished batch is kept after its last addition (a job stuck in retries, a
# dead job nobody retries): no batch stays in Redis for ever.
PENDING_TTL = 30 * 86400
# How deep batches nest: the key list travels in every member's payload.
MAX_DEPTH = 16
# Seconds a worker trusts what it learnt about a batch's cancellation.
CANCEL_CHECK = 1.0
COUNTERS = (
    "created_at", "description", "parent", "total", "pending", "unran", "failures", "dead", "open",
    "kids", "kids_ok", "complete_at", "success_at", "death_at", "cancelled_at",
)
CALLBACK_FIELDS = tuple(f"{prefix}:{event}" for event in EVENTS for prefix in ("cb", "fired"))


class BatchGone(LookupError):
    """The batch expired (``BATCH_RETENTION``, ``PENDING_TTL``) or was never created here."""


# The innermost open ``jobs()`` block of this thread or task, and the running job's batch keys.
_block: contextvars.ContextVar[_Block | None] = contextvars.ContextVar("django_async_jobs_batch", default=None)
_running: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "django_async_jobs_running_batch", default=None
)


def _retention() -> int:
    return max(1, int(conf._seconds(conf.get_settings().raw["BATCH_RETENTION"])))


def _enclosing() -> tuple[str, ...]:
    """The key list of the batch a new batch belongs to: the open block's, or the running job's."""
    block = _block.get()
    if block is not None:
        return block.keys
    return _running.get() or ()


class Batch:
    """A group of jobs with callbacks (module docstring). ``Batch(description=...)`` starts a
    new one, created in Redis at its first ``jobs()`` block; ``job.batch`` is the running job's."""

    def __init__(self, description: str = "") -> None:
        if not isinstance(description, str):
            raise TypeError(f"Batch(description=) takes a str, got {type(description).__name__}.")
        self.bid: str = new_job_id()
        self.description = description
        self.keys: tuple[str, ...] = ()  # the batch's, then its parents': set when it is created
        self._callbacks: dict[str, list[str]] = {event: [] for event in EVENTS}

    def __repr__(self) -> str:
        return f"<Batch {self.bid} {self.description!r}>"

    @classmethod
    def _existing(cls, keys: tuple[str, ...]) -> Batch:
        batch = cls.__new__(cls)
        batch.bid = keys[0][len(get_broker().keys.batch_base):]
        batch.description = ""
        batch.keys = keys
        batch._callbacks = {}
        return batch

    def on(self, event: str, job_class: type[ApplicationJob] | ConfiguredJob, *args: Any, **kwargs: Any) -> Batch:
        """Run ``job_class(*args, **kwargs)`` when ``event`` (complete, success, death) happens,
        on the class's queue, or ``Job.set(queue=..., priority=...)``'s; ``self.batch_id`` tells
        it which batch. Before ``jobs()``."""
        if event not in EVENTS:
            raise ValueError(f"Batch.on(): unknown event {event!r}; use one of {', '.join(EVENTS)}.")
        if self.keys:
            raise RuntimeError(
                f"Batch.on({event!r}) after the batch's first jobs() block: define its callbacks before."
            )
        options: dict[str, Any] = {}
        if hasattr(job_class, "job_class") and hasattr(job_class, "options"):  # Job.set(...)
            job_class, options = job_class.job_class, {k: v for k, v in job_class.options.items() if v is not None}
            if set(options) - {"queue", "priority"}:
                raise TypeError(
                    f"Batch.on({event!r}, ...): a callback takes set(queue=..., priority=...) only, got "
                    f"{sorted(set(options) - {'queue', 'priority'})}; it runs when the batch fires."
                )
        if not isinstance(job_class, type) or not hasattr(job_class, "job_name"):
            raise TypeError(f"Batch.on({event!r}, ...) takes a job class (an ApplicationJob), got {job_class!r}.")
        job = job_class(*args, **kwargs)
        job._prepare_enqueue(options.get("queue"), options.get("priority"), None)
        self._callbacks[event].append(callback_payload(job, fired_by=self.bid))
        return self

    @contextlib.contextmanager
    def jobs(self) -> Iterator[Batch]:
        """Jobs enqueued inside join the batch. The batch cannot fire while the block is open;
        at its end the last job ids are registered and, when every job is done (or there was
        none), its callbacks fire."""
        broker = get_broker()
        own = False
        if not self.keys:
            parent = _enclosing()
            if len(parent) >= MAX_DEPTH:
                raise ValueError(f"Batch {self.bid}: batches nest at most {MAX_DEPTH} deep.")
            self.keys = (broker.keys.batch(self.bid), *parent)
            created = self._open(broker, create=True)
        elif self.keys == _running.get():
            own, created = True, 0  # a job adding to its own batch: it keeps the batch from finishing
        else:
            created = self._open(broker, create=False)
        if created < 0:
            raise BatchGone(f"batch {self.bid} is gone: it expired (BATCH_RETENTION) or was never created.")
        block = _Block(self.keys, own)
        token = _block.set(block)
        try:
            yield self
        finally:
            _block.reset(token)
            block.close()

    def _open(self, broker: Any, *, create: bool) -> int:
        callbacks = tuple(_json_list(self._callbacks.get(event, ())) for event in EVENTS)
        return broker.batch_open(
            list(self.keys), self.bid, PENDING_TTL, _retention(), self.description, callbacks, create
        )

    @property
    def cancelled(self) -> bool:
        """True once the batch (or one it is part of) was cancelled (``Batch.cancel``); in a
        worker, known within ``CANCEL_CHECK`` seconds."""
        return is_cancelled(self.keys)

    @staticmethod
    def status(bid: str) -> dict[str, Any] | None:
        """The batch's counters and callbacks, or None when it is gone (see ``api.batch``)."""
        return status(bid)

    @staticmethod
    def cancel(bid: str) -> bool:
        """Cancel a batch: its jobs are dropped when fetched, a running one sees
        ``self.batch.cancelled``, and none of its (or its children's) callbacks fires.
        False when the batch is gone."""
        return get_broker().batch_cancel(bid)


def _json_list(payloads: Iterable[str]) -> str:
    """Callback payloads as batch.lua stores them: a JSON list of strings, or '' for none."""
    payloads = list(payloads)
    return json.dumps(payloads) if payloads else ""


def callback_payload(job: ApplicationJob, *, fired_by: str | None = None) -> str:
    """A prepared job's payload, pushed later by Redis as it is (no enqueue chain runs then)."""
    data = job.serialize()
    if fired_by is not None:
        data["fired_by"] = fired_by
    return encode_job(data)


class _Block:
    """One ``jobs()`` block: the jobs that joined, registered by chunks of ``CHUNK``. ``own``:
    the block of a running job adding to its own batch, which the job itself keeps from
    finishing; it opens and closes nothing, so a worker killed inside it leaves nothing open."""

    def __init__(self, keys: tuple[str, ...], own: bool) -> None:
        self.keys = keys
        # The payloads' "batch" field: one list for every job of the block, not one per job,
        # which the garbage collector would walk again and again in a bulk of 200,000.
        self.field = list(keys)
        self.own = own
        self.waiting: list[ApplicationJob] = []

    def joined(self, job: ApplicationJob) -> None:
        self.waiting.append(job)
        if len(self.waiting) >= CHUNK:
            self.flush()

    def flush(self) -> None:
        """Register the jobs whose push is sure (or still to come: a plain push is never
        refused); a unique job may find its lock taken when pushed: it waits for the block's end."""
        ready, later = [], []
        for job in self.waiting:
            unsure = job.successfully_enqueued is None and job.lock_keys is not None and "key" in job.lock_keys
            (later if unsure else ready).append(job)
        self.waiting = later
        self._register([job.job_id for job in ready if job.successfully_enqueued is not False], close=False)

    def close(self) -> None:
        ids = [job.job_id for job in self.waiting if job.successfully_enqueued is not False]
        self.waiting = []
        self._register(ids, close=not self.own)

    def _register(self, ids: list[str], close: bool) -> None:
        broker = get_broker()
        chunks = [ids[start : start + CHUNK] for start in range(0, len(ids), CHUNK)]
        if close and not chunks:
            chunks = [[]]
        for index, chunk in enumerate(chunks):
            broker.batch_add(list(self.keys), chunk, PENDING_TTL, close=close and index == len(chunks) - 1)


# -- the layer -------------------------------------------------------------------------------------


def member_keys(job: Any) -> tuple[str, ...] | None:
    """The job's batch key list from its payload, or None: not in a batch (a field that is not a
    list of this prefix's batch keys is ignored, and the job runs as one in no batch)."""
    keys = job.payload.get("batch")
    if keys is None:
        return None
    if type(keys) is list and 0 < len(keys) <= MAX_DEPTH:
        base = get_broker().keys.batch_base
        for key in keys:
            if type(key) is not str or not key.startswith(base):
                break
        else:
            return tuple(keys)
    logger.warning("%s %s: its payload's 'batch' field is not a batch; ignored", job.job_name, job.job_id)
    return None


class BatchMembership:
    """At enqueue, inside a ``jobs()`` block: the job joins the block's batch. In the worker,
    outermost but for the log line: a job of a cancelled batch is dropped (``cancelled``); the
    others run with their batch as ``_running`` and their outcome carries the batch's keys to the
    settle step, which counts them (settle.lua)."""

    def enqueue(self, job: ApplicationJob, call_next: Callable[[Any], Any]) -> Any:
        block = _block.get()
        if block is None:
            return call_next(job)
        job.payload["batch"] = block.field
        result = call_next(job)
        if job._delivered:
            block.joined(job)
        return result

    def perform(self, job: ApplicationJob, call_next: Callable[[Any], Any]) -> Any:
        if "batch" not in job.payload:  # most jobs: no call for them
            return call_next(job)
        keys = member_keys(job)
        if keys is None:
            return call_next(job)
        if is_cancelled(keys):
            _drop(job)
            return None
        token = _running.set(keys)
        try:
            result = call_next(job)
        finally:
            _running.reset(token)
        _hand_over(job, keys)
        return result

    async def aperform(self, job: ApplicationJob, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        keys = member_keys(job)
        if keys is None:
            return await call_next(job)
        if is_cancelled(keys):
            _drop(job)
            return None
        token = _running.set(keys)
        try:
            result = await call_next(job)
        finally:
            _running.reset(token)
        _hand_over(job, keys)
        return result


def _drop(job: ApplicationJob) -> None:
    logger.info("%s %s: its batch was cancelled; dropped", job.job_name, job.job_id)
    signals.send(signals.job_cancelled, type(job), job=job, job_id=job.job_id)
    job.outcome = retries.Outcome("cancelled", keys=member_keys(job) or ())


# The succeeded outcome with a batch's keys, per key list: most jobs of a batch end so, and a
# dataclass replace() per job would cost as much as the rest of this layer.
_succeeded: dict[tuple[str, ...], retries.Outcome] = {}


def _hand_over(job: ApplicationJob, keys: tuple[str, ...]) -> None:
    outcome = job.outcome
    if outcome is retries.SUCCEEDED:
        found = _succeeded.get(keys)
        if found is None:
            if len(_succeeded) > 1000:
                _succeeded.clear()
            found = _succeeded[keys] = replace(outcome, keys=keys)
        job.outcome = found
    elif outcome is not None:
        job.outcome = replace(outcome, keys=(*outcome.keys, *keys))


# -- cancellation ------------------------------------------------------------------------------


_cancelled: dict[str, tuple[float, bool]] = {}
_cancelled_lock = threading.Lock()


def is_cancelled(keys: tuple[str, ...]) -> bool:
    """Whether a batch of ``keys`` was cancelled; each batch looked up at most once per
    ``CANCEL_CHECK`` seconds per process, one round trip for those due."""
    now = time.monotonic()
    due = [key for key in keys if _cancelled.get(key, (0.0, False))[0] <= now]
    if due:
        broker = get_broker()
        with broker.redis.pipeline(transaction=False) as pipe:
            for key in due:
                pipe.hexists(key, "cancelled_at")
            found = pipe.execute()
        with _cancelled_lock:
            if len(_cancelled) > 10_000:
                _cancelled.clear()
            for key, marked in zip(due, found, strict=True):
                _cancelled[key] = (now + CANCEL_CHECK, bool(marked))
    return any(_cancelled.get(key, (0.0, False))[1] for key in keys)


# -- a job's batch -----------------------------------------------------------------------------------


def of_job(job: ApplicationJob) -> Batch | None:
    """``job.batch``: the batch the job is a member of, or None."""
    keys = member_keys(job)
    return Batch._existing(keys) if keys else None


def batch_id(job: ApplicationJob) -> str | None:
    """``job.batch_id``: the batch the job is a member of, or whose callback it is."""
    keys = member_keys(job)
    if keys:
        return keys[0][len(get_broker().keys.batch_base):]
    fired_by = job.payload.get("fired_by")
    return fired_by if isinstance(fired_by, str) else None


# -- status ----------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _int(value: Any) -> int:
    number = _number(value)
    return int(number) if number is not None else 0


def _read(values: list[Any], bid: str) -> dict[str, Any] | None:
    """A status from the hash's ``COUNTERS`` then ``CALLBACK_FIELDS`` values."""
    texts = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]
    row = dict(zip((*COUNTERS, *CALLBACK_FIELDS), texts, strict=True))
    if row["created_at"] is None:
        return None
    base = get_broker().keys.batch_base
    callbacks: dict[str, Any] = {}
    for event in EVENTS:
        names = []
        raw = row[f"cb:{event}"]
        if raw:
            names = [_job_name(payload) for payload in _loads(raw, [])]
        callbacks[event] = {"jobs": names, "fired_at": _number(row[f"fired:{event}"])}
    total, pending = _int(row["total"]), _int(row["pending"])
    parent = row["parent"] or ""
    return {
        "bid": bid,
        "description": row["description"] or "",
        "parent": parent[len(base):] if parent.startswith(base) else None,
        "created_at": _number(row["created_at"]),
        "total": total,
        "pending": pending,
        "succeeded": total - pending,
        "not_run": _int(row["unran"]),
        "failures": _int(row["failures"]),
        "dead": _int(row["dead"]),
        "children_pending": _int(row["kids_ok"]),
        "open_blocks": _int(row["open"]),
        "complete": row["complete_at"] is not None,
        "complete_at": _number(row["complete_at"]),
        "success": row["success_at"] is not None,
        "success_at": _number(row["success_at"]),
        "death_at": _number(row["death_at"]),
        "cancelled": row["cancelled_at"] is not None,
        "cancelled_at": _number(row["cancelled_at"]),
        "callbacks": callbacks,
    }


def _loads(text: str, default: Any) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return default


def _job_name(payload: Any) -> str:
    data = _loads(payload, {}) if isinstance(payload, str) else {}
    name = data.get("job") if isinstance(data, dict) else None
    return name if isinstance(name, str) else "?"


def status(bid: str) -> dict[str, Any] | None:
    """``Batch.status``: one round trip, never the members."""
    broker = get_broker()
    values = broker.redis.hmget(broker.keys.batch(bid), [*COUNTERS, *CALLBACK_FIELDS])
    return _read(values, bid)


def listing(offset: int, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Batches newest first, ``limit`` from ``offset``, and how many the index holds (some of
    which may have expired: they are left out of the page)."""
    broker = get_broker()
    k = broker.keys
    with broker.redis.pipeline(transaction=False) as pipe:
        pipe.zcard(k.batches)
        pipe.zrevrange(k.batches, offset, offset + limit - 1)
        count, bids = pipe.execute()
    bids = [b.decode() if isinstance(b, bytes) else b for b in bids]
    with broker.redis.pipeline(transaction=False) as pipe:
        for bid in bids:
            pipe.hmget(k.batch(bid), [*COUNTERS, *CALLBACK_FIELDS])
        rows = pipe.execute() if bids else []
    found = [_read(values, bid) for bid, values in zip(bids, rows, strict=True)]
    return [row for row in found if row is not None], count


# -- workflows ------------------------------------------------------------------------------------


def chain(*steps: ApplicationJob | Iterable[ApplicationJob], description: str = "") -> list[str]:
    """Run ``steps`` one after the other: a step (a job, or a list of jobs run side by side)
    starts when the one before succeeded, Celery's ``chain`` (and ``group`` for a list step).

    Each step is a batch whose ``success`` callbacks are the next step's jobs, pushed by
    Redis; a step whose job dies stops the chain there (its batch's ``death`` fires). Inside a
    ``jobs()`` block or a batch job, the steps are children of that batch: it succeeds once the
    last step did. Jobs after the first step skip the enqueue middleware (they are pushed by the
    settle step as they were built). Returns the steps' batch ids.
    """
    groups = [_step(step, index) for index, step in enumerate(steps)]
    if not groups:
        raise ValueError("chain() takes at least one step.")
    broker = get_broker()
    parent = _enclosing()
    if len(parent) >= MAX_DEPTH:
        raise ValueError(f"chain(): batches nest at most {MAX_DEPTH} deep.")
    batches = [Batch(f"{description} (step {i + 1}/{len(groups)})".strip()) for i in range(len(groups))]
    for batch in batches[1:]:  # the first step's is created by its jobs() block
        batch.keys = (broker.keys.batch(batch.bid), *parent)
    payloads: list[list[str]] = [[] for _ in groups]
    for index, (batch, group) in enumerate(zip(batches, groups, strict=True)):
        for job in group:
            job._prepare_enqueue(None, None, None)
            if index:
                job.payload["batch"] = list(batch.keys)
                payloads[index].append(callback_payload(job, fired_by=batches[index - 1].bid))
    for index in reversed(range(len(groups))):  # a step exists before the one that pushes it
        batch = batches[index]
        if index + 1 < len(groups):
            batch._callbacks["success"] = payloads[index + 1]
        if index:
            batch._open(broker, create=True)
            broker.batch_add(list(batch.keys), [job.job_id for job in groups[index]], PENDING_TTL, close=True)
    with batches[0].jobs():
        for job in groups[0]:
            job._run_enqueue_chain()
    return [batch.bid for batch in batches]


def chord(header: Iterable[ApplicationJob], body: ApplicationJob, description: str = "") -> list[str]:
    """Run the ``header`` jobs side by side, then ``body`` once all succeeded (Celery's
    ``chord``): ``chain(list(header), body)``."""
    return chain(list(header), body, description=description)


def _step(step: Any, index: int) -> list[ApplicationJob]:
    jobs = [step] if hasattr(step, "job_name") else list(step)
    if not all(hasattr(job, "job_name") and hasattr(job, "serialize") for job in jobs):
        raise TypeError(
            f"chain(): step {index + 1} must be a job (MyJob(args...)) or a list of jobs, got {step!r}."
        )
    return jobs
