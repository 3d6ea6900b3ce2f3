"""Resumable jobs: progress kept in the payload, checkpoints, steps, and cancelling a job.

A long job (an ``IterableJob``, or a ``perform`` made of ``self.step(...)`` calls) keeps its
progress in its own payload, in the ``continuation`` field::

    {"completed": ["download"], "step": "rows", "cursor": 250, "resumptions": 1}
    {"cursor": 250, "done": 250, "errors": 3}                   (an iterable job)

That dict is ``job.payload["continuation"]`` itself, updated in place as the job goes, so
whatever puts the job back carries it without knowing about it: a checkpoint's ``Interrupted``
(a ``retries.Reschedule``, which puts back ``job.payload``), a retry after an exception (the
retry rules build the retry from ``job.payload``), and a recovery after ``kill -9``: at most
every ``CHECKPOINT_INTERVAL`` the job's payload in its process's in-flight hash is replaced by
the current one (``checkpoint.lua``, only while the job is still there), and every path that
hands a lost job back (``recover.lua``, ``release.lua``, a heartbeat) hands back that payload. A crash therefore repeats at most the
items done in the last ``CHECKPOINT_INTERVAL``, plus the one in progress.

Why the in-flight payload rather than a key of its own (Sidekiq keeps ``it-<jid>``): the job in
flight is where every recovery already looks, and it goes back whole, progress included, in
that same atomic step. A key of its own would have to be read when the job starts, deleted when
it ends, and outlive however long the job waits in a queue or in the retry set.

A checkpoint comes after each iteration, between steps, and at ``step.set()``,
``step.advance()`` and ``step.checkpoint()``. It asks the worker running the job:

* whether the job was cancelled: ``JobCancelled`` (a ``retries.Drop``) ends it there;
* whether the worker is stopping (SIGTERM, the dashboard's stop or quiet): ``Interrupted`` puts
  the job back at once with its progress, which is not a retry;
* whether the job has run ``max_iteration_runtime`` (an iterable job): ``Interrupted`` too;
* and saves the progress in flight once ``CHECKPOINT_INTERVAL`` has passed since the last save.

How a running job reaches its worker without this layer importing the worker's: the context
variable ``current_worker``. Each processor thread of a worker sets it once, when it starts, to
the worker's ``WorkerState``: its ``stopping`` event, its process id (whose in-flight hash
holds the job), and which of the jobs it holds were cancelled. A context variable belongs to
its thread, and the task of an async job copies it from the thread that handed the job over.
Outside a worker (``perform_now``, the test modes) it is unset: a checkpoint does nothing, and
the job runs to its end.

Cancelling (``api.cancel``) marks the job (``p:cancel:<job id>``, for ``CANCEL_TTL``) and takes
it out of any queue or set it waits in. A worker's heart looks up at each beat which of the
jobs it holds are marked (``WorkerState.refresh``): from then, a job not started yet is dropped
by the ``Cancellation`` layer, a running iterable or stepped job stops at its next checkpoint,
and ``self.cancelled`` is true in any running job (which, when it then returns, ends as
cancelled too). A job that is not cancelled pays no Redis round trip for any of it.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import redis
from django.db import connections

from django_async_jobs import conf, dispatch, retries, signals
from django_async_jobs.broker.client import Broker, get_broker
from django_async_jobs.serialization import SerializationError, dump_value, payload_bytes

if TYPE_CHECKING:
    from django_async_jobs.job import ApplicationJob

logger = logging.getLogger("django_async_jobs.job")

FIELD = "continuation"
# Seconds a cancel mark lasts: long enough for a job cancelled as it moved (into a worker, or
# back to a queue) to be found by the worker that runs it next, whatever its queue's backlog.
CANCEL_TTL = 7 * 86400


class CheckpointError(RuntimeError):
    """A checkpoint inside ``transaction.atomic()``: were the job to stop there, the work it
    records as done would roll back, and be skipped when it goes on."""


class Interrupted(retries.Reschedule):
    """A checkpoint put the job back with its progress: its worker is stopping, or it ran for
    ``max_iteration_runtime``. Not a failure: no retry is used, and it goes on where it was."""

    outcome = "interrupted"


class JobCancelled(retries.Drop):
    """A checkpoint found the job cancelled (``api.cancel``): it ends there, acknowledged."""

    outcome = "cancelled"


# -- the worker, as a running job sees it ----------------------------------------------------------


class WorkerState:
    """What a running job may ask the worker that runs it (module docstring)."""

    def __init__(self, process_id: str, stopping: threading.Event) -> None:
        self.process_id = process_id
        self.stopping = stopping
        self.cancelled: frozenset[str] = frozenset()  # ids of held jobs marked cancelled

    def refresh(self, broker: Broker) -> None:
        """Look up which of the jobs this process holds are cancelled (the heart, each beat)."""
        self.cancelled = broker.cancelled_in_flight(self.process_id)


current_worker: contextvars.ContextVar[WorkerState | None] = contextvars.ContextVar(
    "django_async_jobs_worker", default=None
)


def cancelled(job: ApplicationJob) -> bool:
    """``job.cancelled``: the worker running it learnt, at its last heartbeat, that it was
    cancelled. A job that saw it and returned ends as cancelled (``Cancellation``)."""
    state = current_worker.get()
    if state is None or job.job_id not in state.cancelled:
        return False
    job._saw_cancel = True
    return True


def checkpoint_interval() -> float:
    return conf._seconds(conf.get_settings().raw["CHECKPOINT_INTERVAL"])


# -- progress in the payload ------------------------------------------------------------------------


def cursor_value(cursor: Any, where: str) -> Any:
    """``cursor`` as the payload keeps it (strict JSON, a tuple becomes a list), or a
    ``SerializationError`` naming ``where`` it came from."""
    try:
        return dump_value(cursor, False, "the cursor")
    except SerializationError as exc:
        raise SerializationError(
            f"{where}: {exc} A cursor is strict JSON (a str, an int, a float, a bool, None, or lists "
            f"and dicts of them), e.g. a primary key, an index or str(value)."
        ) from None


def _count(value: Any) -> bool:
    return type(value) is int and value >= 0


def _names(value: Any) -> bool:
    return type(value) is list and all(type(name) is str for name in value)


# What each field of a continuation must be; anything else in a payload was not written by a
# worker and is dropped (the job then redoes that part: at least once, never skipped).
_FIELDS: dict[str, Callable[[Any], bool]] = {
    "completed": _names,
    "step": lambda value: type(value) is str,
    "cursor": lambda value: True,  # whatever JSON the job wrote; its enumerator or step reads it
    "done": _count,
    "errors": _count,
    "resumptions": _count,
}


class Continuation:
    """One execution's progress: ``job.payload["continuation"]``, read defensively, updated in
    place; and the checkpoints of that execution."""

    def __init__(self, job: ApplicationJob) -> None:
        raw = job.payload.get(FIELD)
        state: dict[str, Any] = {}
        if isinstance(raw, dict):
            state = {key: value for key, value in raw.items() if key in _FIELDS and _FIELDS[key](value)}
        if raw is not None and state != raw:
            logger.warning(
                "%s %s: its payload's %r field holds values no worker wrote; they are ignored",
                job.job_name, job.job_id, FIELD,
            )
        self.started = bool(state.get("completed") or "step" in state or "cursor" in state or state.get("done"))
        if self.started:
            state["resumptions"] = state.get("resumptions", 0) + 1
        job.payload[FIELD] = state
        self.job = job
        self.state = state
        self.execution = job.executions
        self.checkpoints = Checkpoints(job)
        self.seen: set[str] = set()  # step names met in this execution
        self.ran_step = False

    @property
    def resumptions(self) -> int:
        return self.state.get("resumptions", 0)

    def describe(self) -> str:
        state = self.state
        if "step" in state:
            return f"in step {state['step']!r} at cursor {state['cursor']!r}"
        if "cursor" in state:
            return f"at cursor {state['cursor']!r} after {state.get('done', 0)} item(s)"
        if state.get("completed"):
            return f"after step {state['completed'][-1]!r}"
        return "before any progress"

    # -- steps --------------------------------------------------------------------------------------

    def run_step(self, fn: Callable[..., Any], name: str | None, start: Any) -> Any:
        name = _step_name(fn, name)
        job = self.job
        if job._is_async:
            raise TypeError(
                f"{job.job_name}: steps need a synchronous perform(); their checkpoints talk to Redis "
                f"and would block the event loop."
            )
        if name in self.seen:
            raise ValueError(
                f"{job.job_name}: step {name!r} came twice in one perform(); each step needs a name of "
                f"its own (name=...)."
            )
        self.seen.add(name)
        state = self.state
        if name in state.get("completed", ()):
            logger.debug("%s %s: step %r skipped, completed before", job.job_name, job.job_id, name)
            return None
        current = state.get("step")
        if current is not None and current != name:
            raise ValueError(
                f"{job.job_name} {job.job_id}: step {current!r} was in progress when the job stopped, "
                f"but perform() now reaches step {name!r} first. Keep the order and the names of the "
                f"steps while jobs that ran them may resume."
            )
        call = _step_call(fn, name)
        if self.ran_step:
            self.checkpoints.guard()
            self.checkpoints()  # between steps: where an interruption loses nothing
        resumed = current == name
        cursor = state.get("cursor") if resumed else cursor_value(start, f"step {name!r}")
        state["step"] = name
        state["cursor"] = cursor
        result = call(Step(name, cursor, resumed, self))
        state.setdefault("completed", []).append(name)
        del state["step"], state["cursor"]
        self.ran_step = True
        return result


def continuation(job: ApplicationJob) -> Continuation:
    """The job's ``Continuation`` for this execution (made at the first use)."""
    found = job.__dict__.get("_continuation")
    if found is None or found.execution != job.executions:
        found = job._continuation = Continuation(job)
    return found


def _step_name(fn: Any, name: str | None) -> str:
    if name is None:
        name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise TypeError(
            f"a step needs a name: pass a method (self.step(self.download)) or name='...' "
            f"(letters, digits and '_'), got {name!r}."
        )
    return name


def _step_call(fn: Any, name: str) -> Callable[[Step], Any]:
    """``fn(step)`` or ``fn()``, as its signature takes (ActiveJob: 0 or 1 argument)."""
    if not callable(fn):
        raise TypeError(f"step {name!r}: {fn!r} is not callable; pass a method, e.g. self.step(self.{name}).")
    if inspect.iscoroutinefunction(fn):
        raise TypeError(f"step {name!r}: {fn!r} is async; steps run synchronously.")
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return fn
    required = [p for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if any(p.kind is p.KEYWORD_ONLY for p in required) or len(required) > 1:
        raise TypeError(f"step {name!r}: {fn!r} must take no argument, or one: the step.")
    if required or any(p.kind is p.VAR_POSITIONAL for p in params):
        return fn
    return lambda step: fn()


class Step:
    """A step in progress: its cursor, and the checkpoints it offers (ActiveJob's ``step``)."""

    def __init__(self, name: str, cursor: Any, resumed: bool, continuation: Continuation) -> None:
        self.name = name
        self.cursor = cursor
        self.resumed = resumed  # the step was in progress when the job last stopped
        self._continuation = continuation

    def __repr__(self) -> str:
        return f"<Step {self.name} cursor={self.cursor!r}>"

    def set(self, cursor: Any) -> None:
        """Record ``cursor`` (strict JSON) as where the step is, then a checkpoint."""
        checkpoints = self._continuation.checkpoints
        checkpoints.guard()
        self._continuation.state["cursor"] = cursor_value(cursor, f"step {self.name!r}")
        self.cursor = cursor
        checkpoints()

    def advance(self, by: int = 1) -> None:
        """``set(cursor + by)`` for a step counting items (started with ``start=0``)."""
        if type(self.cursor) is not int:
            raise TypeError(
                f"step {self.name!r}: advance() adds to an integer cursor, and this one is {self.cursor!r}; "
                f"start the step with start=0, or record the cursor with set()."
            )
        self.set(self.cursor + by)

    def checkpoint(self) -> None:
        """Where the job may stop (its worker is stopping, it was cancelled) and saves its progress."""
        self._continuation.checkpoints.guard()
        self._continuation.checkpoints()


# -- checkpoints --------------------------------------------------------------------------------


class Checkpoints:
    """One execution's checkpoints (module docstring); nothing at all outside a worker."""

    def __init__(self, job: ApplicationJob) -> None:
        self.job = job
        self.worker = current_worker.get()
        self.interval = checkpoint_interval()
        self.saved_at = time.monotonic()
        self.deadline: float | None = None

    def limit(self, seconds: float | None) -> None:
        """Interrupt the job at the first checkpoint ``seconds`` after now (``max_iteration_runtime``)."""
        self.deadline = None if seconds is None else time.monotonic() + seconds

    def guard(self) -> None:
        """Before progress is recorded: refuse it inside ``transaction.atomic()`` (in a worker,
        where a checkpoint can stop the job): ``CheckpointError`` (ActiveJob's too)."""
        if self.worker is None:
            return
        for connection in connections.all(initialized_only=True):
            if dispatch.in_transaction(connection):
                raise CheckpointError(
                    f"{self.job.job_name}: a checkpoint inside transaction.atomic() (database "
                    f"{connection.alias!r}); were the job to stop there, the work it records as done "
                    f"would roll back. Commit each item (or step) before its checkpoint, and give "
                    f"resumable jobs no idempotency_key (it runs perform in one transaction)."
                )

    def __call__(self) -> None:
        worker = self.worker
        if worker is None:
            return
        job = self.job
        if job.job_id in worker.cancelled:
            logger.info("%s %s: cancelled, it stops %s", job.job_name, job.job_id, continuation(job).describe())
            raise JobCancelled("cancelled")
        if worker.stopping.is_set():
            self._interrupt("the worker is stopping")
        now = time.monotonic()
        if self.deadline is not None and now >= self.deadline:
            self._interrupt("max_iteration_runtime reached")
        if now - self.saved_at >= self.interval:
            self.save(now)

    def _interrupt(self, why: str) -> None:
        job = self.job
        text = f"interrupted ({why}) {continuation(job).describe()}"
        logger.info("%s %s: %s; back to its queue to go on from there", job.job_name, job.job_id, text)
        raise Interrupted(0.0, None, text)

    def save(self, now: float) -> None:
        """Write the payload, with its progress, over the job's in-flight payload."""
        self.saved_at = now
        job = self.job
        try:
            get_broker().checkpoint(self.worker.process_id, job.fetched_as, payload_bytes(job.payload))
        except redis.RedisError as exc:
            logger.warning(
                "%s %s: its progress could not be saved (%s); it goes on and tries again in %.1fs",
                job.job_name, job.job_id, exc, self.interval,
            )


# -- the worker's layer ----------------------------------------------------------------------------


class Cancellation:
    """The worker's layer for cancelled jobs, inside the retry rules (which acknowledge a
    ``JobCancelled`` with the ``cancelled`` outcome) and outside run locks and ``perform``.

    A job the cancel reached before it started is dropped here; one that stopped at a checkpoint
    raises ``JobCancelled`` through here; a plain job that saw ``self.cancelled`` and returned
    ends as cancelled too. Each time ``job_cancelled`` is sent, once, and nothing is dead.
    """

    def perform(self, job: Any, call_next: Callable[[Any], Any]) -> Any:
        state = current_worker.get()  # inline, as every job passes here: no call when not cancelled
        if state is not None and state.cancelled and job.job_id in state.cancelled:
            _stop(job, "before it started")
        try:
            result = call_next(job)
        except JobCancelled:
            _signal(job)
            raise
        if job.__dict__.get("_saw_cancel"):
            _stop(job, "after it saw self.cancelled")
        return result

    async def aperform(self, job: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        state = current_worker.get()
        if state is not None and state.cancelled and job.job_id in state.cancelled:
            _stop(job, "before it started")
        try:
            result = await call_next(job)
        except JobCancelled:
            _signal(job)
            raise
        if job.__dict__.get("_saw_cancel"):
            _stop(job, "after it saw self.cancelled")
        return result


def _stop(job: Any, when: str) -> None:
    _signal(job)
    raise JobCancelled(f"cancelled {when}")


def _signal(job: Any) -> None:
    signals.send(signals.job_cancelled, type(job), job=job, job_id=job.job_id)
