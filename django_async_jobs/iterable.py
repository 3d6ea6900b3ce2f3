"""``IterableJob``: a job that walks a sequence of items, and can stop and go on between any two.

As Sidekiq's ``IterableJob``: ``build_enumerator(*args, cursor)`` returns ``(item, cursor)``
pairs, and ``each_iteration(item, *args)`` does one item; ``perform`` is the loop between them.
After each item the job passes a checkpoint (``resumable.py``): it stops there when its worker
is stopping, when it was cancelled, or after ``max_iteration_runtime``, and goes back to its
queue with the cursor of the last item done. The next execution calls ``build_enumerator``
with that cursor (``None`` the first time), which goes on after it. An exception in
``each_iteration`` goes to the retry rules as usual, and the retry starts after the last item
done too.

The enumerators below cover the usual sources; each keeps its cursor strict JSON:

* ``queryset_enumerator``: a queryset walked by primary key, a page at a time, each page
  ``WHERE pk > <cursor> ORDER BY pk LIMIT n`` (keyset pagination: never ``OFFSET``, so a page
  costs the same at row 10 and at row 10 million, and rows deleted or added meanwhile shift
  nothing); the cursor is the last primary key done;
* ``list_enumerator``: a list or tuple; the cursor is the index of the next item;
* ``csv_enumerator``: a CSV file, a row at a time; the cursor is the number of the last row done;
* ``batch_enumerator``: any of these in batches of N items, for work done a batch at a time.

An iterable job reports to a ``JobProgress`` row as it goes: the total when its enumerator
knows it, the items done, the cursor (``progress.Tracker``; ``self.progress`` records an
item's error with ``self.progress.error(row=..., error=...)``).
"""

from __future__ import annotations

import csv
import inspect
import itertools
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from datetime import timedelta
from typing import Any, ClassVar

from django.core.exceptions import ImproperlyConfigured
from django.db.models import QuerySet

from django_async_jobs import progress, resumable
from django_async_jobs.conf import wait_seconds
from django_async_jobs.job import ApplicationJob

logger = logging.getLogger("django_async_jobs.job")


class Enumerator:
    """``(item, cursor)`` pairs, with how many items there are in all when that is known."""

    def __init__(self, pairs: Iterable[tuple[Any, Any]], total: int | None = None) -> None:
        self.pairs = pairs
        self.total = total

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return iter(self.pairs)


def _start(cursor: Any, what: str, most: int | None = None) -> int:
    if cursor is None:
        return 0
    if type(cursor) is not int or cursor < 0 or (most is not None and cursor > most):
        bound = f" and at most {most}" if most is not None else ""
        raise ValueError(f"{what}: the cursor must be None or an integer from 0{bound}, got {cursor!r}.")
    return cursor


def list_enumerator(items: Sequence[Any], *, cursor: int | None = None) -> Enumerator:
    """The items of a list or tuple; the cursor is the index of the next item to do."""
    if not isinstance(items, (list, tuple)):
        raise TypeError(f"list_enumerator() takes a list or a tuple, got a {type(items).__name__}; pass list(...).")
    start = _start(cursor, "list_enumerator()", len(items))
    return Enumerator(((items[i], i + 1) for i in range(start, len(items))), total=len(items))


def _pk_cursor(value: Any) -> Any:
    """A primary key as a strict JSON cursor; a UUID, a date or a decimal travels as its text,
    which a ``pk__gt`` filter reads back."""
    return value if type(value) in (int, str) else str(value)


def queryset_enumerator(
    queryset: QuerySet[Any], *, cursor: Any = None, batch_size: int = 100, count: bool = True
) -> Enumerator:
    """The rows of ``queryset`` in primary key order, ``batch_size`` per query, by keyset
    pagination (``WHERE pk > cursor ORDER BY pk LIMIT batch_size``); the cursor is the last
    primary key done. ``count``: one ``COUNT`` query gives the progress row its total."""
    if not isinstance(queryset, QuerySet):
        raise TypeError(f"queryset_enumerator() takes a QuerySet, got a {type(queryset).__name__}.")
    if queryset.query.is_sliced:
        raise TypeError("queryset_enumerator() cannot walk a sliced queryset: filter it instead of slicing it.")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"queryset_enumerator(batch_size=) must be a positive integer, got {batch_size!r}.")
    if cursor is not None and type(cursor) not in (int, str):
        raise ValueError(f"queryset_enumerator(): the cursor must be None or a primary key, got {cursor!r}.")
    ordered = queryset.order_by("pk")

    def pairs() -> Iterator[tuple[Any, Any]]:
        last = cursor
        while True:
            page = ordered if last is None else ordered.filter(pk__gt=last)
            rows = list(page[:batch_size])
            for row in rows:
                last = _pk_cursor(row.pk)
                yield row, last
            if len(rows) < batch_size:
                return

    return Enumerator(pairs(), total=queryset.count() if count else None)


def csv_enumerator(
    source: str | os.PathLike[str] | Iterable[str],
    *,
    cursor: int | None = None,
    header: bool = True,
    encoding: str = "utf-8",
    **fmtparams: Any,
) -> Enumerator:
    """The rows of a CSV file (a path, or an open text file): dicts keyed by the header line,
    or lists with ``header=False``; ``fmtparams`` go to the ``csv`` reader. The cursor is the
    number of the last row done (the header not counted): a resumed job reads past the rows
    before it, without doing them. The total is not known without reading the whole file."""
    start = _start(cursor, "csv_enumerator()")

    def rows(lines: Iterable[str]) -> Iterator[tuple[Any, Any]]:
        reader = csv.DictReader(lines, **fmtparams) if header else csv.reader(lines, **fmtparams)
        for number, row in enumerate(itertools.islice(reader, start, None), start + 1):
            yield row, number

    def from_path(path: str | os.PathLike[str]) -> Iterator[tuple[Any, Any]]:
        with open(path, newline="", encoding=encoding) as file:
            yield from rows(file)

    if isinstance(source, (str, os.PathLike)):
        return Enumerator(from_path(source))
    return Enumerator(rows(source))


def batch_enumerator(enumerator: Iterable[tuple[Any, Any]], *, size: int) -> Enumerator:
    """``enumerator``'s items in lists of ``size`` (the last one shorter), each with the cursor
    of its last item: build the inner enumerator with the cursor, as for its single items."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ValueError(f"batch_enumerator(size=) must be a positive integer, got {size!r}.")
    inner = getattr(enumerator, "total", None)

    def batches() -> Iterator[tuple[Any, Any]]:
        batch: list[Any] = []
        last = None
        for item, item_cursor in enumerator:
            batch.append(item)
            last = item_cursor
            if len(batch) == size:
                yield batch, last
                batch = []
        if batch:
            yield batch, last

    return Enumerator(batches(), total=None if inner is None else -(-inner // size))


# -- the job ----------------------------------------------------------------------------------------


def _perform(self: IterableJob, *args: Any, **kwargs: Any) -> None:
    """An iterable job's ``perform``: the loop between its enumerator and ``each_iteration``."""
    run = resumable.continuation(self)
    state = run.state
    run.checkpoints.limit(self._max_runtime())
    if run.started:
        logger.info("%s %s resumes %s", self.job_name, self.job_id, run.describe())
    enumerator = self.build_enumerator(*args, cursor=state.get("cursor"), **kwargs)
    if enumerator is None:
        logger.info("%s %s: build_enumerator() returned None, nothing to do", self.job_name, self.job_id)
        return None
    where = f"{type(self).__name__}.build_enumerator()"
    try:
        iterator = iter(enumerator)
    except TypeError:
        raise TypeError(f"{where} must return (item, cursor) pairs, got a {type(enumerator).__name__}.") from None
    tracker = self.progress = progress.Tracker(self, total=_total(enumerator))
    if run.started:
        tracker.resume(state.get("done", 0), state.get("errors", 0), state.get("cursor"))
    try:
        with tracker:
            for pair in iterator:
                if not (isinstance(pair, tuple) and len(pair) == 2):
                    raise TypeError(f"{where} must yield (item, cursor) pairs, got {type(pair).__name__}.")
                item, cursor = pair
                cursor = resumable.cursor_value(cursor, where)
                self.each_iteration(item, *args, **kwargs)
                run.checkpoints.guard()
                done = state["done"] = state.get("done", 0) + 1
                state["cursor"] = cursor
                state["errors"] = tracker.error_count
                tracker.reached(done, cursor)
                run.checkpoints()
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()  # a file or a cursor the enumerator opened, when the job stops early
    return None


def _total(enumerator: Any) -> int | None:
    total = getattr(enumerator, "total", None)
    return total if type(total) is int and total >= 0 else None


def _runtime(value: Any, name: str) -> float | None:
    """``max_iteration_runtime`` in seconds: None, or more than 0."""
    if value is None:
        return None
    seconds = wait_seconds(value, f"{name}.max_iteration_runtime")
    if not seconds:
        raise ValueError(f"{name}.max_iteration_runtime must be more than 0 seconds, or None.")
    return seconds


class IterableJob(ApplicationJob):
    """Subclass it and write ``build_enumerator`` and ``each_iteration`` (not ``perform``).

    ``max_iteration_runtime`` (seconds or a timedelta; None: no limit) puts a long run back in
    its queue after that long, to go on from where it is: one job cannot hold a thread for
    hours, and the jobs queued behind it get their turn.
    """

    max_iteration_runtime: ClassVar[float | timedelta | None] = None
    progress: progress.Tracker

    list_enumerator = staticmethod(list_enumerator)
    queryset_enumerator = staticmethod(queryset_enumerator)
    csv_enumerator = staticmethod(csv_enumerator)
    batch_enumerator = staticmethod(batch_enumerator)

    def build_enumerator(self, *args: Any, cursor: Any) -> Iterable[tuple[Any, Any]] | None:
        """``(item, cursor)`` pairs from after ``cursor`` (``None``: from the start)."""
        raise NotImplementedError(f"{type(self).__name__} must define build_enumerator(self, ..., *, cursor).")

    def each_iteration(self, item: Any, *args: Any) -> None:
        """Do one item; the job's arguments follow it."""
        raise NotImplementedError(f"{type(self).__name__} must define each_iteration(self, item, ...).")

    perform = _perform

    @classmethod
    def _arguments_signature(cls) -> inspect.Signature:
        """The arguments fit ``build_enumerator`` (its ``cursor`` is the job's own)."""
        signature = inspect.signature(cls.build_enumerator)
        return signature.replace(parameters=[p for p in signature.parameters.values() if p.name != "cursor"])

    @classmethod
    def _prepare(cls) -> None:
        name = cls.__qualname__
        if cls.perform is not _perform:
            raise ImproperlyConfigured(
                f"{name} is an IterableJob: its perform() is the loop over build_enumerator() and "
                f"each_iteration(); define those instead of perform()."
            )
        parameter = inspect.signature(cls.build_enumerator).parameters.get("cursor")
        if parameter is None or parameter.kind not in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD):
            raise ImproperlyConfigured(f"{name}.build_enumerator must take the cursor as a keyword: (self, ..., *, cursor).")
        for method in ("build_enumerator", "each_iteration"):
            if inspect.iscoroutinefunction(getattr(cls, method)):
                raise ImproperlyConfigured(f"{name}.{method} must not be async: an iterable job runs on a thread.")
        runtime = inspect.getattr_static(cls, "max_iteration_runtime")
        if not isinstance(runtime, property):  # a property is read, and checked, at each execution
            try:
                _runtime(runtime, name)
            except (TypeError, ValueError) as exc:
                raise ImproperlyConfigured(str(exc)) from None
        super()._prepare()

    def _max_runtime(self) -> float | None:
        return _runtime(self.max_iteration_runtime, type(self).__qualname__)
