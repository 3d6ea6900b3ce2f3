"""Per-class execution metrics: runs, failures, execution time and queue latency per minute.

Sidekiq 7's metrics, kept ``METRICS_RETENTION`` (72 hours). The worker's ``Metrics`` layer appends
each finished job to a buffer in the process (a tuple on a deque: no lock, no Redis); the
worker's heart sums the buffer up and sends it at every beat in one script (``metrics.lua``):
one hash per minute (``p:metrics:<minute>``), fields ``<job class>|<stat>``, and the same
amounts into its hour's hash (``p:metrics:h:<hour>``), each expiring with the retention. A
window longer than ``MINUTES_UP_TO`` reads hours: 72 hours is 72 hashes, not 4,320. Execution
time and latency go into log-scale histogram buckets (``BOUNDS_MS``, each half as wide again as
the one before), from which ``percentile`` reads p50/p95/p99; buckets add up, so an hour's
percentiles are as good as a minute's.

Only executions count as runs (``RUNS``: the job's ``perform`` ran, whatever it raised). A job
the worker drops before it runs (expired, blocked by its concurrency limit, cancelled) or puts
back (rate limited, interrupted at a checkpoint) is counted apart, under its outcome's name.

Deploy marks (``jobs metrics mark v1.2``) are kept as long, to show on the charts.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from django_async_jobs.broker.client import Broker
from django_async_jobs.conf import get_settings

logger = logging.getLogger("django_async_jobs.worker")

# Upper bounds of the histogram buckets in milliseconds, 0.1 ms to 27 minutes; a last bucket
# takes anything longer.
BOUNDS_MS: tuple[float, ...] = tuple(round(0.1 * 1.5**i, 3) for i in range(42))
BUCKETS = len(BOUNDS_MS) + 1
# The outcomes of an execution; any other one (expired, blocked, cancelled, limited, ...) is a
# job that did not run, or not to its end. See ``ran``.
RUNS = frozenset({"ok", "retry", "dead", "discarded"})

# A buffered row: runs, failures, execution ms, latency ms, latencies measured, then the
# execution histogram's buckets and the latency histogram's.
RUNS_AT, FAILED_AT, MS_AT, LATENCY_AT, LATENCIES_AT = range(5)
HISTOGRAM_AT = 5
LATENCY_HISTOGRAM_AT = HISTOGRAM_AT + BUCKETS
ROW = LATENCY_HISTOGRAM_AT + BUCKETS

# Field suffixes in the minute hashes.
STATS = {RUNS_AT: "r", FAILED_AT: "f", MS_AT: "ms", LATENCY_AT: "lat", LATENCIES_AT: "latn"}
HISTOGRAM = "h"
LATENCY_HISTOGRAM = "l"
OTHER = "x:"

Key = tuple[int, str, str]  # minute (epoch // 60), job class, queue

# The longest window read a point a minute; a longer one reads a point an hour.
MINUTES_UP_TO = 180


def ran(outcome: Any) -> bool:
    """Whether an outcome is an execution's: one of ``RUNS``, but a job discarded without an
    error (its concurrency limit full, ``on_conflict="discard"``) never ran."""
    return outcome.name in RUNS and (outcome.error is not None or outcome.name != "discarded")


def queue_latency(job: Any, began: float) -> float | None:
    """Seconds from when the job was due (a retry's or a scheduled job's run-at, else its
    enqueue) to ``began``; None for a payload without a usable time."""
    return _since(job.scheduled_at or job.enqueued_at, began)


def _since(due: Any, began: float) -> float | None:
    try:
        return max(0.0, began - due)
    except TypeError:
        return None


# What the layer appends per job: class, queue, outcome, began, ended, due (epoch seconds).
Event = tuple[str, str, Any, float, float, Any]


class Buffer:
    """What this process's jobs did since the last flush. A job only appends an ``Event`` to a
    deque (atomic, no lock, no arithmetic on the job's thread); ``take`` sums them up by minute,
    class and queue."""

    def __init__(self) -> None:
        self.events: deque[Event] = deque()
        self._lock = threading.Lock()  # one take/restore at a time
        self._rows: dict[Key, list[float]] = {}
        self._other: dict[tuple[int, str, str, str], int] = {}

    def _sum_events(self) -> None:
        """Move the events into the rows; the caller holds the lock.

        This loop runs once per job, so it does the least it can per event: a run of events of
        one class, queue and minute (the common case on a busy worker) appends each job's times
        to that run's lists without a lookup; sums and histogram buckets are counted per list
        afterwards (``_count_buckets``), in C for the most part."""
        rows, other, pop, events = self._rows, self._other, self.events.popleft, self.events
        groups: dict[Key, tuple[list[float], list[float], list[int]]] = {}
        last_name = last_queue = None
        since = until = 0.0
        times: list[float] = []
        latencies: list[float] = []
        failures = [0]
        while events:
            name, queue, outcome, began, ended, due = pop()
            kind = outcome.name
            if kind != "ok" and not ran(outcome):
                key4 = (int(ended // 60), name, queue, kind)
                other[key4] = other.get(key4, 0) + 1
                continue
            if name != last_name or queue != last_queue or not since <= ended < until:
                minute = int(ended // 60)
                since, until = minute * 60, minute * 60 + 60
                key = (minute, name, queue)
                group = groups.get(key)
                if group is None:
                    group = groups[key] = ([], [], [0])
                times, latencies, failures = group
                last_name, last_queue = name, queue
            times.append((ended - began) * 1000)
            if outcome.failed:
                failures[0] += 1
            try:
                if due > 0:
                    latency = (began - due) * 1000
                    latencies.append(latency if latency > 0 else 0.0)
            except TypeError:  # no usable time in the payload: no latency
                pass
        for key, (times, latencies, failures) in groups.items():
            row = rows.get(key)
            if row is None:
                row = rows[key] = [0] * ROW
            row[RUNS_AT] += len(times)
            row[FAILED_AT] += failures[0]
            row[MS_AT] += sum(times)
            row[LATENCY_AT] += sum(latencies)
            row[LATENCIES_AT] += len(latencies)
            _count_buckets(row, HISTOGRAM_AT, times)
            _count_buckets(row, LATENCY_HISTOGRAM_AT, latencies)

    def compact(self) -> None:
        """Sum the events up now if no flush is doing it: a busy process would otherwise keep a
        beat's worth of events (tens of thousands) in memory."""
        if self._lock.acquire(blocking=False):
            try:
                self._sum_events()
            finally:
                self._lock.release()

    def take(self) -> tuple[dict[Key, list[float]], dict[tuple[int, str, str, str], int]]:
        with self._lock:
            self._sum_events()
            rows, other = self._rows, self._other
            self._rows, self._other = {}, {}
        return rows, other

    def restore(self, rows: dict[Key, list[float]], other: dict[tuple[int, str, str, str], int]) -> None:
        """Put back what a flush could not send, for the next one (summed: memory stays bounded
        by minutes and classes however long Redis is away)."""
        with self._lock:
            for key, row in rows.items():
                mine = self._rows.setdefault(key, [0] * ROW)
                for i, value in enumerate(row):
                    mine[i] += value
            for key, count in other.items():
                self._other[key] = self._other.get(key, 0) + count


def _count_buckets(row: list[float], at: int, values: list[float]) -> None:
    """Add ``values`` to the histogram that starts at ``row[at]``: bucket i counts what is above
    ``BOUNDS_MS[i-1]`` and at most ``BOUNDS_MS[i]`` (``bisect_left``), the last one the rest."""
    values.sort()
    counted, total = 0, len(values)
    for i, bound in enumerate(BOUNDS_MS):
        if counted == total:
            return
        upto = bisect_right(values, bound, counted)
        row[at + i] += upto - counted
        counted = upto
    row[at + len(BOUNDS_MS)] += total - counted


BUFFER = Buffer()
_append = BUFFER.events.append
_events = BUFFER.events
COMPACT_AT = 2048  # events; a job that sees more sums them up (a few ms, once per 2,048 jobs)


class Metrics:
    """The worker layer, just inside the log line: it times the job and hands it to ``BUFFER``."""

    def applies_to(self, job_class: type) -> bool:
        return get_settings().metrics_retention is not None

    def perform(self, job: Any, call_next: Callable[[Any], Any]) -> Any:
        began = time.time()
        result = call_next(job)
        _append((job.job_name, job.queue_name, job.outcome, began, time.time(), job.scheduled_at or job.enqueued_at))
        if len(_events) > COMPACT_AT:
            BUFFER.compact()
        return result

    async def aperform(self, job: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        began = time.time()
        result = await call_next(job)
        _append((job.job_name, job.queue_name, job.outcome, began, time.time(), job.scheduled_at or job.enqueued_at))
        if len(_events) > COMPACT_AT:
            BUFFER.compact()
        return result


def fields(rows: dict[Key, list[float]], other: dict[tuple[int, str, str, str], int]) -> dict[int, dict[str, str]]:
    """A buffer's rows as increments of the minute hashes: minute -> field -> amount (queues
    merged; a float amount is written with a '.', which is how the script tells it apart)."""
    out: dict[int, dict[str, str]] = {}
    sums: dict[tuple[int, str], dict[str, float]] = {}
    for (minute, name, _queue), row in rows.items():
        into = sums.setdefault((minute, name), {})
        for at, stat in STATS.items():
            if row[at]:
                into[stat] = into.get(stat, 0) + row[at]
        for i in range(BUCKETS):
            for base, prefix in ((HISTOGRAM_AT, HISTOGRAM), (LATENCY_HISTOGRAM_AT, LATENCY_HISTOGRAM)):
                if row[base + i]:
                    into[f"{prefix}{i}"] = into.get(f"{prefix}{i}", 0) + row[base + i]
    for (minute, name, _queue, outcome), count in other.items():
        into = sums.setdefault((minute, name), {})
        into[OTHER + outcome] = into.get(OTHER + outcome, 0) + count
    for (minute, name), values in sums.items():
        hash_fields = out.setdefault(minute, {})
        for stat, amount in values.items():
            hash_fields[f"{name}|{stat}"] = f"{amount:.3f}" if isinstance(amount, float) else str(amount)
    return out


def flush(broker: Broker, buffer: Buffer = BUFFER) -> int:
    """Send the buffer to Redis in one round trip; what Redis did not take waits for the next.
    Returns the minutes written."""
    retention = broker.settings.metrics_retention
    rows, other = buffer.take()
    if retention is None or not (rows or other):
        return 0
    increments = fields(rows, other)
    try:
        broker.record_metrics(increments, retention, time.time())
    except Exception:
        buffer.restore(rows, other)
        raise
    return len(increments)


# -- reading --------------------------------------------------------------------------------------


def percentile(histogram: Sequence[int] | dict[int, int], q: float) -> float | None:
    """The ``q`` quantile (0..1) of a histogram of ``BOUNDS_MS`` buckets, in milliseconds: the
    upper bound of the bucket it falls in (so within 50% above the true value), None when empty.
    A value past the last bound reads as that bound."""
    counts = histogram if isinstance(histogram, dict) else dict(enumerate(histogram))
    total = sum(counts.values())
    if not total:
        return None
    rank = q * total
    seen = 0
    for bucket in sorted(counts):
        seen += counts[bucket]
        if seen >= rank and counts[bucket]:
            return BOUNDS_MS[min(bucket, len(BOUNDS_MS) - 1)]
    return BOUNDS_MS[-1]


@dataclass
class ClassMetrics:
    """One job class over the window asked for, a point a minute or an hour (``Report.step``);
    lists run oldest point first."""

    job_class: str
    starts: list[int]  # each point's start, epoch seconds
    runs: list[int]
    failures: list[int]
    ms: list[float]  # execution time, summed over the point's runs
    latency_ms: list[float]  # queue latency, summed over the point's runs that had one
    latencies: list[int]
    histograms: list[dict[int, int]]  # per point: bucket -> runs (execution time)
    latency_histograms: list[dict[int, int]]
    other: dict[str, int] = field(default_factory=dict)  # not runs: outcome -> jobs (whole span)

    @property
    def total_runs(self) -> int:
        return sum(self.runs)

    @property
    def total_failures(self) -> int:
        return sum(self.failures)

    @property
    def average_ms(self) -> float | None:
        runs = self.total_runs
        return sum(self.ms) / runs if runs else None

    @property
    def average_latency_ms(self) -> float | None:
        count = sum(self.latencies)
        return sum(self.latency_ms) / count if count else None

    def histogram(self) -> dict[int, int]:
        """Execution-time buckets over the whole span."""
        return _merged(self.histograms)

    def latency_histogram(self) -> dict[int, int]:
        return _merged(self.latency_histograms)

    def percentile(self, q: float) -> float | None:
        return percentile(self.histogram(), q)

    def percentile_series(self, q: float) -> list[float | None]:
        """The ``q`` quantile of each point (None for a point without runs), for a chart."""
        return [percentile(point, q) for point in self.histograms]

    def as_json(self) -> dict[str, Any]:
        hist = self.histogram()
        return {
            "job_class": self.job_class,
            "runs": self.total_runs,
            "failures": self.total_failures,
            "average_ms": _rounded(self.average_ms),
            "p50_ms": percentile(hist, 0.5),
            "p95_ms": percentile(hist, 0.95),
            "p99_ms": percentile(hist, 0.99),
            "average_latency_ms": _rounded(self.average_latency_ms),
            "p95_latency_ms": percentile(self.latency_histogram(), 0.95),
            "other": self.other,
            "series": [
                {"start": m, "runs": r, "failures": f, "ms": round(ms, 3), "latency_ms": round(lat, 3),
                 "latencies": n, "histogram": h, "latency_histogram": lh}
                for m, r, f, ms, lat, n, h, lh in zip(
                    self.starts, self.runs, self.failures, self.ms, self.latency_ms, self.latencies,
                    self.histograms, self.latency_histograms, strict=True,
                )
            ],
        }


@dataclass(frozen=True)
class Mark:
    """A deploy mark: a label at a time, drawn on the charts."""

    at: float
    label: str

    def as_json(self) -> dict[str, Any]:
        return {"at": self.at, "label": self.label}


@dataclass
class Report:
    """``api.metrics``: every class seen in the span (or the one asked for), and the marks in it.
    ``starts`` are the points' starts (epoch seconds), ``step`` their width: 60 or 3,600 s. In a
    window of hours the oldest point starts at the window's start, inside its hour, and sums only
    the minutes from there: totals are the same at both steps."""

    starts: list[int]
    step: int
    classes: dict[str, ClassMetrics]
    marks: list[Mark]
    bounds_ms: tuple[float, ...] = BOUNDS_MS

    def as_json(self) -> dict[str, Any]:
        return {
            "starts": self.starts,
            "step": self.step,
            "bounds_ms": list(self.bounds_ms),
            "classes": [c.as_json() for c in sorted(self.classes.values(), key=lambda c: c.job_class)],
            "marks": [m.as_json() for m in self.marks],
        }


def _merged(histograms: Iterable[dict[int, int]]) -> dict[int, int]:
    total: dict[int, int] = {}
    for histogram in histograms:
        for bucket, count in histogram.items():
            total[bucket] = total.get(bucket, 0) + count
    return total


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def read(
    broker: Broker, job_class: str | None = None, minutes: int = 60, now: float | None = None,
    hourly: bool | None = None,
) -> Report:
    """The last ``minutes`` minutes (the current one included): a point a minute from the minute
    hashes, or, past ``MINUTES_UP_TO`` minutes (or ``hourly``), a point an hour from the hour
    hashes, the oldest hour's part in the window from its minutes (summed in Redis)."""
    minutes = max(1, int(minutes))
    last = int((time.time() if now is None else now) // 60)
    first = last - minutes + 1
    if hourly is None:
        hourly = minutes > MINUTES_UP_TO
    if not hourly:
        minute_groups, hours = [[n] for n in range(first, last + 1)], []
        starts, step = [n * 60 for n in range(first, last + 1)], 60
    else:
        whole = -(-first // 60)  # the first hour the window covers whole
        edge = list(range(first, min(whole * 60, last + 1)))
        minute_groups, hours = [edge] if edge else [], list(range(whole, last // 60 + 1))
        starts = ([first * 60] if edge else []) + [h * 3600 for h in hours]
        step = 3600
    points, raw_marks = broker.read_metrics(minute_groups, hours, first * 60)
    classes: dict[str, ClassMetrics] = {}
    # Each field's target, found once per field name: every point repeats the same names.
    targets: dict[Any, tuple[int, Any, Any] | None] = {}
    for index, values in enumerate(points):
        for raw_field, raw_value in values.items():
            try:
                target = targets[raw_field]
            except KeyError:
                target = targets[raw_field] = _target(_text(raw_field), job_class, classes, starts)
            if target is None:
                continue
            try:
                amount = float(raw_value)
            except ValueError:
                continue
            kind, into, key = target
            if kind == _SUM:
                into[index] += amount
            elif kind == _COUNT:
                into[index] += int(amount)
            elif kind == _BUCKET:
                buckets = into[index]
                buckets[key] = buckets.get(key, 0) + int(amount)
            else:  # _OUTCOME: over the whole span
                into[key] = into.get(key, 0) + int(amount)
    marks = []
    for member, score in raw_marks:
        _, _, label = _text(member).partition(" ")
        marks.append(Mark(float(score), label))
    return Report(starts, step, classes, marks)


def _empty(name: str, starts: list[int]) -> ClassMetrics:
    n = len(starts)
    return ClassMetrics(
        name, starts, [0] * n, [0] * n, [0.0] * n, [0.0] * n, [0] * n, [{} for _ in range(n)], [{} for _ in range(n)],
    )


# How a field adds to its target (a point an hour may sum several minute hashes).
_SUM, _COUNT, _BUCKET, _OUTCOME = range(4)
_SERIES = {"r": ("runs", _COUNT), "f": ("failures", _COUNT), "ms": ("ms", _SUM), "lat": ("latency_ms", _SUM),
           "latn": ("latencies", _COUNT)}


def _target(
    hash_field: str, job_class: str | None, classes: dict[str, ClassMetrics], starts: list[int]
) -> tuple[int, Any, Any] | None:
    """Where a hash field ``<class>|<stat>`` adds to: (how, its class's series or ``other``,
    the histogram bucket or outcome); None for a field of another class or one this version
    does not know. Adds the class to ``classes`` the first time."""
    name, _, stat = hash_field.rpartition("|")
    if not name or (job_class is not None and name != job_class):
        return None
    key: Any = None
    if stat in _SERIES:
        attr, kind = _SERIES[stat]
    elif stat.startswith(OTHER):
        attr, kind, key = "other", _OUTCOME, stat[len(OTHER):]
    elif stat[:1] in (HISTOGRAM, LATENCY_HISTOGRAM) and stat[1:].isdigit() and int(stat[1:]) < BUCKETS:
        attr, kind, key = "histograms" if stat[0] == HISTOGRAM else "latency_histograms", _BUCKET, int(stat[1:])
    else:
        return None
    found = classes.get(name)
    if found is None:
        found = classes[name] = _empty(name, starts)
    return kind, getattr(found, attr), key


def mark(broker: Broker, label: str, at: float | None = None) -> Mark:
    """Record a deploy mark (``jobs metrics mark v1.2``), kept as long as the metrics."""
    if not isinstance(label, str) or not label.strip() or len(label) > 200:
        raise ValueError(f"A deploy mark needs a label of 1 to 200 characters, got {label!r}.")
    retention = broker.settings.metrics_retention
    if retention is None:
        raise ValueError("Metrics are off (ASYNC_JOBS['METRICS_RETENTION'] is None): there are no charts to mark.")
    found = Mark(time.time() if at is None else at, label.strip())
    broker.add_metrics_mark(f"{found.at:.3f} {found.label}", found.at, retention)
    return found
