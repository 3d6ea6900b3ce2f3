"""``ApplicationJob``: the class users subclass, and ``set()`` for per-call options."""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, ClassVar

from asgiref.sync import async_to_sync, sync_to_async
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from django_async_jobs import callbacks, dispatch, idempotency, locks, registry, retries, signals
from django_async_jobs.conf import (
    MAX_WAIT,
    MAX_WAIT_TEXT,
    get_settings,
    validate_queue_name,
    wait_seconds,
)
from django_async_jobs.serialization import (
    dump_arguments,
    load_arguments,
    new_job_id,
)

PRIORITY_RANGE = (-100, 100)
# Payload fields that travel with a job when it enqueues itself again (``retry_job``): retry
# counters, and the recurring entry and tick it runs for.
CARRIED = ("retries", "retry_count", "cron")


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

    job_name: ClassVar[str]
    _callbacks: ClassVar[dict[str, tuple[str, ...]]]
    _signature: ClassVar[inspect.Signature]
    _shapes_that_fit: ClassVar[set[Any]]
    _positional_names: ClassVar[tuple[str, ...]]
    _is_async: ClassVar[bool]
    _rules: ClassVar[tuple[retries.Rule, ...]]
    _lock_ttl_ms: ClassVar[int | None]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._prepare()  # first: a class refused here is never registered
        cls.job_name = registry.register(cls)

    @classmethod
    def _prepare(cls) -> None:
        cls._callbacks = callbacks.collect(cls)
        signature = inspect.signature(cls.perform)
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
        idempotency.validate(cls)

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

    def once(self, *parts: Any, expires: float | timedelta | None = None) -> Any:
        """``with self.once("sms", task.id) as first:`` ``first`` is True the first time only.

        Work in the block commits with the step's marker (one transaction); see idempotency.py.
        """
        return idempotency.once(self, *parts, expires=expires)

    def track_progress(self, total: int | None = None, name: str = "") -> Any:
        """``with self.track_progress(total=n) as progress:`` then ``progress.advance()`` and
        ``progress.error(row=..., error=...)``: a ``JobProgress`` row others can watch."""
        from django_async_jobs.progress import Tracker

        return Tracker(self, total=total, name=name)

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
    ) -> ConfiguredJob:
        """Options for one enqueue: ``Job.set(wait=timedelta(minutes=1)).perform_later(...)``.

        ``using`` names the database alias whose transaction commit the push waits for.
        """
        if queue is not None:
            validate_queue_name(queue, "queue")
        return ConfiguredJob(cls, wait=wait, wait_until=wait_until, queue=queue, priority=priority, using=using)

    @classmethod
    def perform_later(cls, *args: Any, **kwargs: Any) -> ApplicationJob:
        """Enqueue; returns the job (``.job_id`` set), falsy if a callback halted it."""
        return cls(*args, **kwargs).enqueue()

    @staticmethod
    def perform_all_later(jobs: Any, *, using: str | None = None) -> int:
        """Enqueue many job instances (any classes) in one Redis call per 1,000; no enqueue
        callbacks run, as ActiveJob's. Returns how many were enqueued (or deferred to commit)."""
        return dispatch.enqueue_all(jobs, using=using)

    @classmethod
    def perform_bulk(cls, items: Any, **options: Any) -> int:
        """``perform_all_later`` for one class: each item is an args list/tuple, a kwargs dict, or
        an ``(args, kwargs)`` pair; ``options`` are ``set()``'s (wait, queue, priority, ...)."""
        return dispatch.enqueue_bulk(cls, items, **options)

    def enqueue(
        self,
        *,
        wait: float | timedelta | None = None,
        wait_until: datetime | float | None = None,
        queue: str | None = None,
        priority: int | None = None,
        using: str | None = None,
    ) -> ApplicationJob:
        self._check_arguments()
        if queue is not None:
            self.queue_name = validate_queue_name(queue, "queue")
        if priority is not None:
            self.priority = priority
        self.priority = _validate_priority(self.priority)
        self.scheduled_at = _run_at(wait, wait_until)
        dispatch.now_or_on_commit([self], self._enqueue_with_callbacks, using)
        return self

    def _enqueue_with_callbacks(self) -> None:
        if callbacks.run(self, "enqueue", self._push) is callbacks.HALTED:
            self.successfully_enqueued = False

    def _push(self) -> ApplicationJob:
        if self.queue_name is None:
            self.queue_name = self._resolve_queue()
        if type(self).lock is None or get_settings().mode != "redis":  # no locks in test modes
            dispatch.enqueue([self])
        elif not locks.enqueue(self):
            self.successfully_enqueued = False  # a unique job's lock is taken
            return self
        self.successfully_enqueued = True
        signals.send(signals.job_enqueued, type(self), job=self)
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
        for key in CARRIED:
            if key in self.payload:
                data[key] = self.payload[key]
        if type(self).lock is not None:
            data["lock"] = locks.payload_lock(self)
        return data

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> ApplicationJob:
        """A job rebuilt from its payload (the worker's side of ``serialize``)."""
        job = cls.__new__(cls)
        args, kwargs = load_arguments(data["args"], data.get("kwargs") or {}, bool(data.get("tagged")))
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
        return job

    # -- performing --------------------------------------------------------------------------

    def _perform_now_instance(self) -> Any:
        self.executions += 1
        perform = async_to_sync(self.perform) if self._is_async else self.perform
        result = callbacks.run(self, "perform", lambda: idempotency.perform(self, perform))
        return None if result is callbacks.HALTED else result

    async def _aperform_now(self) -> Any:
        """``perform_now`` for the worker's event loop: ``perform`` is awaited, not run in a
        thread; before/after callbacks are sync code, so they run in the loop's thread pool."""
        self.executions += 1
        names = self._callbacks
        for name in names["before_perform"]:
            if await sync_to_async(getattr(self, name), thread_sensitive=False)() is False:
                return None
        result = await self.perform(*self.arguments, **self.kwargs)
        for name in names["after_perform"]:
            await sync_to_async(getattr(self, name), thread_sensitive=False)()
        return result

    @classmethod
    def _perform_now_class(cls, *args: Any, **kwargs: Any) -> Any:
        job = cls(*args, **kwargs)
        job._check_arguments()
        return job.perform_now()

    perform_now = _ClassOrInstance(_perform_now_class, _perform_now_instance)


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
