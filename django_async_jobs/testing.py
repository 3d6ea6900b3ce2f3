"""Test helpers for your own test suite, in the spirit of ``ActiveJob::TestHelper``.

``MODE = "test"`` records every enqueued job in memory (no Redis needed); ``MODE = "inline"``
runs each job at once, in the enqueuing thread. Either way a job goes through the same JSON
round trip as on a worker, so an argument that would not survive Redis fails in the test too.

Use it through the pytest fixture ``async_jobs`` (``django_async_jobs.pytest_plugin``), the
``JobsTestCaseMixin`` for Django's ``TestCase``, or ``jobs_test_mode()`` directly::

    def test_signup_sends_welcome(async_jobs):
        signup("ann@example.com")
        async_jobs.assert_enqueued(WelcomeJob, args=["ann@example.com"], queue="mail")
        async_jobs.perform_enqueued_jobs()
        async_jobs.assert_performed(WelcomeJob)

Failures are handled as on a worker: a ``discard_on`` match drops the job; a ``retry_on`` match
enqueues the retry (performed by ``perform_enqueued_jobs`` at once, its wait ignored) until the
rule's attempts run out, and then the exception is raised; an exception no rule matches is
raised at once (the default 25-retry policy is not replayed in tests).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from django.conf import settings as django_settings
from django.test.utils import override_settings

from django_async_jobs.memory import EnqueuedJob, Filter, add, count_perform, perform, store

if TYPE_CHECKING:
    from django_async_jobs.job import ApplicationJob

def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition", interval: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy, and return that.

    For end-to-end tests with a real worker, which runs jobs in its own threads: wait for a
    job's effect instead of sleeping a guessed time. Raises ``AssertionError`` naming ``what``
    after ``timeout`` seconds, so a stuck worker fails the test instead of hanging it.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s")
        time.sleep(interval)


AT_TOLERANCE = 1.0  # seconds: ``at=`` matches a scheduled time within this


# -- matching -------------------------------------------------------------------------------------


def _classes(value: Any, name: str) -> tuple[type, ...] | Filter | None:
    if value is None or callable(value) and not isinstance(value, type):
        return value
    values = tuple(value) if isinstance(value, (list, tuple, set)) else (value,)
    for item in values:
        if not isinstance(item, type):
            raise TypeError(f"{name}= takes job classes, a list of them, or a callable(record) -> bool; got {item!r}.")
    return values


def _filter(only: Any = None, except_: Any = None, queue: str | None = None) -> Filter:
    only_, except__ = _classes(only, "only"), _classes(except_, "except_")

    def matches(spec: Any, record: EnqueuedJob) -> bool:
        if callable(spec) and not isinstance(spec, tuple):
            return bool(spec(record))
        return record.job_class is not None and issubclass(record.job_class, spec)

    def wanted(record: EnqueuedJob) -> bool:
        if only_ is not None and not matches(only_, record):
            return False
        if except__ is not None and matches(except__, record):
            return False
        return queue is None or record.queue == queue

    return wanted


def _epoch(value: Any) -> float:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            from django.utils import timezone

            value = timezone.make_aware(value)
        return value.timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise TypeError(f"at= takes a datetime or an epoch timestamp, got {value!r}.")


def _matching(
    records: Iterable[EnqueuedJob],
    job_class: type | None,
    args: Sequence[Any] | None,
    kwargs: dict[str, Any] | None,
    queue: str | None,
    at: Any,
    priority: int | None,
) -> list[EnqueuedJob]:
    at_epoch = None if at is None else _epoch(at)
    found = []
    for record in records:
        if job_class is not None and (record.job_class is None or not issubclass(record.job_class, job_class)):
            continue
        if args is not None and record.args != list(args):
            continue
        if kwargs is not None and record.kwargs != kwargs:
            continue
        if queue is not None and record.queue != queue:
            continue
        if priority is not None and record.priority != priority:
            continue
        if at_epoch is not None and (record.at is None or abs(record.at.timestamp() - at_epoch) > AT_TOLERANCE):
            continue
        found.append(record)
    return found


def _describe(criteria: dict[str, Any], records: list[EnqueuedJob], what: str) -> tuple[str, str]:
    """(the criteria, the recorded jobs) as text for an assertion message."""
    wanted = ", ".join(f"{k}={v!r}" for k, v in criteria.items() if v is not None) or "any job"
    if not records:
        return wanted, f"no job was {what}."
    lines = [
        f"  {r.job_class.__name__ if r.job_class else r.payload['job']}(args={r.args!r}, kwargs={r.kwargs!r}, "
        f"queue={r.queue!r}, priority={r.priority}, at={r.at})"
        for r in records
    ]
    return wanted, f"the {what} jobs are:\n" + "\n".join(lines)


# -- the public helper -----------------------------------------------------------------------


class _Performing:
    """What ``perform_enqueued_jobs()`` returns: the number performed, and a context manager."""

    def __init__(self, count: int, wanted: Filter) -> None:
        self.count = count
        self.wanted = wanted

    def __int__(self) -> int:
        return self.count

    def __eq__(self, other: object) -> bool:
        return self.count == other if isinstance(other, int) else NotImplemented

    def __hash__(self) -> int:
        return hash(self.count)

    def __repr__(self) -> str:
        return f"<performed {self.count} job(s)>"

    def __enter__(self) -> _Performing:
        store.perform_at_once.append(self.wanted)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        store.perform_at_once.remove(self.wanted)


class JobsTestHelper:
    """Assertions and controls over the jobs recorded in "test" mode."""

    @property
    def enqueued_jobs(self) -> list[EnqueuedJob]:
        """Jobs enqueued and not performed yet, oldest first (scheduled jobs and retries too)."""
        with store.lock:
            return list(store.enqueued)

    @property
    def performed_jobs(self) -> list[EnqueuedJob]:
        with store.lock:
            return list(store.performed)

    def clear(self) -> None:
        """Forget every enqueued and performed job."""
        store.clear()

    def assert_enqueued(
        self,
        job_class: type[ApplicationJob] | None = None,
        *,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        queue: str | None = None,
        at: datetime | float | None = None,
        priority: int | None = None,
        count: int | None = None,
    ) -> list[EnqueuedJob]:
        """At least one matching enqueued job, or exactly ``count``; returns the matches.

        ``args`` compares with the arguments after the JSON round trip (tuples become lists);
        ``at`` matches a scheduled time within a second.
        """
        return self._assert("enqueued", self.enqueued_jobs, job_class, args, kwargs, queue, at, priority, count)

    def assert_no_enqueued(
        self,
        job_class: type[ApplicationJob] | None = None,
        *,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        queue: str | None = None,
        at: datetime | float | None = None,
        priority: int | None = None,
    ) -> None:
        self._assert("enqueued", self.enqueued_jobs, job_class, args, kwargs, queue, at, priority, 0)

    def assert_performed(
        self,
        job_class: type[ApplicationJob] | None = None,
        *,
        args: Sequence[Any] | None = None,
        kwargs: dict[str, Any] | None = None,
        queue: str | None = None,
        priority: int | None = None,
        count: int | None = None,
    ) -> list[EnqueuedJob]:
        """At least one matching performed job (each retry counts as a performance), or ``count``."""
        return self._assert("performed", self.performed_jobs, job_class, args, kwargs, queue, None, priority, count)

    def _assert(
        self, what: str, records: list[EnqueuedJob], job_class: Any, args: Any, kwargs: Any,
        queue: Any, at: Any, priority: Any, count: int | None,
    ) -> list[EnqueuedJob]:
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise TypeError(f"count= must be an integer >= 0, got {count!r}.")
        found = _matching(records, job_class, args, kwargs, queue, at, priority)
        criteria = {"job": getattr(job_class, "__name__", None), "args": args, "kwargs": kwargs,
                    "queue": queue, "at": at, "priority": priority}
        if (count is None and not found) or (count is not None and len(found) != count):
            wanted, listing = _describe(criteria, records, what)
            expected = f"an {what} job" if count is None else f"{count} {what} job(s)"
            raise AssertionError(f"Expected {expected} with {wanted}, found {len(found)}; {listing}")
        return found

    def perform_enqueued_jobs(
        self,
        *,
        only: Any = None,
        except_: Any = None,
        queue: str | None = None,
    ) -> _Performing:
        """Perform the matching enqueued jobs now, scheduled jobs and retries included, until none
        is left (jobs they enqueue run too). Returns the count, usable as ``int``.

        As a context manager (``with helper.perform_enqueued_jobs():``) it also performs matching
        jobs enqueued inside the block at the moment they are enqueued, as ActiveJob's block form
        does; jobs enqueued before the block were already performed by the call itself.
        ``only`` / ``except_`` take job classes (or a callable on an ``EnqueuedJob``).
        """
        wanted = _filter(only, except_, queue)
        performed = 0
        while (record := store.take(wanted)) is not None:
            add(perform(record))
            performed = count_perform(performed)
        return _Performing(performed, wanted)


@contextmanager
def jobs_test_mode(mode: str = "test") -> Iterator[JobsTestHelper]:
    """Switch ``ASYNC_JOBS["MODE"]`` to "test" (or "inline") for the block, with an empty record."""
    if mode not in ("test", "inline"):
        raise ValueError(f'jobs_test_mode() takes mode="test" or mode="inline", got {mode!r}.')
    current = getattr(django_settings, "ASYNC_JOBS", {}) or {}
    store.clear()
    try:
        with override_settings(ASYNC_JOBS={**current, "MODE": mode}):
            yield JobsTestHelper()
    finally:
        store.clear()
        store.perform_at_once.clear()


class JobsTestCaseMixin(JobsTestHelper):
    """For ``django.test.TestCase``: every test runs in "test" mode with the helper's methods.

    Set ``async_jobs_mode = "inline"`` on the class to run jobs at once instead.
    """

    async_jobs_mode = "test"

    def setUp(self) -> None:
        super().setUp()  # type: ignore[misc]
        mode = self.enterContext(jobs_test_mode(self.async_jobs_mode))  # type: ignore[attr-defined]
        self.async_jobs = mode
