"""The ``ASYNC_JOBS`` setting: defaults, normalisation, one cached object.

Reading Django settings on every enqueue or fetch would put a dict lookup chain on the hot
path; instead the worker and client read this object, which is rebuilt only when a test
changes the setting (``setting_changed``).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed

DEFAULTS: dict[str, Any] = {
    "REDIS_URL": "redis://localhost:6379/0",
    "CACHE_ALIAS": None,
    "QUEUES": ["default"],
    "CONCURRENCY": 10,
    # Jobs a process holds beyond its running ones, so a thread that frees up finds its next
    # job waiting; None means as many as CONCURRENCY. 0 for workers of long jobs.
    "PREFETCH": None,
    "SHUTDOWN_TIMEOUT": 25,
    "HEARTBEAT_TIMEOUT": 60,
    "HEARTBEAT_INTERVAL": None,
    "MAX_RECOVERIES": 3,
    "KEY_PREFIX": "async_jobs",
    "POLL_INTERVAL": 0.5,
    "TAGGED_ARGUMENTS": False,
    "MODE": "redis",
    "LOG_JOBS": True,
    # "json": each job's log line is one JSON object (and runworker's own handler writes JSON).
    "LOG_FORMAT": "text",
    # The largest payload an enqueue accepts, in bytes (None: no limit); every job sits in
    # Redis's memory until it runs, and every process that reads it decodes all of it.
    "MAX_PAYLOAD_BYTES": 1024 * 1024,
    # Argument values (and what is built from them: lock args, idempotency keys) in exception
    # messages and log lines; off, they show as <hidden>. A debugging aid: they may be personal data.
    "LOG_ARGUMENTS": False,
    "ENQUEUE_AFTER_COMMIT": True,
    "RESULT_TTL": 86400,
    # Seconds a finished batch (batches.py) stays in Redis for Batch.status and the listings.
    "BATCH_RETENTION": 86400,
    "ASYNC_CONCURRENCY": 100,
    # Job progress rows are written every N items or T seconds, whichever comes first.
    "PROGRESS_EVERY": 100,
    "PROGRESS_SECONDS": 2.0,
    # A resumable job saves its progress where a crash's recovery finds it at most this often
    # (seconds); the progress also goes back whole whenever the job is interrupted.
    "CHECKPOINT_INTERVAL": 5.0,
    # Job middleware (docs/middleware.md), outermost first, inside the worker's own layers and
    # outside the built-in ones; and the contextvars CurrentContext carries into jobs.
    "MIDDLEWARE": ["django_async_jobs.middleware.CurrentContext"],
    "CONTEXT": [],
    # The transactional outbox (outbox.py): a job enqueued in a transaction is a row of that
    # transaction, relayed to Redis by the workers; they poll the databases listed here for
    # rows every OUTBOX_POLL_INTERVAL seconds (PostgreSQL wakes them at each commit instead).
    "OUTBOX": False,
    "OUTBOX_POLL_INTERVAL": 1.0,
    "OUTBOX_DATABASES": ["default"],
    # Per-class metrics (metrics.py): how long each minute is kept; None turns them off.
    "METRICS_RETENTION": 72 * 3600,
    # A bearer token that lets a scraper read views.prometheus_metrics without a staff session.
    "PROMETHEUS_TOKEN": None,
    # In a Redis Cluster: how many key spaces (hash tags) the jobs are spread over, each in a
    # slot of its own, so that several masters share the work. 1 on a single server.
    "CLUSTER_PARTITIONS": 1,
}


# Queue names go into Redis keys, URLs, log lines and shell commands: a small alphabet keeps
# every one of them unambiguous (no ':' splitting a key, no '/' breaking a URL, no glob).
QUEUE_NAME_RULE = "1 to 100 characters, each an ASCII letter, a digit, '_', '-' or '.'"
_QUEUE_NAME = re.compile(r"[\w.-]{1,100}", re.ASCII)


def valid_queue_name(name: Any) -> bool:
    return isinstance(name, str) and _QUEUE_NAME.fullmatch(name) is not None


def validate_queue_name(name: Any, what: str) -> str:
    """``name`` if it follows the rule; else ``TypeError`` (not a str) or ``ValueError``, naming
    ``what`` (the argument or setting it came from) and the rule."""
    if valid_queue_name(name):
        return name
    shown = repr(name)
    if len(shown) > 120:
        shown = shown[:117] + "..."
    error = ValueError if isinstance(name, str) else TypeError
    raise error(f"{what} = {shown} is not a valid queue name: use {QUEUE_NAME_RULE}.")


# Keys read by features with their own pages (retries, dead jobs, recurring jobs, ...): known to
# the unknown-key check even though their defaults live with those features.
LATER_KEYS = {
    "MAX_RETRIES", "DEAD_JOB_RETENTION", "DEATH_HANDLERS", "ERROR_HANDLERS", "RECURRING",
}


@dataclass(frozen=True)
class QueueSpec:
    """The configured queues and how a worker orders them when it fetches."""

    names: tuple[str, ...]
    weights: tuple[int, ...]
    strict: bool


@dataclass(frozen=True)
class Settings:
    redis_url: str
    cache_alias: str | None
    queues: QueueSpec
    concurrency: int
    prefetch: int | None
    shutdown_timeout: float
    heartbeat_timeout: float
    heartbeat_interval: float
    max_recoveries: int
    key_prefix: str
    poll_interval: float
    tagged_arguments: bool
    mode: str
    log_jobs: bool
    log_format: str
    log_arguments: bool
    max_payload_bytes: int | None
    enqueue_after_commit: bool
    result_ttl: float
    async_concurrency: int
    outbox: bool
    outbox_poll_interval: float
    outbox_databases: tuple[str, ...]
    metrics_retention: float | None
    cluster_partitions: int
    raw: dict[str, Any] = field(repr=False, compare=False)


def _seconds(value: Any) -> float:
    if isinstance(value, timedelta):
        return value.total_seconds()
    return float(value)


# The longest wait: a job (or a retry) runs at most 100 years ahead. Longer is a unit mistake
# (milliseconds for seconds, a year 9999), and Redis refuses a unique job's lock TTL that long.
MAX_WAIT = 100 * 365.25 * 86400
MAX_WAIT_TEXT = f"100 years ({MAX_WAIT:.0f} seconds)"


def wait_seconds(value: Any, what: str, *, past: bool = False) -> float:
    """A wait given as seconds or a timedelta, in seconds, at most ``MAX_WAIT`` and at least 0
    (or, with ``past``, any finite number: a wait of 0 or less is due at once).

    ``TypeError`` for another type, ``ValueError`` out of range, both naming ``what``.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = value  # compared before float(): float(10**400) overflows
    else:
        raise TypeError(f"{what} must be a number of seconds or a timedelta, got {value!r}.")
    if not (-math.inf < seconds <= MAX_WAIT if past else 0 <= seconds <= MAX_WAIT):
        least = "a finite number of seconds" if past else "from 0 seconds"
        raise ValueError(f"{what} must be {least} up to {MAX_WAIT_TEXT}, got {value!r}.")
    return float(seconds)


def parse_queues(value: Any) -> QueueSpec:
    """``["a", "b"]`` is strict order; ``[("a", 3), ("b", 1)]`` is weighted.

    Raises ``ValueError`` with a message the system check shows as is.
    """
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value:
        raise ValueError(
            'QUEUES must be a non-empty list of names (strict order) or of (name, weight) '
            'pairs, e.g. [("critical", 6), ("default", 5)].'
        )
    names: list[str] = []
    weights: list[int] = []
    weighted = [not isinstance(item, str) for item in value]
    if any(weighted) and not all(weighted):
        raise ValueError("QUEUES mixes plain names and (name, weight) pairs; use one form.")
    for item in value:
        if isinstance(item, str):
            name, weight = item, 1
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            name, weight = item
        else:
            raise ValueError(f"QUEUES entry {item!r} is neither a name nor a (name, weight) pair.")
        validate_queue_name(name, "QUEUES name")
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 1:
            raise ValueError(f"QUEUES weight for {name!r} must be a positive integer, got {weight!r}.")
        if name in names:
            raise ValueError(f"QUEUES lists {name!r} twice.")
        names.append(name)
        weights.append(weight)
    return QueueSpec(tuple(names), tuple(weights), strict=not any(weighted))


def build(raw: dict[str, Any]) -> Settings:
    merged = {**DEFAULTS, **raw}
    heartbeat_timeout = _seconds(merged["HEARTBEAT_TIMEOUT"])
    interval = merged["HEARTBEAT_INTERVAL"]
    return Settings(
        redis_url=merged["REDIS_URL"],
        cache_alias=merged["CACHE_ALIAS"],
        queues=parse_queues(merged["QUEUES"]),
        concurrency=int(merged["CONCURRENCY"]),
        prefetch=None if merged["PREFETCH"] is None else int(merged["PREFETCH"]),
        shutdown_timeout=_seconds(merged["SHUTDOWN_TIMEOUT"]),
        heartbeat_timeout=heartbeat_timeout,
        # Several beats fit in one timeout, so one slow beat never looks like a death.
        heartbeat_interval=_seconds(interval) if interval else max(0.2, min(5.0, heartbeat_timeout / 6)),
        max_recoveries=int(merged["MAX_RECOVERIES"]),
        key_prefix=merged["KEY_PREFIX"],
        poll_interval=_seconds(merged["POLL_INTERVAL"]),
        tagged_arguments=bool(merged["TAGGED_ARGUMENTS"]),
        mode=merged["MODE"],
        log_jobs=bool(merged["LOG_JOBS"]),
        log_format=merged["LOG_FORMAT"],
        log_arguments=bool(merged["LOG_ARGUMENTS"]),
        max_payload_bytes=merged["MAX_PAYLOAD_BYTES"],
        enqueue_after_commit=bool(merged["ENQUEUE_AFTER_COMMIT"]),
        result_ttl=_seconds(merged["RESULT_TTL"]),
        async_concurrency=int(merged["ASYNC_CONCURRENCY"]),
        outbox=bool(merged["OUTBOX"]),
        outbox_poll_interval=_seconds(merged["OUTBOX_POLL_INTERVAL"]),
        outbox_databases=tuple(merged["OUTBOX_DATABASES"]),
        metrics_retention=None if merged["METRICS_RETENTION"] is None else _seconds(merged["METRICS_RETENTION"]),
        cluster_partitions=int(merged["CLUSTER_PARTITIONS"]),
        raw=merged,
    )


HIDDEN = "<hidden>"


def argument_repr(value: Any) -> str:
    """How a job argument, or a value built from arguments, appears in an exception message or
    a log line: its ``repr`` only with ``LOG_ARGUMENTS``; arguments may be card numbers or
    e-mail addresses, and messages end up in logs, error pages and error trackers."""
    return repr(value) if get_settings().log_arguments else HIDDEN


_QUERY_PASSWORD = re.compile(r"([?&](?:sentinel_)?password=)[^&#]*", re.IGNORECASE)


def redact_url(url: str) -> str:
    """``url`` with its password, and any ``password=`` or ``sentinel_password=`` in its query,
    replaced by ``***``: for every URL the library prints. Plain string work, so malformed URLs
    (``redis://:pw@/0``, a password with an unescaped ``/``, ``?`` or ``@``) are masked too:
    everything up to the last ``@`` is credentials, of which only a plain user name is kept."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        user, colon, _ = userinfo.partition(":")
        # A single field (no ':') is sometimes a password: hidden too.
        keep = colon and not any(c in user for c in "/?#")
        rest = f"{user}:***@{rest}" if keep else f"***@{rest}"
    return scheme + sep + _QUERY_PASSWORD.sub(r"\1***", rest)


_cached: Settings | None = None


def get_settings() -> Settings:
    global _cached
    if _cached is None:
        _cached = build(getattr(django_settings, "ASYNC_JOBS", {}) or {})
    return _cached


def _reset(*, setting: str, **kwargs: Any) -> None:
    global _cached
    if setting == "ASYNC_JOBS":
        _cached = None


setting_changed.connect(_reset)
