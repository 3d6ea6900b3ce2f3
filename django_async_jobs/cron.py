"""Recurring jobs from ``ASYNC_JOBS["RECURRING"]``: parsing, validation, one enqueue per tick.

Every worker process runs the schedule (no single scheduler to lose). They agree through
Redis: the Lua step ``cron_push`` enqueues a tick only if it is newer than the entry's last
recorded tick, so however many processes and hosts see the tick, it is enqueued once. The key
is the tick's own time, computed from the cron expression, never "now" on some host.

A job class is named by its registered job name (``app.jobs.ClassName``) and looked up in the
job registry; a path in the setting is never imported.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter
from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured

from django_async_jobs import locks, registry, signals
from django_async_jobs.broker.client import get_broker
from django_async_jobs.conf import QUEUE_NAME_RULE, get_settings, valid_queue_name
from django_async_jobs.serialization import encode_job

logger = logging.getLogger("django_async_jobs.worker")

ENTRY_KEYS = {"cron", "class", "queue", "args", "kwargs", "timezone", "catch_up", "priority"}
CATCH_UP = (None, "last")


@dataclass(frozen=True)
class Entry:
    """One recurring job: when (``cron`` in ``timezone``), what, and where."""

    name: str
    cron: str
    job: str
    queue: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    timezone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    catch_up: str | None = None
    priority: int | None = None

    def _at(self, moment: float) -> croniter:
        return croniter(self.cron, datetime.fromtimestamp(moment, self.timezone))

    def next_after(self, moment: float) -> float:
        """The first tick strictly after ``moment`` (epoch seconds)."""
        return self._at(moment).get_next(datetime).timestamp()

    def latest_until(self, moment: float) -> float:
        """The last tick at or before ``moment``."""
        previous = self._at(moment).get_prev(datetime).timestamp()
        following = self.next_after(previous)
        return following if following <= moment else previous

    def upcoming(self, moment: float, count: int) -> list[datetime]:
        it = self._at(moment)
        return [it.get_next(datetime) for _ in range(count)]


def _default_timezone() -> str:
    return getattr(django_settings, "TIME_ZONE", None) or "UTC"


def _zone(name: Any) -> ZoneInfo | None:
    try:
        return ZoneInfo(name) if isinstance(name, str) and name else None
    except (ZoneInfoNotFoundError, ValueError):
        return None


def problems(raw: Any, queue_names: tuple[str, ...] | None) -> list[str]:
    """Every mistake in a ``RECURRING`` setting, as messages naming the entry and the fix."""
    if raw is None:
        return []
    if not isinstance(raw, dict):
        return ["RECURRING must be a dict of entry name -> {'cron': ..., 'class': ...}."]
    found: list[str] = []
    for name, spec in raw.items():
        where = f"RECURRING[{name!r}]"
        if not isinstance(name, str) or not name or ":" in name:
            found.append(f"{where}: the entry name must be a non-empty string without ':'.")
            continue
        if not isinstance(spec, dict):
            found.append(f"{where} must be a dict with at least 'cron' and 'class'.")
            continue
        unknown = sorted(set(spec) - ENTRY_KEYS)
        if unknown:
            found.append(f"{where} has unknown keys {unknown}; known: {sorted(ENTRY_KEYS)}.")
        expr = spec.get("cron")
        if not isinstance(expr, str) or not croniter.is_valid(expr):
            found.append(
                f"{where}['cron'] = {expr!r} is not a cron expression; use 5 fields "
                "'minute hour day month weekday' (e.g. '0 2 * * *'), or 6 with seconds last."
            )
        job_name = spec.get("class")
        job_class = registry.lookup(job_name) if isinstance(job_name, str) else None
        if job_class is None:
            found.append(
                f"{where}['class'] = {job_name!r} is not a registered job; give the job's name, "
                "'<app>.jobs.<ClassName>', of a class defined in an installed app's jobs.py."
            )
        queue = spec.get("queue")
        if queue is not None and not valid_queue_name(queue):
            found.append(f"{where}['queue'] = {queue!r} is not a valid queue name: use {QUEUE_NAME_RULE}.")
            queue = None
        elif queue is None and job_class is not None and isinstance(job_class.queue_as, str):
            queue = job_class.queue_as
        if queue is not None and queue_names is not None and queue not in queue_names:
            found.append(
                f"{where} would enqueue to queue {queue!r}, which no worker reads; add it to "
                f"ASYNC_JOBS['QUEUES'] (now {list(queue_names)}) or fix 'queue'."
            )
        tz = spec.get("timezone", _default_timezone())
        if _zone(tz) is None:
            found.append(f"{where}['timezone'] = {tz!r} is not an IANA time zone such as 'Europe/Berlin'.")
        if not isinstance(spec.get("args", []), (list, tuple)):
            found.append(f"{where}['args'] must be a list.")
        if not isinstance(spec.get("kwargs", {}), dict):
            found.append(f"{where}['kwargs'] must be a dict.")
        if spec.get("catch_up") not in CATCH_UP:
            found.append(f"{where}['catch_up'] = {spec.get('catch_up')!r}; use 'last' or leave it out (skip missed ticks).")
        priority = spec.get("priority")
        if priority is not None and (isinstance(priority, bool) or not isinstance(priority, int) or not -100 <= priority <= 100):
            found.append(f"{where}['priority'] must be an integer from -100 to 100.")
    return found


def entries(raw: Any = None) -> list[Entry]:
    """The parsed ``RECURRING`` setting; ``ImproperlyConfigured`` listing every mistake."""
    if raw is None:
        raw = get_settings().raw.get("RECURRING")
    errors = problems(raw, None)
    if errors:
        raise ImproperlyConfigured(" ".join(errors))
    return [
        Entry(
            name=name,
            cron=spec["cron"],
            job=spec["class"],
            queue=spec.get("queue"),
            args=tuple(spec.get("args", ())),
            kwargs=dict(spec.get("kwargs", {})),
            timezone=ZoneInfo(spec.get("timezone", _default_timezone())),
            catch_up=spec.get("catch_up"),
            priority=spec.get("priority"),
        )
        for name, spec in (raw or {}).items()
    ]


def enqueue_tick(entry: Entry, tick: float, broker: Any) -> str | None:
    """Enqueue ``entry``'s job for ``tick`` unless any process already did; the job id or None.

    The job goes through its enqueue chain as with ``perform_later`` (a halting middleware or
    ``before_enqueue`` skips this process's tick); only the push differs: the ``cron_push`` Lua
    step, which also takes a unique job's enqueue lock, so a tick whose lock is held counts as
    handled, as ``on_conflict`` says. The payload's ``cron`` field names the entry and the tick.
    """
    job_class = registry.lookup(entry.job)
    if job_class is None:
        raise ImproperlyConfigured(f"RECURRING[{entry.name!r}]: no registered job is named {entry.job!r}.")
    job = job_class(*entry.args, **entry.kwargs)
    job.payload["cron"] = {"name": entry.name, "tick": int(tick)}

    def push(job: Any) -> None:
        key = (job.lock_keys or {}).get("key")
        done, holder = broker.cron_push(
            entry.name, int(tick), job.job_id, encode_job(job.serialize()), key, job_class._lock_ttl_ms or 0
        )
        if done == -1:
            locks.conflict(job, key, holder, "enqueued")
        job.successfully_enqueued = done == 1
        if job.successfully_enqueued:
            signals.send(signals.job_enqueued, job_class, job=job)

    job._route = push
    job.enqueue(queue=entry.queue, priority=entry.priority)
    return job.job_id if job.successfully_enqueued else None


def last_run(entry_name: str, broker: Any) -> dict[str, Any] | None:
    """An entry's last run: ``{"tick", "job_id", "enqueued_at", "manual_at", "manual_job_id"}``
    (datetimes in UTC; a key is None when that kind of run never happened). ``tick`` is the last
    scheduled tick (``job_id`` empty when a unique job's lock kept it out); ``manual_at`` the last
    "Run now". None when neither happened."""
    raw = broker.redis.hgetall(broker.keys.cron(entry_name))
    if not raw:
        return None
    data = {k.decode(): v.decode() for k, v in raw.items()}

    def moment(name: str) -> datetime | None:
        return datetime.fromtimestamp(float(data[name]), UTC) if name in data else None

    return {
        "tick": moment("tick"),
        "job_id": data.get("job_id") or None,  # none when a unique job's lock kept the tick out
        "enqueued_at": moment("enqueued_at"),
        "manual_at": moment("manual_at"),
        "manual_job_id": data.get("manual_job_id") or None,
    }


def describe(count: int = 3, now: float | None = None, broker: Any = None) -> list[dict[str, Any]]:
    """Each entry with its next ``count`` run times (in its time zone), its last run, and its
    latest tick if no process enqueued it (``missed``).

    What ``manage.py jobs cron`` prints.
    """
    broker = broker or get_broker()
    moment = time.time() if now is None else now
    rows = []
    for entry in entries():
        job_class = registry.lookup(entry.job)
        queue = entry.queue or (job_class.queue_as if job_class and isinstance(job_class.queue_as, str) else None)
        last = last_run(entry.name, broker)
        rows.append({
            "name": entry.name,
            "cron": entry.cron,
            "class": entry.job,
            "queue": queue,
            "timezone": str(entry.timezone),
            "catch_up": entry.catch_up,
            "next_runs": entry.upcoming(moment, count),
            "last_run": last,
            "missed": _missed(entry, moment, last),
        })
    return rows


MISSED_GRACE = 60.0  # seconds a worker's clock may take to enqueue a tick before it counts as missed


def _missed(entry: Entry, moment: float, last: dict[str, Any] | None) -> datetime | None:
    """The entry's latest tick when no process enqueued it (none ran the clock then: every
    worker stopped or quiet; such ticks are skipped unless ``catch_up``), else None."""
    due = entry.latest_until(moment - MISSED_GRACE)
    recorded = last["tick"].timestamp() if last and last["tick"] else None
    if recorded is not None and recorded >= due:
        return None
    return datetime.fromtimestamp(due, UTC)


def _last_outcome(last: dict[str, Any]) -> str:
    return f"job {last['job_id']}" if last["job_id"] else "skipped: its unique job was still pending"


def _last_line(last: dict[str, Any] | None) -> str:
    parts = []
    if last and last["tick"]:
        parts.append(f"{last['tick'].isoformat()} ({_last_outcome(last)})")
    if last and last["manual_at"]:
        parts.append(f"run now at {last['manual_at'].isoformat()} (job {last['manual_job_id']})")
    return "; ".join(parts) or "never"


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    """Plain-text lines for a terminal: one block per entry."""
    if not rows:
        return ["No recurring jobs: ASYNC_JOBS['RECURRING'] is empty."]
    lines = []
    for row in rows:
        last = row["last_run"]
        lines.append(f"{row['name']}: {row['class']} on {row['queue'] or '?'}  cron '{row['cron']}' ({row['timezone']})")
        lines.append("  next: " + ", ".join(moment.isoformat() for moment in row["next_runs"]))
        lines.append(
            "  last: " + _last_line(last)
            + ("  catch_up=last" if row["catch_up"] else "")
        )
    return lines
