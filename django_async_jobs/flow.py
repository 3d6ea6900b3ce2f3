"""Flow control: concurrency limits (Solid Queue's ``limits_concurrency``), shared rate limits
(Sidekiq Enterprise's limiters) and expiring jobs (Sidekiq Pro's ``expires_in``).

Concurrency limits: at most ``to`` jobs of a class with one key run at once, across every
process and host. The limit's id travels in the payload (``cc``, stamped at enqueue with its
keys, size and duration). A worker takes a place just before the job starts (one Lua step); a
job that finds the limit full is blocked (the settle step puts it in the limit's blocked list)
or, with ``on_conflict="discard"``, dropped. The settle step that ends a limited job frees its
place and moves the next blocked job to its queue, with that place kept for it: no polling,
no Redis call of its own. A place counts while its process is registered and its ``duration``
is not up, so a worker killed with -9 frees its places when it is taken for dead (its heartbeat
expired), and a graceful stop when it stops. Places freed that way, with no job finishing, are
found by a sweep every heartbeat over the limits with blocked jobs (``p:blocked``).

Rate limits: ``RateLimit.window / bucket / leaky / concurrent`` count calls across every process
and host in Redis, one Lua step per call (``rate_limit.lua``). Over the limit, ``within_limit()``
raises ``OverLimit``, a ``retries.Reschedule``: the worker puts the job back for later, with a
backoff from the limiter's own wait and jitter that grows with the times it was limited. That
is not a failure (no retry used, no error handler) until the job has waited ``max_limited`` in
all; then ``OverLimit`` is the job's failure, for its retry rules.

Expiry: a job not started by its deadline is dropped when a worker fetches it. The deadline is
fixed at enqueue, ``expires_in`` after the enqueue (after the run-at of a scheduled job), and
travels in the payload (``expires_at``), so a retry or a reschedule of the job keeps it. Only
classes that declare ``expires_in`` (``None`` included: no default, ``set(expires_in=...)``
per enqueue) get the layer: a worker pays nothing for the jobs of other classes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import redis
from django.core.exceptions import ImproperlyConfigured

from django_async_jobs import registry, retries, signals
from django_async_jobs.broker.client import get_broker
from django_async_jobs.conf import (
    QUEUE_NAME_RULE,
    argument_repr,
    get_settings,
    valid_queue_name,
    wait_seconds,
)

if TYPE_CHECKING:
    from django_async_jobs.job import ApplicationJob

logger = logging.getLogger("django_async_jobs.job")

EXPIRED = "expired"

DEFAULT_MAX_LIMITED = timedelta(days=1)
# The jitter of a limited job's wait spans this many seconds at most (times the square root of
# the times it was limited): the limiter's period, or a second for a concurrent limiter.
MAX_SPREAD = 300.0
CONCURRENT_SPREAD = 1.0
CONCURRENT_POLL = 0.1  # seconds between tries of a concurrent limiter within wait_timeout


def expiry_seconds(value: Any, what: str) -> float:
    """``expires_in`` as seconds: a positive number of seconds or a timedelta."""
    seconds = wait_seconds(value, what)
    if seconds <= 0:
        raise ValueError(f"{what} must be more than 0 seconds, got {value!r}.")
    return seconds


def compile_class(job_class: type, base: type) -> None:
    """Check a class's flow-control options when it is defined, and keep them in seconds;
    ``base`` is ``ApplicationJob``, whose defaults do not count as declared."""
    name = job_class.__qualname__
    value = job_class.expires_in
    try:
        job_class._expires_in = None if value is None else expiry_seconds(value, f"{name}.expires_in")
        limited = job_class.max_limited
        job_class._max_limited = None if limited is None else wait_seconds(limited, f"{name}.max_limited")
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(str(exc)) from None
    limit = job_class.limits_concurrency
    if limit is not None and not isinstance(limit, ConcurrencyLimit):
        raise ImproperlyConfigured(
            f"{name}.limits_concurrency = {limit!r}; write limits_concurrency = limit_concurrency(to=..., key=...)."
        )
    # Declared on the class or a base of its own, ``None`` included: the class takes part.
    job_class._expiring = any("expires_in" in vars(klass) for klass in job_class.__mro__ if klass is not base)


def enqueue_expiry(job_class: type, value: Any) -> float:
    """``set(expires_in=...)``'s value in seconds, for a class whose workers check expiry."""
    seconds = expiry_seconds(value, "expires_in")
    if not job_class._expiring:
        raise TypeError(
            f"{job_class.__qualname__}.set(expires_in=...): the class declares no expires_in, so its "
            f"workers do not check expiry; declare one on the class (expires_in = None: none by default)."
        )
    return seconds


class Expiry:
    """At enqueue: the deadline into the payload. In the worker, outermost but for the log line:
    past the deadline, the job ends as ``expired`` without starting (no ``job_started``)."""

    def applies_to(self, job_class: type) -> bool:
        return bool(getattr(job_class, "_expiring", False))

    def enqueue(self, job: ApplicationJob, call_next: Callable[[Any], Any]) -> Any:
        seconds = job._expires_in
        if seconds is not None and "expires_at" not in job.payload:  # a job enqueued again keeps its own
            start = job.scheduled_at if job.scheduled_at is not None else time.time()
            job.payload["expires_at"] = round(start + seconds, 3)
        return call_next(job)

    def perform(self, job: ApplicationJob, call_next: Callable[[Any], Any]) -> Any:
        if not _expired(job):
            return call_next(job)
        job.outcome = _expired_outcome(job)
        return None

    async def aperform(self, job: ApplicationJob, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        if not _expired(job):
            return await call_next(job)
        job.outcome = _expired_outcome(job)
        return None


def _expired_outcome(job: ApplicationJob) -> retries.Outcome:
    """A job of a concurrency limit may have a place kept for it (moved from the blocked list):
    the settle step frees it."""
    place = _place(job) if getattr(type(job), "limits_concurrency", None) is not None else None
    return retries.Outcome(EXPIRED, keys=(place.holders, place.blocked) if place else ())


def _expired(job: ApplicationJob) -> bool:
    deadline = job.payload.get("expires_at")
    # Anything but a finite number is not what an enqueue wrote: ignored, the job runs.
    if type(deadline) not in (int, float) or not math.isfinite(deadline) or time.time() < deadline:
        return False
    when = datetime.fromtimestamp(deadline, UTC).isoformat(timespec="seconds") if deadline > 0 else deadline
    logger.info("expired %s %s queue=%s: not started by %s", job.job_name, job.job_id, job.queue_name, when)
    signals.send(signals.job_expired, type(job), job=job)
    return True


# -- rate limits -------------------------------------------------------------------------------


class RateLimit:
    """A limit shared by every process and host through Redis. Build one per limit (cheap: no
    Redis call), at module level or per call for a dynamic name (``f"stripe-{account_id}"``),
    and wrap the limited call in ``with limiter.within_limit():``.

    ``wait_timeout`` (default 0): how long ``within_limit()`` may wait in the job's thread for
    the limit before it raises ``OverLimit``; it waits only when the limiter says it will allow a
    call within that time (a concurrent limiter cannot say: it tries again every 0.1 s).
    """

    KINDS = ("window", "bucket", "leaky", "concurrent")

    def __init__(self, kind: str, name: str, count: int, period: Any, wait_timeout: Any = 0) -> None:
        if kind not in self.KINDS:
            raise ValueError(f"RateLimit kind {kind!r}: use one of {', '.join(self.KINDS)}.")
        where = f"RateLimit.{kind}({name!r}, ...)"
        if not valid_queue_name(name):
            raise ValueError(f"{where}: the name must be {QUEUE_NAME_RULE}.")
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise TypeError(f"{where}: the count must be a positive integer, got {count!r}.")
        what = "lock_timeout" if kind == "concurrent" else "per"
        seconds = wait_seconds(period, f"{where}: {what}")
        if seconds < 0.001:
            raise ValueError(f"{where}: {what} must be at least a millisecond, got {period!r}.")
        self.kind = kind
        self.name = name
        self.count = count
        self.period = seconds
        self.wait_timeout = wait_seconds(wait_timeout, f"{where}: wait_timeout")
        self._period_ms = round(seconds * 1000)

    @classmethod
    def window(cls, name: str, n: int, per: float | timedelta = 1.0, *, wait_timeout: float | timedelta = 0) -> RateLimit:
        """``n`` calls per window of ``per``, windows aligned to the clock (``per`` of a second:
        each wall-clock second; of a minute: each minute)."""
        return cls("window", name, n, per, wait_timeout)

    @classmethod
    def bucket(cls, name: str, n: int, per: float | timedelta = 1.0, *, wait_timeout: float | timedelta = 0) -> RateLimit:
        """A bucket of ``n`` calls, refilled continuously at ``n`` per ``per``: a burst of up to
        ``n`` after a quiet time, ``n`` per ``per`` on average."""
        return cls("bucket", name, n, per, wait_timeout)

    @classmethod
    def leaky(cls, name: str, n: int, per: float | timedelta = 1.0, *, wait_timeout: float | timedelta = 0) -> RateLimit:
        """``n`` calls per ``per`` at a smooth rate: one every ``per / n``, no burst."""
        return cls("leaky", name, n, per, wait_timeout)

    @classmethod
    def concurrent(
        cls, name: str, n: int, *, lock_timeout: float | timedelta = 30.0, wait_timeout: float | timedelta = 0
    ) -> RateLimit:
        """``n`` calls in progress at once. A call that has not ended ``lock_timeout`` after it
        began (its process died, say) no longer counts: keep calls shorter than that."""
        return cls("concurrent", name, n, lock_timeout, wait_timeout)

    def __repr__(self) -> str:
        what = "lock_timeout" if self.kind == "concurrent" else "per"
        return f"RateLimit.{self.kind}({self.name!r}, {self.count}, {what}={self.period:g}s)"

    @property
    def key(self) -> str:
        return get_broker().keys.limiter(self.kind, self.name)

    @contextmanager
    def within_limit(self) -> Iterator[None]:
        """Run the block if the limit allows it now (or within ``wait_timeout``); else raise
        ``OverLimit``, which a worker turns into a wait for later. In the test modes (``MODE``
        "test" or "inline") nothing is limited."""
        if get_settings().mode != "redis":
            yield
            return
        token = self._take()
        try:
            yield
        finally:
            if token:
                get_broker().rate_unlock(self.key, token)

    def _take(self) -> str:
        """One call counted (a concurrent limiter's lock token, else ""), or ``OverLimit``."""
        broker = get_broker()
        key = self.key
        token = secrets.token_hex(8) if self.kind == "concurrent" else ""
        deadline = time.monotonic() + self.wait_timeout
        while True:
            allowed, wait_ms = broker.rate_limit(key, self.kind, self.count, self._period_ms, token)
            if allowed:
                return token
            wait = wait_ms / 1000
            left = deadline - time.monotonic()
            pause = min(CONCURRENT_POLL, left) if self.kind == "concurrent" else wait
            if left <= 0 or pause > left:
                raise OverLimit(self, 0.0 if self.kind == "concurrent" else wait)
            time.sleep(pause)

    @property
    def spread(self) -> float:
        """The span of a limited job's jitter, before it grows with the times it was limited."""
        return CONCURRENT_SPREAD if self.kind == "concurrent" else min(self.period, MAX_SPREAD)


class OverLimit(retries.Reschedule):  # noqa: N818  (Sidekiq's name)
    """Raised by ``within_limit()`` over the limit. In a worker the job goes back for later (see
    the module docstring); anywhere else it is an exception like any other."""

    outcome = "limited"

    def __init__(self, limiter: RateLimit, wait: float) -> None:
        super().__init__(wait, message=f"over the limit of {limiter!r}; it may allow a call in {wait:.3f}s")
        self.limiter = limiter
        self.wait = wait

    def prepare(self, job: ApplicationJob) -> BaseException | None:
        """The wait before the job runs again: the limiter's own wait, plus jitter over its
        period that grows with the square root of the times the job was limited, so a crowd of
        limited jobs spreads out instead of coming back at once. None past ``max_limited``: the
        job has waited long enough, and this is its failure."""
        now = time.time()
        times, since = _limited(job.payload.get("limited"), now)
        ceiling = type(job)._max_limited
        if ceiling is not None and now - since >= ceiling:
            return self
        times += 1
        self.delay = self.wait + random.uniform(0, self.limiter.spread * math.sqrt(times))
        self.changes = {"limited": {"times": times, "since": round(since, 3)}}
        return None


def _limited(value: Any, now: float) -> tuple[int, float]:
    """(times limited, since when) from a payload's ``limited``; anything else starts afresh. A
    time ahead of this host's clock is taken up to an hour ahead (another host's clock)."""
    if type(value) is dict:
        times, since = value.get("times"), value.get("since")
        if type(times) is int and times >= 0 and type(since) in (int, float) and since <= now + 3600:
            return times, since
    return 0, now


# -- concurrency limits ------------------------------------------------------------------------

CONFLICTS = ("block", "discard")
UNLIMITED = 2**31
DEFAULT_DURATION = timedelta(minutes=3)
BLOCKED = "blocked"


@dataclass(frozen=True)
class ConcurrencyLimit:
    """What ``limit_concurrency(...)`` returns: a job class's ``limits_concurrency``."""

    to: int
    key: Callable[[Any], Any] | None
    duration: float  # seconds
    on_conflict: str

    @property
    def ttl_ms(self) -> int:
        return max(1000, round(self.duration * 1000))


def limit_concurrency(
    to: int = 1,
    key: Callable[[Any], Any] | None = None,
    duration: float | timedelta = DEFAULT_DURATION,
    on_conflict: str = "block",
) -> ConcurrencyLimit:
    """At most ``to`` jobs of the class with the same ``key(job)`` run at once, across every
    process and host (Solid Queue's ``limits_concurrency``). ``key`` takes the job and returns
    a JSON-like value (``lambda job: job.arguments[0]``); None: one limit for the whole class.
    ``duration``: the longest a job may hold its place (its longest run, with room to spare);
    ``on_conflict``: "block" holds a job back until a place frees, "discard" drops it."""
    if isinstance(to, bool) or not isinstance(to, int) or to < 1:
        raise TypeError(f"limit_concurrency(to=) must be a positive integer, got {to!r}.")
    if key is not None and not callable(key):
        raise TypeError(f"limit_concurrency(key=) must be a callable of the job (or None), got {key!r}.")
    seconds = wait_seconds(duration, "limit_concurrency(duration=)")
    if seconds < 1:
        raise ValueError(f"limit_concurrency(duration=) must be at least a second, got {duration!r}.")
    if on_conflict not in CONFLICTS:
        raise ValueError(f"limit_concurrency(on_conflict=) must be one of {', '.join(map(repr, CONFLICTS))}, got {on_conflict!r}.")
    return ConcurrencyLimit(to, key, seconds, on_conflict)


def limit_id(job: ApplicationJob, limit: ConcurrencyLimit) -> str:
    """``<job name>:<SHA-1 of the key's JSON>``: one limit per class and key."""
    value = limit.key(job) if limit.key is not None else None
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"{type(job).__name__}.limits_concurrency: key(job) must return a JSON-like value, got "
            f"{argument_repr(value)}: {exc}"
        ) from None
    return f"{job.job_name}:{hashlib.sha1(text.encode()).hexdigest()}"


@dataclass(frozen=True)
class _Place:
    """A payload's ``cc``, checked: the limit's id and keys (of this prefix), size and duration."""

    id: str
    holders: str
    blocked: str
    to: int
    ttl_ms: int


def _place(job: ApplicationJob) -> _Place | None:
    """The limit a payload names, if it is well formed and this prefix's: a payload written by
    hand must not make a worker touch any other key."""
    cc = job.payload.get("cc")
    if type(cc) is not dict:
        return None
    ident, to, ttl = cc.get("id"), cc.get("to"), cc.get("ttl")
    if type(ident) is not str or type(to) is not int or to < 1 or type(ttl) is not int or ttl < 1000:
        return None
    keys = get_broker().keys
    holders, blocked = keys.concurrency(ident), keys.concurrency_blocked(ident)
    if cc.get("h") != holders or cc.get("b") != blocked:
        return None
    return _Place(ident, holders, blocked, to, ttl)


class ConcurrencyLimits:
    """At enqueue: the limit into the payload. In the worker, just inside the expiry check: take a
    place, or end the job as blocked (or discarded) without starting it; a job that ran hands the
    settle step its limit's keys, and the step frees its place."""

    def applies_to(self, job_class: type) -> bool:
        return getattr(job_class, "limits_concurrency", None) is not None

    def enqueue(self, job: ApplicationJob, call_next: Callable[[Any], Any]) -> Any:
        limit = type(job).limits_concurrency
        ident = limit_id(job, limit)
        keys = get_broker().keys
        job.payload["cc"] = {
            "id": ident, "h": keys.concurrency(ident), "b": keys.concurrency_blocked(ident),
            "to": limit.to, "ttl": limit.ttl_ms,
        }
        return call_next(job)

    def perform(self, job: ApplicationJob, call_next: Callable[[Any], Any]) -> Any:
        place = _place(job)
        if place is None:  # enqueued before the class had its limit, or not a payload of ours
            return call_next(job)
        broker = get_broker()
        limited_keys = (place.holders, place.blocked)
        try:
            taken = broker.concurrency_acquire(
                place.id, job.fetched_as, job.job_id, _worker.get("process_id", "-"), place.to, place.ttl_ms
            )
        except redis.RedisError as exc:
            # The settle step looks again, atomically: a free place sends the job back to its queue.
            logger.warning("%s %s could not take a place of its concurrency limit (%s); blocked", job.job_name, job.job_id, exc)
            job.outcome = retries.Outcome(BLOCKED, keys=limited_keys)
            return None
        if not taken:
            if type(job).limits_concurrency.on_conflict == "discard":
                logger.info(
                    "discarded %s %s queue=%s: %d already running with its concurrency key (limit %s)",
                    job.job_name, job.job_id, job.queue_name, place.to, place.id,
                )
                job.outcome = DISCARDED
                return None
            job.outcome = retries.Outcome(BLOCKED, keys=limited_keys)
            return None
        result = call_next(job)
        job.outcome = replace(job.outcome, keys=limited_keys)  # the settle step frees the place
        return result


DISCARDED = retries.Outcome("discarded")

# The worker process of this OS process (one per process; ``worker/launcher.py`` says which):
# a place is kept while that process is registered. Outside a worker, only ``duration`` ends it.
_worker: dict[str, str] = {}


def running_in(process_id: str) -> None:
    """Called by a worker when it starts: the places its jobs take are its own."""
    _worker["process_id"] = process_id


def limited_classes() -> list[type]:
    return [cls for cls in registry.all_jobs().values() if getattr(cls, "limits_concurrency", None) is not None]


def sweep_blocked(broker: Any, again: float) -> int:
    """Move blocked jobs to their queues where places were freed without a job finishing (their
    process taken for dead or stopped, their duration up); each limit with blocked jobs is looked
    at every ``again`` seconds by some worker. Returns how many moved."""
    moved = 0
    for ident in broker.due_blocked():
        job_class = registry.lookup(ident.rpartition(":")[0])
        limit = getattr(job_class, "limits_concurrency", None)
        # A class that lost its limit (or is gone) holds nothing back any more: all go.
        to = limit.to if limit is not None else UNLIMITED
        moved += broker.concurrency_sweep(ident, to, round(again * 1000))
    return moved
