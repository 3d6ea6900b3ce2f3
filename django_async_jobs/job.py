"""``ApplicationJob``: the class users subclass, and ``set()`` for per-call options.

This is the job's own API: declaring a job (options checked when the class is defined), its
payload (``serialize`` / ``deserialize``), and the entry points that run the two middleware
chains (``middleware/chain.py``): every enqueue (``perform_later``, ``set(...)``,
``perform_all_later``/``perform_bulk``, ``retry_job``, recurring ticks) goes through the job
class's enqueue chain to ``dispatch.deliver``; ``perform_now`` runs its perform chain.
"""

from __future__ import annotations

import contextlib
import gc
import inspect
import math
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any, ClassVar

from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from django_async_jobs import (
    batches,
    callbacks,
    dispatch,
    flow,
    idempotency,
    locks,
    progress,
    registry,
    resumable,
    retries,
)
from django_async_jobs.conf import (
    MAX_WAIT,
    MAX_WAIT_TEXT,
    argument_repr,
    get_settings,
    validate_queue_name,
    wait_seconds,
)
from django_async_jobs.middleware import chain
from django_async_jobs.serialization import (
    MalformedPayload,
    dump_arguments,
    dump_value,
    load_arguments,
    load_value,
    new_job_id,
)

PRIORITY_RANGE = (-100, 100)
# Payload fields that travel with a job when it enqueues itself again (``retry_job``): retry
# counters, the recurring entry and tick it runs for, its expiry deadline and its concurrency
# limit and its batch (flow.py, batches.py: set by the enqueue chain, and written with the
# payload from there), and the enqueue's trace context (tracing.py, set by the enqueue chain too).
CARRIED = ("retries", "retry_count", "cron", "expires_at", "cc", "batch", "trace")


class _ClassOrInstance:
    """``Job.perform_now(*args)`` builds and runs a job; ``job.perform_now()`` runs that one."""

    def __init__(self, for_class: Callable[..., Any], for_instance: Callable[..., Any]) -> None:
        self.for_class = for_class
        self.for_instance = for_instance

    def __get__(self, instance: Any, owner: type) -> Callable[..., Any]:
        if instance is None:
            return self.for_class.__get__(owner, owner)
        return self.for_instance.__get__(instance, owner)


def _validate_priority(priority: Any) -> int:
    low, high = PRIORITY_RANGE
    if isinstance(priority, bool) or not isinstance(priority, int) or not low <= priority <= high:
        raise ValueError(
            f"priority must be an integer from {low} to {high} (higher runs first), got {priority!r}."
        )
    return priority


def _run_at(wait: Any, wait_until: Any) -> float | None:
    if wait is not None and wait_until is not None:
        raise TypeError("Pass either wait= or wait_until=, not both.")
    if wait is not None:
        return time.time() + wait_seconds(wait, "wait", past=True)
    if wait_until is not None:
        if isinstance(wait_until, datetime):
            if timezone.is_naive(wait_until):
                wait_until = timezone.make_aware(wait_until)
            at = wait_until.timestamp()
        elif isinstance(wait_until, (int, float)) and not isinstance(wait_until, bool):
            at = wait_until
        else:
            raise TypeError(f"wait_until must be a datetime or an epoch timestamp, got {wait_until!r}.")
        if not -math.inf < at <= time.time() + MAX_WAIT:  # a time in the past is due at once
            raise ValueError(f"wait_until must be a finite time at most {MAX_WAIT_TEXT} ahead, got {wait_until!r}.")
        return float(at)
    return None


class ApplicationJob:
    """Subclass it, set ``queue_as`` (and friends), write ``perform``.

    ``queue_as`` is a queue name or a method returning one (it can read ``self.arguments``);
    ``priority`` runs from -100 to 100, higher first inside a queue (``django.tasks``' scale).
    """

    queue_as: ClassVar[str | Callable[..., str]] = "default"
    priority: ClassVar[int] = 0
    tagged_arguments: ClassVar[bool | None] = None
    retry_on: ClassVar[list[retries.RetryRule] | tuple[retries.RetryRule, ...]] = ()
    discard_on: ClassVar[list[Any] | tuple[Any, ...]] = ()
    max_retries: ClassVar[int | None] = None
    # False: a failure no retry_on rule matches is not retried (max_retries = 0). Not named
    # ``retry``, which would hide the imported retry() in a class body that also sets retry_on.
    retry_by_default: ClassVar[bool] = True
    # Unique jobs (locks.py): a lock mode, its TTL, and what a conflict does.
    lock: ClassVar[str | None] = None
    lock_ttl: ClassVar[float | timedelta] = locks.DEFAULT_TTL
    on_conflict: ClassVar[str] = "log"
    # Idempotency markers (idempotency.py): how long a marker of idempotency_key() lasts (None: forever).
    idempotency_expires: ClassVar[float | timedelta | None] = None
    # None follows ASYNC_JOBS["ENQUEUE_AFTER_COMMIT"]; the alias is the database whose commit waits.
    enqueue_after_commit: ClassVar[bool | None] = None
    enqueue_using: ClassVar[str] = "default"
    # None follows ASYNC_JOBS["OUTBOX"]: a job that waits for a commit is a row of that
    # transaction instead (outbox.py), and Redis being down outside one writes the row too.
    enqueue_via_outbox: ClassVar[bool | None] = None
    # This class's own middleware (paths, classes or instances), inside ASYNC_JOBS["MIDDLEWARE"].
    middleware: ClassVar[list[Any] | tuple[Any, ...]] = ()
    # Flow control (flow.py): at most ``to`` running at once per key (limit_concurrency(...));
    # a job not started this long after its enqueue (or run-at) is dropped, and declaring
    # expires_in, None included, lets set(expires_in=...) set one per enqueue.
    limits_concurrency: ClassVar[flow.ConcurrencyLimit | None] = None
    expires_in: ClassVar[float | timedelta | None] = None
    # How long, in all, rate limits (OverLimit) may put a job back before it counts as failed.
    max_limited: ClassVar[float | timedelta | None] = flow.DEFAULT_MAX_LIMITED

    # Per enqueue, set by the chains: the unique lock's keys (UniqueJobs), whether the chain
    # reached its push (``dispatch.deliver``), where that push goes instead of Redis (a bulk, a
    # recurring tick) and the database whose commit it waits for. In the worker: the in-flight
    # field it was fetched as, and how its execution ended (``retries.Outcome``).
    lock_keys: dict[str, str] | None = None
    _delivered = False
    _checked_queue: str | None = None
    _route: Callable[[ApplicationJob], Any] | None = None
    _using: str | None = None
    fetched_as: str | None = None
    outcome: retries.Outcome | None = None

    job_name: ClassVar[str]
    _callbacks: ClassVar[dict[str, tuple[str, ...]]]
    _signature: ClassVar[inspect.Signature]
    _shapes_that_fit: ClassVar[set[Any]]
    _positional_names: ClassVar[tuple[str, ...]]
    _is_async: ClassVar[bool]
    _rules: ClassVar[tuple[retries.Rule, ...]]
    _lock_ttl_ms: ClassVar[int | None]
    _expires_in: float | None  # seconds: the class's, or one enqueue's (set(expires_in=...))
    _expiring: ClassVar[bool]
    _max_limited: ClassVar[float | None]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._prepare()  # first: a class refused here is never registered
        cls.job_name = registry.register(cls)

    @classmethod
    def _prepare(cls) -> None:
        cls._callbacks = callbacks.collect(cls)
        signature = cls._arguments_signature()
        cls._signature = signature
        cls._shapes_that_fit = set()
        cls._positional_names = tuple(
            p.name for p in list(signature.parameters.values())[1:]
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        )
        cls._is_async = inspect.iscoroutinefunction(cls.perform)
        if not callable(cls.queue_as):  # a method's names are checked at each enqueue
            try:
                validate_queue_name(cls.queue_as, f"{cls.__qualname__}.queue_as")
            except (TypeError, ValueError) as exc:
                raise ImproperlyConfigured(str(exc)) from None
        cls._rules = retries.compile_rules(cls)
        cls._lock_ttl_ms = locks.compile_lock(cls)
        flow.compile_class(cls, ApplicationJob)
        # What this class's middleware and the built-in layers cannot serve (idempotency
        # markers on an async job) is refused now; ASYNC_JOBS["MIDDLEWARE"]'s, by a system check.
        chain.check_class(cls, (*chain.class_middleware(cls), *chain.BUILTIN_PERFORM))

    @classmethod
    def _arguments_signature(cls) -> inspect.Signature:
        """What the job's arguments must fit (``self`` first): ``perform``'s signature."""
        return inspect.signature(cls.perform)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.arguments: list[Any] = list(args)
        self.kwargs: dict[str, Any] = kwargs
        self.job_id: str = new_job_id()
        self.executions: int = 0
        self.queue_name: str | None = None
        self.priority = type(self).priority
        self.scheduled_at: float | None = None
        self.enqueued_at: float | None = None
        self.successfully_enqueued: bool | None = None
        self.payload: dict[str, Any] = {}
        self.meta: dict[str, Any] = {}
        self.context: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.job_id} queue={self.queue_name!r}>"

    def __bool__(self) -> bool:
        # A halted enqueue returns the job, falsy, as ActiveJob returns false.
        return self.successfully_enqueued is not False

    def perform(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define perform().")

    @classmethod
    def lock_args(cls, *args: Any, **kwargs: Any) -> Any:
        """The arguments that make two jobs the same for ``lock`` (default: all of them).

        Override to narrow it, e.g. ``return [args[0]]`` for one job per resource.
        """
        return [list(args), kwargs] if kwargs else list(args)

    def idempotency_key(self, *args: Any, **kwargs: Any) -> str | None:
        """Return a key (e.g. ``f"welcome:{user_id}"``) to run ``perform`` at most once per key.

        ``perform`` then runs in ``transaction.atomic()`` with an ``IdempotencyMarker`` row
        inserted first; None (the default) runs it as is.
        """
        return None

    idempotency_key.no_key = True  # type: ignore[attr-defined]  # not overridden: no Idempotency layer

    def once(self, *parts: Any, expires: float | timedelta | None = None) -> Any:
        """``with self.once("sms", task.id) as first:`` ``first`` is True the first time only.

        Work in the block commits with the step's marker (one transaction); see idempotency.py.
        """
        return idempotency.once(self, *parts, expires=expires)

    def track_progress(self, total: int | None = None, name: str = "") -> Any:
        """``with self.track_progress(total=n) as progress:`` then ``progress.advance()`` and
        ``progress.error(row=..., error=...)``: a ``JobProgress`` row others can watch."""
        return progress.Tracker(self, total=total, name=name)

    def step(self, fn: Callable[..., Any], *, start: Any = None, name: str | None = None) -> Any:
        """Run one step of ``perform``, unless an earlier execution completed it (ActiveJob's
        ``step``): ``self.step(self.download)``, then ``self.step(self.rows, start=0)``.

        ``fn`` takes no argument, or the ``Step`` (``step.cursor``, ``step.set(cursor)``,
        ``step.advance()``, ``step.checkpoint()``); the step's name is the method's (or
        ``name``). The completed steps and the cursor of the one in progress travel in the
        payload, so an interrupted or retried job resumes there; see resumable.py.
        """
        return resumable.continuation(self).run_step(fn, name, start)

    @property
    def cancelled(self) -> bool:
        """True once ``api.cancel`` reached the worker running this job (at its next
        heartbeat): a long ``perform`` can check it and stop. Always False outside a worker."""
        return resumable.cancelled(self)

    @property
    def batch(self) -> batches.Batch | None:
        """The batch this job is a member of (``with self.batch.jobs():`` adds jobs to it), or None."""
        return batches.of_job(self)

    @property
    def batch_id(self) -> str | None:
        """The id of the batch this job is a member of, or whose callback it is; else None."""
        return batches.batch_id(self)

    @property
    def resumptions(self) -> int:
        """How many times this job went on from progress an earlier execution saved (steps or
        iterations; 0 the first time)."""
        return resumable.continuation(self).resumptions

    def after_discard(self, exc: BaseException) -> None:
        """Called when a ``discard_on`` rule drops this job; override to clean up or notify."""

    def retry_job(
        self,
        *,
        wait: float | timedelta | None = None,
        wait_until: datetime | float | None = None,
        queue: str | None = None,
        priority: int | None = None,
    ) -> ApplicationJob:
        """From inside ``perform``: enqueue this job again (same id, executions kept).

        The current execution then ends normally; raise instead to let ``retry_on`` decide.
        """
        self.enqueue(wait=wait, wait_until=wait_until, queue=queue, priority=priority)
        return self

    # -- enqueueing --------------------------------------------------------------------------

    @classmethod
    def set(
        cls,
        *,
        wait: float | timedelta | None = None,
        wait_until: datetime | float | None = None,
        queue: str | None = None,
        priority: int | None = None,
        using: str | None = None,
        expires_in: float | timedelta | None = None,
    ) -> ConfiguredJob:
        """Options for one enqueue: ``Job.set(wait=timedelta(minutes=1)).perform_later(...)``.

        ``using`` names the database alias whose transaction commit the push waits for (or
        whose outbox the job is written to); ``expires_in`` replaces the class's (see flow.py).
        """
        if queue is not None:
            validate_queue_name(queue, "queue")
        if expires_in is not None:
            expires_in = flow.enqueue_expiry(cls, expires_in)
        return ConfiguredJob(
            cls, wait=wait, wait_until=wait_until, queue=queue, priority=priority, using=using, expires_in=expires_in
        )

    @classmethod
    def perform_later(cls, *args: Any, **kwargs: Any) -> ApplicationJob:
        """Enqueue; returns the job (``.job_id`` set), falsy if a middleware or callback halted it."""
        return cls(*args, **kwargs).enqueue()

    @staticmethod
    def perform_all_later(jobs: Any, *, using: str | None = None) -> int:
        """Enqueue many job instances (any classes), each through its class's enqueue chain, then
        push them together: one Redis call per 1,000. Returns how many were enqueued (or deferred
        to the commit); a job a middleware or callback halted is not counted."""
        collected: list[ApplicationJob] = []
        collect = collected.append  # the chain's push collects each job for the bulk
        with _collector_paused():
            for index, job in enumerate(jobs):
                if not isinstance(job, ApplicationJob):
                    raise TypeError(
                        f"perform_all_later() takes job instances, got {argument_repr(job)} (a "
                        f"{type(job).__name__}) at index {index}; "
                        f"build them with MyJob(*args), or use MyJob.perform_bulk([args, ...])."
                    )
                job._prepare_enqueue(None, None, using)
                job._route = collect
                try:
                    job._run_enqueue_chain()
                finally:
                    job._route = None
            return dispatch.deliver_all(collected, using)

    @classmethod
    def perform_bulk(cls, items: Any, **options: Any) -> int:
        """``perform_all_later`` for one class: each item is an args list/tuple, a kwargs dict, or
        an ``(args, kwargs)`` pair; ``options`` are ``set()``'s (wait, queue, priority, ...)."""
        unknown = set(options) - {"wait", "wait_until", "queue", "priority", "using", "expires_in"}
        if unknown:
            raise TypeError(
                f"perform_bulk() got unknown option(s) {sorted(unknown)}; it takes wait, wait_until, "
                f"queue, priority, using and expires_in."
            )
        if isinstance(items, (str, bytes, dict)):
            raise TypeError("perform_bulk() takes a list of argument lists, e.g. [(1,), (2,)].")
        queue = options.get("queue")
        if queue is not None:
            validate_queue_name(queue, "perform_bulk(queue=)")
        run_at = _run_at(options.get("wait"), options.get("wait_until"))
        expires_in = options.get("expires_in")
        if expires_in is not None:
            expires_in = flow.enqueue_expiry(cls, expires_in)
        priority = options.get("priority")
        jobs = []
        with _collector_paused():
            for index, item in enumerate(items):
                args, kwargs = _call_arguments(item, index)
                job = cls(*args, **kwargs)
                job.queue_name = queue
                if priority is not None:
                    job.priority = priority
                job.scheduled_at = run_at
                if expires_in is not None:
                    job._expires_in = expires_in
                jobs.append(job)
            count = cls.perform_all_later(jobs, using=options.get("using"))
            del jobs  # freed while the collector is off, which would walk them once more
        return count

    def enqueue(
        self,
        *,
        wait: float | timedelta | None = None,
        wait_until: datetime | float | None = None,
        queue: str | None = None,
        priority: int | None = None,
        using: str | None = None,
        expires_in: float | timedelta | None = None,
    ) -> ApplicationJob:
        """Run this job through its class's enqueue chain to Redis (or the commit); the job,
        falsy when a middleware or callback halted it."""
        self._prepare_enqueue(queue, priority, using)
        self.scheduled_at = _run_at(wait, wait_until)
        if expires_in is not None:
            self._expires_in = flow.enqueue_expiry(type(self), expires_in)
        return self._run_enqueue_chain()

    def _prepare_enqueue(self, queue: str | None, priority: int | None, using: str | None) -> None:
        """Check the job and its options before any middleware sees it, its queue resolved."""
        self._check_arguments()
        if queue is not None:
            self.queue_name = validate_queue_name(queue, "queue")
        elif self.queue_name is None:
            self.queue_name = self._resolve_queue()
        if priority is not None:
            self.priority = priority
        self.priority = _validate_priority(self.priority)
        self._using = using

    def _run_enqueue_chain(self) -> ApplicationJob:
        self._checked_queue = self.queue_name  # dispatch.deliver checks a queue a middleware set
        self.successfully_enqueued = None
        self._delivered = False
        chain.enqueue_chain(type(self), dispatch.deliver)(self)
        if not self._delivered:
            self.successfully_enqueued = False  # a middleware or callback halted it
        return self

    def _resolve_queue(self) -> str:
        queue_as = type(self).queue_as
        if not callable(queue_as):
            return queue_as  # checked when the class was defined
        return validate_queue_name(queue_as(self), f"{type(self).__name__}.queue_as()")

    def _check_arguments(self) -> None:
        # Whether arguments bind depends only on how many positionals and which keywords there
        # are, so a shape that bound once is remembered: binding costs more than the rest of
        # an enqueue's Python work.
        shape = (len(self.arguments), frozenset(self.kwargs)) if self.kwargs else len(self.arguments)
        fits = type(self)._shapes_that_fit
        if shape in fits:
            return
        try:
            self._signature.bind(self, *self.arguments, **self.kwargs)
        except TypeError as exc:
            raise TypeError(f"{type(self).__name__}.perform() cannot take these arguments: {exc}") from None
        if len(fits) < 64:
            fits.add(shape)

    def _argument_name(self, index: int) -> str:
        names = self._positional_names
        return names[index] if index < len(names) else f"#{index}"

    def _uses_tagged(self) -> bool:
        tagged = type(self).tagged_arguments
        return get_settings().tagged_arguments if tagged is None else tagged

    def serialize(self) -> dict[str, Any]:
        """The payload as a dict; ``jid`` first (the fetch script reads it from the head)."""
        tagged = self._uses_tagged()
        try:
            args, kwargs = dump_arguments(self.arguments, self.kwargs, tagged, self._argument_name)
        except TypeError as exc:
            raise type(exc)(f"{type(self).__name__}.perform_later(): {exc}") from None
        data: dict[str, Any] = {"jid": self.job_id, "job": self.job_name, "queue": self.queue_name, "args": args}
        if kwargs:
            data["kwargs"] = kwargs
        if self.priority:
            data["priority"] = self.priority
        if self.executions:
            data["executions"] = self.executions
        if tagged:
            data["tagged"] = 1
        self.enqueued_at = data["enqueued_at"] = round(time.time(), 3)
        if self.scheduled_at is not None:
            data["at"] = round(self.scheduled_at, 3)
        payload = self.payload
        if payload:  # most jobs carry nothing
            for key in CARRIED:
                if key in payload:
                    data[key] = payload[key]
        if self.lock_keys is not None:
            data["lock"] = self.lock_keys
        if self.meta:
            data["meta"] = dump_value(self.meta, tagged, "job.meta")
        if self.context:
            data["context"] = self.context  # dumped by CurrentContext
        return data

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> ApplicationJob:
        """A job rebuilt from its payload (the worker's side of ``serialize``)."""
        job = cls.__new__(cls)
        tagged = bool(data.get("tagged"))
        args, kwargs = load_arguments(data["args"], data.get("kwargs") or {}, tagged)
        job.arguments = args
        job.kwargs = kwargs
        job.job_id = data["jid"]
        job.executions = data.get("executions", 0)
        job.queue_name = data["queue"]
        job.priority = data.get("priority", 0)
        job.scheduled_at = data.get("at")
        job.enqueued_at = data.get("enqueued_at")
        job.successfully_enqueued = True
        job.payload = data
        # Most payloads carry neither: no call for them (this runs once per job in the worker).
        meta, context = data.get("meta"), data.get("context")
        job.meta = {} if meta is None else _mapping(data, "meta", tagged)
        job.context = {} if context is None else _mapping(data, "context", tagged)
        return job

    # -- performing --------------------------------------------------------------------------

    def _perform_now_instance(self) -> Any:
        self.executions += 1
        return chain.perform_chain(type(self))(self)

    @classmethod
    def _perform_now_class(cls, *args: Any, **kwargs: Any) -> Any:
        job = cls(*args, **kwargs)
        job._check_arguments()
        return job.perform_now()

    perform_now = _ClassOrInstance(_perform_now_class, _perform_now_instance)


def _mapping(data: dict[str, Any], field: str, tagged: bool) -> dict[str, Any]:
    """A payload's ``meta`` or ``context``: an object, or nothing."""
    value = data.get(field)
    if value is None:
        return {}
    if type(value) is not dict:
        raise MalformedPayload(f"field {field!r} is not an object")
    return load_value(value) if tagged else value


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off during a bulk enqueue. A bulk's jobs all live until its
    end, and the collector, set off by their allocations, walks every live object again each time
    they grew by a quarter, to find nothing: a quarter of a 200,000-job bulk's CPU. Reference
    counting still frees what dies; a cycle made meanwhile waits for the next collection. The
    collector is process-wide: only the pause that turned it off turns it back on."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


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


ApplicationJob.job_name = registry.job_name(ApplicationJob)
ApplicationJob._prepare()


class ConfiguredJob:
    """What ``Job.set(...)`` returns: the job class with options for the next enqueue."""

    def __init__(self, job_class: type[ApplicationJob], **options: Any) -> None:
        self.job_class = job_class
        self.options = options

    def perform_later(self, *args: Any, **kwargs: Any) -> ApplicationJob:
        return self.job_class(*args, **kwargs).enqueue(**self.options)

    def perform_now(self, *args: Any, **kwargs: Any) -> Any:
        job = self.job_class(*args, **kwargs)
        if self.options.get("queue"):
            job.queue_name = self.options["queue"]
        if self.options.get("priority") is not None:
            job.priority = _validate_priority(self.options["priority"])
        job._check_arguments()
        return job.perform_now()
