"""What happens when ``perform`` raises: one retry system for every job.

Order of decisions for an exception:

1. The job's rules (``retry_on`` and ``discard_on``) that match it; the most specific wins (the
   rule naming the closest class in the exception's MRO), ties go to the rule declared first.
   A retry rule counts its own attempts (the first execution is attempt 1); when they run out
   the job dies, or the rule's ``on_exhausted`` callback is called instead. A discard rule
   drops the job: logged, ``after_discard`` called, nothing recorded as dead.
2. No rule matches: the default policy, Sidekiq's: up to ``MAX_RETRIES`` (25) retries with
   ``count**4 + 15 + rand(10 * (count + 1))`` seconds of backoff, then dead. A class can
   set ``max_retries = N`` (0: die at the first failure) or ``retry_by_default = False`` (same
   as 0).

Retries wait in the Redis retry set and are moved to their queue by the scheduled-job poller.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
import traceback
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from functools import cache
from typing import TYPE_CHECKING, Any

from asgiref.sync import sync_to_async
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from django_async_jobs import signals
from django_async_jobs.conf import validate_queue_name, wait_seconds
from django_async_jobs.serialization import payload_bytes

if TYPE_CHECKING:
    from django_async_jobs.job import ApplicationJob

logger = logging.getLogger("django_async_jobs.job")

DEFAULT_MAX_RETRIES = 25
DEFAULT_JITTER = 0.15
UNLIMITED = "unlimited"
# The end of a long traceback is where the error is; the retry payload keeps that much of it.
TRACEBACK_KEPT = 8000

Wait = float | int | timedelta | Callable[[int], Any]


def polynomially_longer(executions: int) -> float:
    """ActiveJob's backoff: executions**4 + 2 seconds (3s, 18s, 83s, 258s, 627s), before jitter."""
    return executions**4 + 2


def default_backoff(count: int) -> float:
    """Sidekiq's: count**4 + 15 + rand(10 * (count + 1)) seconds."""
    return count**4 + 15 + random.randint(0, 10 * (count + 1))


def _exceptions(values: tuple[Any, ...], where: str) -> tuple[type[BaseException], ...]:
    if len(values) == 1 and isinstance(values[0], tuple):
        values = values[0]
    if not values:
        raise TypeError(f"{where} needs at least one exception class.")
    for value in values:
        if not (isinstance(value, type) and issubclass(value, BaseException)):
            raise TypeError(f"{where} takes exception classes, got {value!r}.")
    return values


@dataclass(frozen=True)
class RetryRule:
    """One ``retry(...)`` entry of a job's ``retry_on``."""

    exceptions: tuple[type[BaseException], ...]
    wait: Wait = 3
    attempts: int | str = 5
    queue: str | None = None
    priority: int | None = None
    jitter: float = DEFAULT_JITTER
    on_exhausted: Callable[[ApplicationJob, BaseException], Any] | None = None

    @property
    def key(self) -> str:
        return ",".join(f"{e.__module__}.{e.__qualname__}" for e in self.exceptions)

    def delay(self, executions: int) -> float:
        wait = self.wait
        if wait is polynomially_longer:
            base = polynomially_longer(executions)
            return base + random.uniform(0, base * self.jitter) if self.jitter else base
        base = wait_seconds(wait(executions) if callable(wait) else wait, f"retry wait for {self.key}")
        return base + random.uniform(0, base * self.jitter) if self.jitter else base


@dataclass(frozen=True)
class DiscardRule:
    exceptions: tuple[type[BaseException], ...]
    on_discard: Callable[[ApplicationJob, BaseException], Any] | None = None


def retry(
    *exceptions: type[BaseException],
    wait: Wait = 3,
    attempts: int | str = 5,
    queue: str | None = None,
    priority: int | None = None,
    jitter: float = DEFAULT_JITTER,
    on_exhausted: Callable[[ApplicationJob, BaseException], Any] | None = None,
) -> RetryRule:
    """A ``retry_on`` entry: ``retry(TimeoutError, wait=polynomially_longer, attempts=5)``."""
    exceptions = _exceptions(exceptions, "retry()")
    if attempts != UNLIMITED and (isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1):
        raise TypeError(f"retry(attempts=) must be a positive integer or 'unlimited', got {attempts!r}.")
    if not (callable(wait) or isinstance(wait, (int, float, timedelta))) or isinstance(wait, bool):
        raise TypeError(
            f"retry(wait=) takes seconds, a timedelta, polynomially_longer or a callable of executions, got {wait!r}."
        )
    if not callable(wait):
        wait_seconds(wait, "retry(wait=)")
    if not isinstance(jitter, (int, float)) or not 0 <= jitter <= 1:
        raise TypeError(f"retry(jitter=) must be a fraction from 0 to 1, got {jitter!r}.")
    if queue is not None:
        validate_queue_name(queue, "retry(queue=)")
    return RetryRule(exceptions, wait, attempts, queue, priority, float(jitter), on_exhausted)


def discard(
    *exceptions: type[BaseException],
    on_discard: Callable[[ApplicationJob, BaseException], Any] | None = None,
) -> DiscardRule:
    """A ``discard_on`` entry with a callback; a bare exception class works too."""
    return DiscardRule(_exceptions(exceptions, "discard()"), on_discard)


Rule = RetryRule | DiscardRule


def compile_rules(job_class: type) -> tuple[Rule, ...]:
    """Validate a class's ``retry_on`` / ``discard_on`` once, when the class is defined."""
    name = job_class.__qualname__
    rules: list[Rule] = []
    for entry in job_class.retry_on or ():
        if not isinstance(entry, RetryRule):
            raise ImproperlyConfigured(
                f"{name}.retry_on takes retry(...) entries, got {entry!r}; "
                f"write retry({getattr(entry, '__name__', entry)}, attempts=..., wait=...)."
            )
        rules.append(entry)
    for entry in job_class.discard_on or ():
        if isinstance(entry, type) and issubclass(entry, BaseException):
            entry = DiscardRule((entry,))
        if not isinstance(entry, DiscardRule):
            raise ImproperlyConfigured(f"{name}.discard_on takes exception classes or discard(...), got {entry!r}.")
        rules.append(entry)
    retried = {e for r in rules if isinstance(r, RetryRule) for e in r.exceptions}
    both = [e.__name__ for r in rules if isinstance(r, DiscardRule) for e in r.exceptions if e in retried]
    if both:
        raise ImproperlyConfigured(f"{name} both retries and discards {', '.join(both)}; keep one.")
    legacy = job_class.__dict__.get("retry")
    if isinstance(legacy, bool):
        # Before retry_by_default: kept working, but in a class body it hides retry(), so
        # ``retry = False`` then ``retry_on = [retry(...)]`` fails with "'bool' is not callable".
        warnings.warn(
            f"{name}.retry = {legacy} is deprecated: write retry_by_default = {legacy}.",
            DeprecationWarning,
            stacklevel=4,  # the class statement: compile_rules < _prepare < __init_subclass__
        )
        if "retry_by_default" not in job_class.__dict__:
            job_class.retry_by_default = legacy
    if not isinstance(job_class.retry_by_default, bool):
        raise ImproperlyConfigured(f"{name}.retry_by_default must be True or False, got {job_class.retry_by_default!r}.")
    max_retries = job_class.max_retries
    if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0):
        raise ImproperlyConfigured(f"{name}.max_retries must be an integer >= 0 or None, got {max_retries!r}.")
    return tuple(rules)


def match(rules: tuple[Rule, ...], exc: BaseException) -> Rule | None:
    """The most specific matching rule; ties go to the one declared first."""
    mro = type(exc).__mro__
    best: Rule | None = None
    best_distance = len(mro)
    for rule in rules:
        for klass in rule.exceptions:
            if klass in mro and mro.index(klass) < best_distance:
                best, best_distance = rule, mro.index(klass)
    return best


# -- hooks ---------------------------------------------------------------------------------------


@cache
def _handlers(setting: str) -> tuple[Callable[..., Any], ...]:
    paths = (getattr(django_settings, "ASYNC_JOBS", {}) or {}).get(setting, ())
    return tuple(import_string(p) if isinstance(p, str) else p for p in paths)


def _reset_handlers(*, setting: str, **kwargs: Any) -> None:
    if setting == "ASYNC_JOBS":
        _handlers.cache_clear()


setting_changed.connect(_reset_handlers)


def call_handlers(setting: str, payload: dict[str, Any], exc: BaseException) -> None:
    """``ERROR_HANDLERS`` / ``DEATH_HANDLERS``: called with (payload, exception); never raise."""
    for handler in _handlers(setting):
        try:
            handler(payload, exc)
        except Exception:
            logger.exception("%s handler %r raised; the worker goes on", setting, handler)


def _max_retries(job: ApplicationJob) -> int:
    if not job.retry_by_default:
        return 0
    if job.max_retries is not None:
        return job.max_retries
    return (getattr(django_settings, "ASYNC_JOBS", {}) or {}).get("MAX_RETRIES", DEFAULT_MAX_RETRIES)


# -- the decision --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What became of one execution; the worker settles the job from it.

    ``name`` is the log line's outcome: ``ok``, ``discarded`` (a discard rule, or a rule's
    ``on_exhausted`` callback took it), ``retry`` (``run_at``, and ``payload`` for the retry
    set), ``dead`` (``reason``, and ``data``: the payload with its executions), or the outcome
    of a ``Reschedule`` (``run_at``, 0 for now, and the new ``payload``). Any other name is
    acknowledged (a layer that dropped the job sets its own, e.g. ``expired``), but ``blocked``
    (its concurrency limit was full, see flow.py).
    """

    name: str
    failed: bool = False
    error: BaseException | None = None
    run_at: float = 0.0
    payload: bytes = b""
    reason: str = ""
    data: dict[str, Any] | None = None
    keys: tuple[str, ...] = ()  # Redis keys the settle step needs for this job (a concurrency limit's)


SUCCEEDED = Outcome("ok")


class Reschedule(Exception):  # noqa: N818  (a request, not an error)
    """Raised in the perform chain to put the job back, ``delay`` seconds from now (0: at the
    back of its queue now), with ``changes`` merged into its payload. Not a failure: no retry is
    used, no error handler or failure signal runs, and the job is not counted as processed.

    What a feature raises when the job cannot run yet (a rate limit) or should continue later
    (a resumable job at a checkpoint); a subclass says which.
    """

    outcome = "rescheduled"

    def __init__(self, delay: float = 0.0, changes: dict[str, Any] | None = None, message: str = "") -> None:
        super().__init__(message or f"rescheduled in {delay:.3f}s")
        self.delay = max(0.0, float(delay))
        self.changes = changes or {}

    def prepare(self, job: ApplicationJob) -> BaseException | None:
        """Called by the worker before it puts the job back: a subclass may set ``delay`` and
        ``changes`` from the job (a backoff from its payload), or return the exception to treat
        as the job's failure instead (a ceiling reached). None: put it back."""
        return None


class Drop(Exception):  # noqa: N818  (a request, not an error)
    """Raised in the perform chain to end the job here, neither a success nor a failure: it is
    acknowledged with the outcome a subclass names (``outcome``), without a retry, an error
    handler or a failure signal. What a running job that was cancelled raises at a checkpoint.
    """

    outcome = "dropped"


def reschedule(job: ApplicationJob, request: Reschedule) -> Outcome:
    """The outcome of a ``Reschedule``: the job's payload, with the request's changes, back in
    the schedule (or its queue when due now)."""
    run_at = time.time() + request.delay
    data = {**job.payload, **request.changes, "executions": job.executions}
    data["at"] = round(run_at, 3)
    return Outcome(request.outcome, run_at=run_at if request.delay else 0.0, payload=payload_bytes(data))


def handle_failure(job: ApplicationJob, exc: BaseException) -> Outcome:
    """The outcome of an execution that raised ``exc``: the rules decide (module docstring)."""
    payload = job.payload
    call_handlers("ERROR_HANDLERS", payload, exc)
    signals.send(signals.job_failed, type(job), job=job, exception=exc)
    rule = match(job._rules, exc)

    if isinstance(rule, DiscardRule):
        logger.warning("discarding %s %s: %s: %s", job.job_name, job.job_id, type(exc).__name__, exc)
        _call_quietly(job.after_discard, exc)
        if rule.on_discard is not None:
            _call_quietly(rule.on_discard, job, exc)
        signals.send(signals.job_discarded, type(job), job=job, exception=exc)
        return Outcome("discarded", failed=True, error=exc)

    if isinstance(rule, RetryRule):
        counters = dict(payload.get("retries") or {})
        count = _counter(counters.get(rule.key, 0), "retries") + 1
        if rule.attempts == UNLIMITED or count < rule.attempts:
            counters[rule.key] = count
            wait = rule.delay(count)
            return _retry(job, wait, {"retries": counters}, rule.queue, rule.priority, exc)
        if rule.on_exhausted is not None:
            _call_quietly(rule.on_exhausted, job, exc)
            return Outcome("discarded", failed=True, error=exc)
    else:
        count = _counter(payload.get("retry_count", 0), "retry_count")
        if count < _max_retries(job):
            return _retry(job, default_backoff(count), {"retry_count": count + 1}, None, None, exc)

    call_handlers("DEATH_HANDLERS", payload, exc)
    signals.send(signals.job_died, type(job), job=job, exception=exc, reason="retries_exhausted")
    return Outcome(
        "dead", failed=True, error=exc, reason="retries_exhausted", data={**payload, "executions": job.executions}
    )


def _counter(value: Any, field: str) -> int:
    """A count read back from the payload. Anything but a count is not what a worker wrote: a
    negative or fractional one would retry for ever (at once, with ``wait=0``)."""
    if type(value) is not int or value < 0:
        raise TypeError(f"the payload's {field!r} is {value!r:.100}, not a count")
    return value


def _retry(
    job: ApplicationJob,
    wait: float,
    counters: dict[str, Any],
    queue: str | None,
    priority: int | None,
    exc: BaseException,
) -> Outcome:
    _counter(job.executions, "executions")
    data = {**job.payload, **counters, "executions": job.executions, "error_class": type(exc).__name__}
    data["error_message"] = str(exc)[:500]
    # The failure's traceback rides with the job: its detail page shows it, and a retry killed
    # from the dashboard becomes a dead job that still has it.
    data["traceback"] = "".join(traceback.format_exception(exc))[-TRACEBACK_KEPT:]
    if queue:
        data["queue"] = queue
    if priority is not None:
        data["priority"] = priority
    run_at = time.time() + wait
    data["at"] = round(run_at, 3)
    signals.send(signals.job_retried, type(job), job=job, exception=exc, wait=wait)
    return Outcome("retry", failed=True, error=exc, run_at=run_at, payload=payload_bytes(data))


class RetryPolicy:
    """The worker's perform layer that ends every execution with an ``Outcome`` (``job.outcome``).

    Everything inside it (the other middleware, the callbacks, ``perform``) raises into the
    rules above; ``SystemExit`` from a job too. A cancelled coroutine is not a failure: the
    worker is stopping, and the job is handed back. ``Reschedule`` and ``Drop`` are requests,
    not failures: the job is put back, or acknowledged with the outcome they name.
    """

    def perform(self, job: ApplicationJob, call_next: Callable[[Any], Any]) -> Any:
        try:
            result = call_next(job)
        except Reschedule as request:
            failure = request.prepare(job)
            job.outcome = reschedule(job, request) if failure is None else handle_failure(job, failure)
            return None
        except Drop as request:
            job.outcome = Outcome(request.outcome)
            return None
        except BaseException as exc:
            job.outcome = handle_failure(job, exc)
            return None
        job.outcome = SUCCEEDED
        return result

    async def aperform(self, job: ApplicationJob, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        try:
            result = await call_next(job)
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Reschedule as request:
            failure = request.prepare(job)
            if failure is None:
                job.outcome = reschedule(job, request)
                return None
            job.outcome = await sync_to_async(handle_failure, thread_sensitive=False)(job, failure)
            return None
        except Drop as request:
            job.outcome = Outcome(request.outcome)
            return None
        except BaseException as exc:  # SystemExit too: asyncio would re-raise it and end the loop
            # The rules call handlers and signal receivers, which may block: not on the loop.
            job.outcome = await sync_to_async(handle_failure, thread_sensitive=False)(job, exc)
            return None
        job.outcome = SUCCEEDED
        return result


def _call_quietly(callback: Callable[..., Any], *args: Any) -> None:
    try:
        callback(*args)
    except Exception:
        logger.exception("callback %r raised; the worker goes on", callback)
