"""Read and manage the job system's state: the one module the dashboard and ``jobs`` share.

Like Sidekiq's ``api.rb``: every number and listing an operator sees comes from here, so the
web pages and the command always agree. Reads are pipelined (one round trip per page) and never
load a whole queue; writes go through the broker's atomic steps.

Jobs in a sorted set (a queue, the schedule, the retry set) are named by a *ref*,
``"<score>|<job id>"``: the score finds the job in O(log N), the id tells it apart from another
job with the same score, and no payload travels through a form.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import json
import math
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from django_async_jobs import batches as batch_state
from django_async_jobs import cron, outbox, registry, resumable, signals
from django_async_jobs import metrics as job_metrics
from django_async_jobs.broker.client import Broker, get_broker
from django_async_jobs.broker.keys import escape_glob
from django_async_jobs.conf import get_settings, validate_queue_name
from django_async_jobs.models import DeadJob

SETS = ("scheduled", "retries")
MAX_PER_PAGE = 200
# Far past any set's last page, and small enough that the offset stays a 64-bit integer for
# Redis: a larger page number (from a URL, say) is clamped to the last page, not an error.
MAX_PAGE = 10**15
# With partitions, how deep a page reaches into a list (each partition's first members, merged).
MERGED_DEPTH = 10_000
HISTORY_DAYS = 30


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _printable(text: str) -> str:
    """``text`` as a page or a terminal can write it: a lone surrogate (invalid UTF-8 read with
    ``surrogateescape``, or a ``"\\ud800"`` escape in a payload) becomes "?"."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode()
    return text


def _string(value: Any) -> str:
    """A payload field shown as text: only a string is; anything else is shown as nothing."""
    return _printable(value) if isinstance(value, str) else ""


def _json_text(value: Any) -> str | None:
    """``value`` as one line of JSON in UTF-8, or None when it cannot be written so (nested
    deeper than the encoder goes, a lone surrogate, an integer too long to print)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
        text.encode()
    except (ValueError, RecursionError):
        return None
    return text


# A job id as the Lua steps take it (fetch.lua, pick.lua): from the payload's head, else from
# the decoded payload; other ids, and payloads without one, go by the SHA-1 of their bytes.
_JOB_ID = re.compile(r"[\w\-.:]+", re.ASCII)
_HEAD_ID = re.compile(r'\{"jid":"([\w\-.:]+)"', re.ASCII)


def _number(value: Any, default: float = 0.0) -> float:
    try:
        number = float(_text(value))
    except (TypeError, ValueError):
        return default
    return number if math.isfinite(number) else default


# -- jobs in sorted sets ------------------------------------------------------------------------


@dataclass(frozen=True)
class JobEntry:
    """One job as stored in Redis, with what the pages show of it."""

    ref: str
    score: float
    raw: str
    data: dict[str, Any] | None  # None: the payload is not a JSON object

    @property
    def job_id(self) -> str:
        return self.ref.partition("|")[2]

    @property
    def job_class(self) -> str:
        return _string((self.data or {}).get("job"))

    @property
    def queue(self) -> str:
        return _string((self.data or {}).get("queue"))

    @property
    def args(self) -> list[Any] | None:
        args = (self.data or {}).get("args")
        return args if isinstance(args, list) else None

    @property
    def kwargs(self) -> dict[str, Any]:
        kwargs = (self.data or {}).get("kwargs")
        return kwargs if isinstance(kwargs, dict) else {}

    @property
    def arguments(self) -> str:
        """Arguments as one short line of JSON, for a table cell ("…" for one that cannot be shown)."""
        parts = [_json_text(a) or "…" for a in (self.args or [])]
        parts += [f"{_printable(k)}={_json_text(v) or '…'}" for k, v in self.kwargs.items()]
        line = ", ".join(parts)
        return line if len(line) <= 120 else line[:119] + "…"

    @property
    def enqueued_at(self) -> datetime | None:
        return _moment((self.data or {}).get("enqueued_at"))

    @property
    def at(self) -> datetime | None:
        """When a scheduled or retry job runs (its score)."""
        return _moment(self.score)

    @property
    def retry_count(self) -> int:
        data = self.data or {}
        counters = data.get("retries")
        if isinstance(counters, dict) and counters:
            return sum(v for v in counters.values() if isinstance(v, int))
        count = data.get("retry_count")
        return count if isinstance(count, int) else 0

    @property
    def batch_id(self) -> str | None:
        """The batch the job is a member of (``Batch``), for a link to it; None outside one."""
        return batch_of(self.data)

    @property
    def error(self) -> str:
        data = self.data or {}
        return f"{_string(data.get('error_class'))}: {_string(data.get('error_message'))}".strip(": ")

    @property
    def traceback(self) -> str:
        """The last failure's traceback (a retry's payload keeps it), or ""."""
        return _string((self.data or {}).get("traceback"))

    def as_json(self) -> dict[str, Any]:
        """The entry as JSON-ready data; arguments JSON cannot carry back are left out (the
        payload then goes along as text)."""
        args, kwargs = self.args, self.kwargs
        readable = self.data is not None and _json_text([args, kwargs]) is not None
        return {
            "ref": self.ref, "job_id": self.job_id, "job": self.job_class, "queue": self.queue,
            "args": args if readable else None, "kwargs": kwargs if readable else {}, "score": self.score,
            "enqueued_at": _iso(self.enqueued_at), "error": self.error, "retry_count": self.retry_count,
            "payload": None if readable else self.raw, "batch_id": self.batch_id,
        }


def _moment(value: Any) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    try:
        return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def identity(raw: str) -> tuple[str, dict[str, Any] | None]:
    """(job id, decoded payload) — the same identity ``pick.lua`` computes for a member.

    ``raw`` is the member decoded with ``surrogateescape``, so its SHA-1 is that of the bytes.
    """
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        data = None
    if not isinstance(data, dict):
        data = None
    head = _HEAD_ID.match(raw)
    if head:
        return head[1], data
    jid = (data or {}).get("jid")
    if isinstance(jid, str) and _JOB_ID.fullmatch(jid):
        return jid, data
    return hashlib.sha1(raw.encode("utf-8", "surrogateescape")).hexdigest(), data


def entry(member: bytes | str, score: float) -> JobEntry:
    raw = member.decode("utf-8", "surrogateescape") if isinstance(member, bytes) else member
    jid, data = identity(raw)
    return JobEntry(ref=f"{score!r}|{jid}", score=score, raw=_printable(raw), data=data)


def parse_refs(refs: Iterable[str]) -> list[tuple[str, str]]:
    """(score, job id) pairs from refs; malformed refs are dropped, never sent to Redis."""
    picks = []
    for ref in refs:
        score, sep, jid = ref.partition("|")
        try:
            valid = bool(sep and jid) and math.isfinite(float(score))
        except ValueError:
            valid = False
        if valid:
            picks.append((score, jid))
    return picks


class Paging:
    """What a paginator needs from a page of ``total`` items, ``per_page`` a page."""

    total: int
    number: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.per_page))

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def has_next(self) -> bool:
        return self.number < self.pages


@dataclass(frozen=True)
class Page(Paging):
    """A slice of a sorted set: ``entries`` plus what a paginator needs."""

    entries: list[JobEntry]
    total: int
    number: int
    per_page: int

    @property
    def start_index(self) -> int:
        return (self.number - 1) * self.per_page + 1 if self.entries else 0

    @property
    def end_index(self) -> int:
        return (self.number - 1) * self.per_page + len(self.entries)


def page_of(key: str, number: int = 1, per_page: int = 25, broker: Broker | None = None) -> Page:
    """One page of a sorted set in score order: ZCARD + ZRANGE, whatever the set's size.

    With partitions (``CLUSTER_PARTITIONS``) the set is in each of them: the page is merged from
    each one's first members, so it reaches ``MERGED_DEPTH`` jobs deep at most."""
    broker = broker or get_broker()
    per_page = max(1, min(per_page, MAX_PER_PAGE))
    number = max(1, min(number, MAX_PAGE))
    keys = broker.twins(key)
    if len(keys) > 1:
        number = max(1, min(number, MERGED_DEPTH // per_page))
    start = (number - 1) * per_page
    with broker.redis.pipeline(transaction=False) as pipe:
        for each in keys:
            pipe.zcard(each)
        if len(keys) == 1:
            pipe.zrange(key, start, start + per_page - 1, withscores=True)
        else:
            for each in keys:
                pipe.zrange(each, 0, start + per_page - 1, withscores=True)
        replies = pipe.execute()
    total = sum(replies[: len(keys)])
    members = replies[-1]
    if len(keys) > 1:  # Redis's own order: score, then member
        merged = heapq.merge(*replies[len(keys) :], key=lambda pair: (pair[1], pair[0]))
        members = list(itertools.islice(merged, start, start + per_page))
    pages = max(1, math.ceil(total / per_page))
    if number > pages:  # past the end (the set shrank): show the last page instead
        return page_of(key, pages, per_page, broker) if total else Page([], 0, 1, per_page)
    return Page([entry(m, s) for m, s in members], total, number, per_page)


def set_key(kind: str, broker: Broker | None = None) -> str:
    """The key of ``scheduled`` or ``retries``."""
    keys = (broker or get_broker()).keys
    if kind == "scheduled":
        return keys.schedule
    if kind == "retries":
        return keys.retry
    raise ValueError(f"unknown set {kind!r}; expected one of {', '.join(SETS)}")


def act(key: str, op: str, refs: Iterable[str], broker: Broker | None = None) -> int:
    """Delete, run now (``enqueue``), ``kill`` or ``cancel`` (``cancel_refs``) the jobs ``refs``
    name in the set ``key``."""
    if op == "cancel":
        return cancel_refs(key, refs, broker)
    picks = parse_refs(refs)
    if not picks:
        return 0
    broker = broker or get_broker()
    return sum(broker.pick(each, op, picks) for each in broker.twins(key))  # each job is in one


def find_ref(key: str, ref: str, broker: Broker | None = None) -> JobEntry | None:
    """The job ``ref`` names in the sorted set ``key``, or None when it is gone: one
    ZRANGEBYSCORE on its score."""
    picks = parse_refs([ref])
    if not picks:
        return None
    score, job_id = picks[0]
    broker = broker or get_broker()
    for each in broker.twins(key):
        for member, found_score in broker.redis.zrangebyscore(each, score, score, withscores=True):
            job = entry(member, found_score)
            if job.job_id == job_id:
                return job
    return None


# -- search -------------------------------------------------------------------------------------

SCAN_COUNT = 500  # members Redis looks at per ZSCAN call
SCAN_CALLS = 20  # ZSCAN calls per page of results at most: a search page stays bounded


def _glob_any_case(text: str) -> str:
    """A glob matching ``text`` in any letter case (Redis' MATCH is case-sensitive)."""
    return "".join(
        f"[{c.lower()}{c.upper()}]" if c.lower() != c.upper() and len(c.upper()) == 1 else escape_glob(c)
        for c in text
    )


@dataclass(frozen=True)
class Filters:
    """What a search looks for: each given field must match (class and queue exactly, error and
    argument text anywhere, in any case)."""

    job_class: str = ""
    queue: str = ""
    error: str = ""
    text: str = ""

    def __bool__(self) -> bool:
        return bool(self.job_class or self.queue or self.error or self.text)

    def pattern(self) -> str:
        """The MATCH glob Redis filters by, from the most selective field given."""
        if self.job_class:
            return "*" + escape_glob(_json_text(self.job_class) or "") + "*"
        if self.text:
            return "*" + _glob_any_case(self.text) + "*"
        if self.error:
            return "*" + _glob_any_case(self.error) + "*"
        if self.queue:
            return "*" + escape_glob(_json_text(self.queue) or "") + "*"
        return "*"

    def matches(self, job: JobEntry) -> bool:
        return (
            (not self.job_class or job.job_class == self.job_class)
            and (not self.queue or job.queue == self.queue)
            and (not self.error or self.error.lower() in job.error.lower())
            and (not self.text or self.text.lower() in job.raw.lower())
        )


@dataclass(frozen=True)
class Found:
    """A page of search results: the jobs, and the cursor of the next page (0: the scan ended)."""

    entries: list[JobEntry]
    cursor: int


def search(key: str, filters: Filters, cursor: int = 0, limit: int = 25, broker: Broker | None = None) -> Found:
    """Jobs of the sorted set ``key`` matching ``filters``, a page at a time: ZSCAN with a MATCH
    pattern (Redis drops most non-matches), at most ``SCAN_CALLS`` calls per page, so a search
    never loads the whole set, however large; pass the returned cursor for the next page.
    With partitions the scan goes through each one's set in turn: the cursor is the partition's
    scan cursor times the partitions, plus the partition."""
    broker = broker or get_broker()
    limit = max(1, min(limit, MAX_PER_PAGE))
    found: list[JobEntry] = []
    pattern = filters.pattern()
    keys = broker.twins(key)
    part, cursor = cursor % len(keys), cursor // len(keys)
    for _ in range(SCAN_CALLS):
        cursor, members = broker.redis.zscan(keys[part], cursor, match=pattern, count=SCAN_COUNT)
        found += [job for job in (entry(m, s) for m, s in members) if filters.matches(job)]
        if cursor == 0:
            if part == len(keys) - 1:
                return Found(found, 0)
            part += 1  # the next partition's set, from its start
        if len(found) >= limit:
            break
    return Found(found, cursor * len(keys) + part)


def act_matching(key: str, op: str, filters: Filters, broker: Broker | None = None) -> int:
    """``act`` on every job of ``key`` matching ``filters`` ("all matching"), a scan page at a
    time: each page's jobs are acted on before the next is read. Returns how many were."""
    broker = broker or get_broker()
    done, pattern = 0, filters.pattern()
    for each in broker.twins(key):
        cursor = 0
        while True:
            cursor, members = broker.redis.zscan(each, cursor, match=pattern, count=SCAN_COUNT * 2)
            picks = parse_refs(job.ref for job in (entry(m, s) for m, s in members) if filters.matches(job))
            if picks:  # on the set this scan read: each job is in one partition
                done += broker.pick(each, op, picks)
            if cursor == 0:
                break
    return done


# -- cancelling a job ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cancellation:
    """What ``cancel`` found: where the job was taken out of (``"queue default"``,
    ``"scheduled"``, ``"retries"``), and the processes holding it (running it, or about to)."""

    job_id: str
    removed: list[str]
    running: list[str]

    @property
    def found(self) -> bool:
        return bool(self.removed or self.running)

    def as_json(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "removed": self.removed, "running": self.running}


def cancel(job_id: str, broker: Broker | None = None) -> Cancellation:
    """Cancel one job, wherever it is (Sidekiq's ``cancel!``, for any job).

    The job is marked cancelled first (``p:cancel:<job id>``, for ``resumable.CANCEL_TTL``),
    then taken out of the schedule, the retry set, the limits' blocked jobs and the queues: a
    job that waited there never runs, and ``job_cancelled`` is sent for it. A job a worker holds
    stops at its next checkpoint (an iterable or stepped job), is dropped if it had not started,
    and sees ``self.cancelled`` become true, once that worker's next heartbeat reads the mark
    (see resumable.py). Nothing is recorded as dead.

    Finding the job reads every set (``_waiting``), then every process's jobs.
    """
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        raise ValueError(f"cancel(): {job_id!r} is not a job id (letters, digits, '-', '_', '.' and ':').")
    broker = broker or get_broker()
    broker.mark_cancelled(job_id, resumable.CANCEL_TTL)
    removed = [
        where.label for where in _waiting(job_id, broker)
        if _remove(broker, where.key, repr(where.job.score), job_id)
    ]
    running = [process.process_id for process, _ in _holding(job_id, broker)]
    return Cancellation(job_id, removed, running)


@dataclass(frozen=True)
class Place:
    """Where a job is: ``kind`` is "queue", "scheduled", "retries", "blocked" (by a concurrency
    limit) or "running"; ``key`` the sorted set holding it (None while a process holds it)."""

    kind: str
    key: str | None
    job: JobEntry
    queue: str = ""
    process: ProcessInfo | None = None
    running: RunningJob | None = None

    @property
    def label(self) -> str:
        return f"queue {self.queue}" if self.kind == "queue" else self.kind


def _waiting(job_id: str, broker: Broker) -> list[Place]:
    """The job's copies in the schedule, the retry set, the limits' blocked jobs and the queues,
    in the order jobs move between them (so a job moving meanwhile is found, or is held by a
    worker by then). ``find.lua`` looks for the id a bounded part of a set a call: a queue's
    priority band, whose members are ordered by job id, by bisection; the schedule and the retry
    set member by member, in Redis, without sending them here."""
    names = queue_names(broker)
    sets = []
    for keys in (part.keys for part in broker.partitions):
        sets += [("scheduled", keys.schedule, ""), ("retries", keys.retry, "")]
        limits = [_text(limit) for limit in broker.redis.zrange(keys.blocked, 0, -1)]
        sets += [("blocked", keys.concurrency_blocked(limit), "") for limit in limits]
        sets += [("queue", keys.queue(name), name) for name in names]
    found = []
    for kind, key, queue in sets:
        for member, score in broker.find(key, job_id):
            job = entry(member, score)
            if job.job_id == job_id:
                found.append(Place(kind, key, job, queue=queue or job.queue))
    return found


def _holding(job_id: str, broker: Broker) -> list[tuple[ProcessInfo, RunningJob]]:
    return [
        (process, running) for process in processes(broker=broker) for running in process.jobs
        if running.field.rpartition(":")[0] == job_id
    ]


def locate(job_id: str, waiting: bool = True, broker: Broker | None = None) -> list[Place]:
    """Every place job ``job_id`` is in Redis right now (its detail page): held by a process,
    or (``waiting``, which scans every set) waiting in one. Dead jobs are rows of ``DeadJob``."""
    if not isinstance(job_id, str) or not _JOB_ID.fullmatch(job_id):
        return []
    broker = broker or get_broker()
    found = _waiting(job_id, broker) if waiting else []
    return found + [
        Place("running", None, running.job, queue=running.job.queue, process=process, running=running)
        for process, running in _holding(job_id, broker)
    ]


def cancel_refs(key: str, refs: Iterable[str], broker: Broker | None = None) -> int:
    """Cancel the jobs ``refs`` name in a queue, the schedule or the retry set (the dashboard's
    Cancel): each is marked cancelled, as ``cancel`` does, and taken out. Returns how many were."""
    broker = broker or get_broker()
    count = 0
    for score, job_id in parse_refs(refs):
        broker.mark_cancelled(job_id, resumable.CANCEL_TTL)
        count += _remove(broker, key, score, job_id)
    return count


def _remove(broker: Broker, key: str, score: str, job_id: str) -> bool:
    """Take one job out of a sorted set (in whichever partition holds it) and send
    ``job_cancelled``; False if it was gone."""
    for each in broker.twins(key):
        found = [entry(member, 0.0) for member in broker.redis.zrangebyscore(each, score, score)]
        names = [job.job_class for job in found if job.job_id == job_id]
        if broker.pick(each, "delete", [(score, job_id)]):
            job_class = registry.lookup(names[0]) if names else None
            signals.send(signals.job_cancelled, job_class, job=None, job_id=job_id)
            return True
    return False


# -- queues -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueInfo:
    name: str
    size: int
    latency: float  # seconds the job at the head has been ready to run (``ready_since``); 0 when empty
    paused: bool = False

    def as_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": self.size, "latency": round(self.latency, 3), "paused": self.paused}


def queue_names(broker: Broker | None = None) -> list[str]:
    """Every queue pushed to or paused, plus the configured ones (so an idle queue still shows)."""
    return _names_and_paused(broker or get_broker())[0]


def _names_and_paused(broker: Broker) -> tuple[list[str], set[str]]:
    with broker.redis.pipeline(transaction=False) as pipe:
        pipe.smembers(broker.keys.paused)
        for part in broker.partitions:
            pipe.smembers(part.keys.queues)
        paused, *known = pipe.execute()
    paused = {_text(n) for n in paused}
    return sorted({_text(n) for names in known for n in names} | paused | set(broker.settings.queues.names)), paused


def queues(broker: Broker | None = None) -> list[QueueInfo]:
    broker = broker or get_broker()
    names, paused = _names_and_paused(broker)
    parts = broker.partitions
    with broker.redis.pipeline(transaction=False) as pipe:
        for name in names:
            for part in parts:  # a queue's jobs may be in several partitions (a batch's, a limit's)
                pipe.zcard(part.keys.queue(name))
                pipe.zrange(part.keys.queue(name), 0, 0)
        replies = pipe.execute()
    now = time.time()
    result = []
    step = 2 * len(parts)
    for i, name in enumerate(names):
        mine = replies[step * i : step * (i + 1)]
        heads = [ready_since(entry(head[0], 0.0), now) for head in mine[1::2] if head]
        ready = min((moment for moment in heads if moment is not None), default=None)
        result.append(QueueInfo(name, sum(mine[::2]), 0.0 if ready is None else max(0.0, now - ready), name in paused))
    return result


def ready_since(job: JobEntry, now: float) -> float | None:
    """When a queued job became ready to run: the latest of its enqueue, its run-at time once
    past (a scheduled job or a retry moved by the poller) and its "Run now" (``moved_at``,
    stamped by pick.lua), so a job that waited in the schedule does not count that wait."""
    data = job.data or {}
    moments = [
        value for value in (data.get("enqueued_at"), data.get("moved_at"), data.get("at"))
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value <= now
    ]
    return max(moments, default=None)


def clear_queue(name: str, broker: Broker | None = None) -> int:
    return (broker or get_broker()).clear_queue(name)


def pause_queue(name: str, broker: Broker | None = None) -> bool:
    """Stop every worker fetching from queue ``name`` within a second; its jobs stay, new ones
    join it, and the state outlives worker restarts. False when it was paused already."""
    return (broker or get_broker()).pause_queue(validate_queue_name(name, "queue"))


def resume_queue(name: str, broker: Broker | None = None) -> bool:
    """Let workers fetch from queue ``name`` again. False when it was not paused."""
    return (broker or get_broker()).resume_queue(validate_queue_name(name, "queue"))


def paused_queues(broker: Broker | None = None) -> list[str]:
    return sorted((broker or get_broker()).paused_queues())


# -- blocked jobs (concurrency limits) -------------------------------------------------------------


@dataclass(frozen=True)
class BlockedLimit:
    """A concurrency limit with jobs waiting for a place (flow.limit_concurrency)."""

    limit_id: str  # "<job name>:<SHA-1 of the key>"
    blocked: int
    holding: int  # places taken (running jobs, and places kept for jobs moved to their queue)

    @property
    def job_class(self) -> str:
        return self.limit_id.rpartition(":")[0]

    @property
    def key_digest(self) -> str:
        return self.limit_id.rpartition(":")[2]

    def as_json(self) -> dict[str, Any]:
        return {"limit": self.limit_id, "job": self.job_class, "blocked": self.blocked, "holding": self.holding}


def blocked_limits(count: int = MAX_PER_PAGE, broker: Broker | None = None) -> list[BlockedLimit]:
    """The limits with blocked jobs (at most ``count``), with how many wait and how many places
    are taken: one pipelined round trip after the index."""
    broker = broker or get_broker()
    k = broker.keys
    ids = [_text(i) for i in broker.redis.zrange(k.blocked, 0, max(1, count) - 1)]
    with broker.redis.pipeline(transaction=False) as pipe:
        for ident in ids:
            pipe.zcard(k.concurrency_blocked(ident))
            pipe.hlen(k.concurrency(ident))
        replies = pipe.execute()
    return [BlockedLimit(ident, replies[2 * i], replies[2 * i + 1]) for i, ident in enumerate(ids)]


def blocked_key(limit_id: str, broker: Broker | None = None) -> str | None:
    """The sorted set of a limit's blocked jobs, for ``page_of`` and ``act``; None for an id the
    index does not list (a URL is never turned into another key)."""
    broker = broker or get_broker()
    if broker.redis.zscore(broker.keys.blocked, limit_id) is None:
        return None
    return broker.keys.concurrency_blocked(limit_id)


@dataclass(frozen=True)
class LimiterUse:
    """A rate limiter in use (its key exists: it was called within its last period or two), and
    what its state says now. Its count and period live in the code that builds it, not in Redis:
    ``usage`` is what Redis holds (calls in this window, tokens left, the next free slot, locks
    held)."""

    kind: str
    name: str
    usage: str

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "usage": self.usage}


def rate_limiters(count: int = MAX_PER_PAGE, broker: Broker | None = None) -> list[LimiterUse]:
    """The rate limiters in use (at most ``count``), found with SCAN in bounded pages (at most
    ``SCAN_CALLS`` calls per server), their state read in one pipelined round trip."""
    broker = broker or get_broker()
    found = broker.scan(broker.keys.limiters, count, SCAN_CALLS, SCAN_COUNT * 2)
    head = broker.keys.limiter("", "")[:-1]  # "<prefix>:limit:", then "<kind>:<name>"
    parsed = sorted({tuple(key[len(head):].split(":", 1)) for key in found if ":" in key[len(head):]})
    seconds, micros = broker.redis.time()  # apart: a cluster's pipeline refuses TIME
    with broker.redis.pipeline(transaction=False) as pipe:
        for kind, name in parsed:
            key = broker.keys.limiter(kind, name)
            if kind in ("window", "bucket"):
                pipe.hgetall(key)
            elif kind == "concurrent":
                pipe.zcard(key)
            else:
                pipe.get(key)
        states = pipe.execute() if parsed else []
    now_ms = seconds * 1000 + micros // 1000
    return [LimiterUse(kind, name, _usage(kind, state, now_ms)) for (kind, name), state in zip(parsed, states, strict=True)]


def _usage(kind: str, state: Any, now_ms: int) -> str:
    """A limiter's state (rate_limit.lua) in words."""
    if kind == "window":
        calls = int(_number((state or {}).get(b"n")))
        return f"{calls} call{'' if calls == 1 else 's'} in the current window"
    if kind == "bucket":
        return f"{_number((state or {}).get(b'tokens')):.1f} tokens left at the last call"
    if kind == "concurrent":
        return f"{state} lock{'' if state == 1 else 's'} held"
    due = _number(state) - now_ms
    return f"next call allowed in {due / 1000:.1f} s" if due > 0 else "a call may go now"


# -- processes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunningJob:
    """A job a process holds: fetched and not settled; ``started`` is None until a thread runs it."""

    field: str
    job: JobEntry
    started: float | None

    @property
    def runtime(self) -> float | None:
        return None if self.started is None else max(0.0, time.time() - self.started)

    def as_json(self) -> dict[str, Any]:
        runtime = self.runtime
        return {"field": self.field, "runtime": None if runtime is None else round(runtime, 3), **self.job.as_json()}


@dataclass(frozen=True)
class ProcessInfo:
    process_id: str
    beat: float  # last heartbeat, Redis time
    info: dict[str, str]
    jobs: list[RunningJob] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.info.get("host", "")

    @property
    def pid(self) -> str:
        return self.info.get("pid", "")

    @property
    def queues(self) -> str:
        return self.info.get("queues", "")

    @property
    def concurrency(self) -> int:
        return int(_number(self.info.get("concurrency")))

    @property
    def busy(self) -> int:
        return int(_number(self.info.get("busy")))

    @property
    def quiet(self) -> bool:
        return self.info.get("quiet") == "1"

    @property
    def started_at(self) -> datetime | None:
        return _moment(_number(self.info.get("started_at"), math.nan))

    @property
    def last_beat(self) -> datetime | None:
        return _moment(self.beat)

    @property
    def rss(self) -> int | None:
        """Resident memory in bytes at the last heartbeat."""
        value = self.info.get("rss")
        return int(_number(value)) if value is not None else None

    def started_jobs(self) -> dict[str, float]:
        """In-flight field -> start time, as the process reported at its last heartbeat."""
        try:
            running = json.loads(self.info.get("running") or "{}")
        except ValueError:
            return {}
        return {str(k): float(v) for k, v in running.items() if isinstance(v, (int, float))} if isinstance(running, dict) else {}

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.process_id, "host": self.host, "pid": self.pid, "queues": self.queues,
            "concurrency": self.concurrency, "busy": self.busy, "quiet": self.quiet,
            "started_at": _iso(self.started_at), "last_beat": _iso(self.last_beat), "rss": self.rss,
            "jobs": [job.as_json() for job in self.jobs],
        }


def processes(with_jobs: bool = True, broker: Broker | None = None) -> list[ProcessInfo]:
    """Live worker processes, newest heartbeat first, with the jobs each holds right now."""
    broker = broker or get_broker()
    k = broker.keys
    members = broker.redis.zrevrange(k.processes, 0, -1, withscores=True)  # a process beats in every partition
    ids = [_text(m) for m, _ in members]
    parts = broker.partitions if with_jobs else []
    with broker.redis.pipeline(transaction=False) as pipe:
        for pid in ids:
            pipe.hgetall(k.process(pid))
            for part in parts:
                pipe.hgetall(part.keys.inflight(pid))
        replies = pipe.execute()
    step = 1 + len(parts)
    result = []
    for i, (pid, (_, beat)) in enumerate(zip(ids, members, strict=True)):
        process = ProcessInfo(pid, beat, {_text(a): _text(b) for a, b in replies[step * i].items()})
        if with_jobs:
            started = process.started_jobs()
            held = {name: raw for reply in replies[step * i + 1 : step * (i + 1)] for name, raw in reply.items()}
            for name, raw in sorted(held.items()):
                process.jobs.append(RunningJob(_text(name), entry(raw, 0.0), started.get(_text(name))))
        result.append(process)
    return result


def signal_process(process_id: str, signal: str, broker: Broker | None = None) -> None:
    broker = broker or get_broker()
    broker.signal_process(process_id, signal, ttl=broker.settings.heartbeat_timeout * 2)


# -- stats --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stats:
    processed: int
    failed: int
    processed_today: int
    failed_today: int
    enqueued: int
    scheduled: int
    retries: int
    dead: int
    processes: int
    busy: int
    concurrency: int
    expired: int = 0  # dropped unstarted past their deadline (expires_in), since the start

    def as_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


def dead_count(broker: Broker | None = None) -> int:
    """Dead jobs in the database plus those staged in Redis and not yet written."""
    broker = broker or get_broker()
    return DeadJob.objects.count() + broker.staged_dead()


def stats(broker: Broker | None = None) -> Stats:
    broker = broker or get_broker()
    day = datetime.now(UTC).strftime("%Y-%m-%d")
    names = queue_names(broker)
    parts = broker.partitions
    with broker.redis.pipeline(transaction=False) as pipe:
        for k in (part.keys for part in parts):  # each partition counts its own jobs
            for key in (k.stat("processed"), k.stat("failed"), k.stat("processed", day), k.stat("failed", day), k.stat("expired")):
                pipe.get(key)  # GETs, not MGET: a cluster's pipeline refuses MGET
            pipe.zcard(k.schedule)
            pipe.zcard(k.retry)
            for name in names:
                pipe.zcard(k.queue(name))
        replies = pipe.execute()
    step = 7 + len(names)
    totals = [sum(_number(reply) for reply in replies[i :: step]) for i in range(7)]
    sizes = [size for i in range(len(parts)) for size in replies[step * i + 7 : step * (i + 1)]]
    scheduled, retries = int(totals[5]), int(totals[6])
    live = processes(with_jobs=False, broker=broker)
    processed, failed, processed_today, failed_today, expired = (int(c) for c in totals[:5])
    return Stats(
        processed=processed, failed=failed, processed_today=processed_today, failed_today=failed_today,
        enqueued=sum(sizes), scheduled=scheduled, retries=retries, dead=dead_count(broker),
        processes=len(live), busy=sum(p.busy for p in live), concurrency=sum(p.concurrency for p in live),
        expired=expired,
    )


def history(days: int = HISTORY_DAYS, broker: Broker | None = None) -> list[dict[str, Any]]:
    """Processed and failed per day, oldest first, ending today (UTC): one round trip of GETs
    (not MGET, which a cluster's pipeline refuses)."""
    broker = broker or get_broker()
    today = datetime.now(UTC).date()
    dates = [(today - timedelta(days=n)).isoformat() for n in range(days - 1, -1, -1)]
    with broker.redis.pipeline(transaction=False) as pipe:
        for part in broker.partitions:
            for name in ("processed", "failed"):
                for d in dates:
                    pipe.get(part.keys.stat(name, d))
        counts = pipe.execute()
    summed = [sum(_number(c) for c in counts[i :: 2 * days]) for i in range(2 * days)]
    processed, failed = summed[:days], summed[days:]
    return [
        {"date": d, "processed": int(p), "failed": int(f)}
        for d, p, f in zip(dates, processed, failed, strict=True)
    ]


def metrics(job_class: str | None = None, minutes: int = 60, broker: Broker | None = None) -> job_metrics.Report:
    """Per-class runs, failures, execution time and queue latency over the last ``minutes`` (the
    current one included), a point a minute up to ``metrics.MINUTES_UP_TO`` (3 hours), a point
    an hour beyond (``report.step``), with the deploy marks in that span; p50/p95/p99 from
    ``ClassMetrics.percentile`` (see ``metrics.py``). Two round trips."""
    if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes < 1:
        raise ValueError(f"metrics(minutes=) must be a positive integer, got {minutes!r}.")
    broker = broker or get_broker()
    retention = broker.settings.metrics_retention or 0
    return job_metrics.read(broker, job_class, min(minutes, max(1, math.ceil(retention / 60))))


def mark_deploy(label: str, broker: Broker | None = None) -> job_metrics.Mark:
    """A deploy mark on the metrics charts, now (``jobs metrics mark v1.2``)."""
    return job_metrics.mark(broker or get_broker(), label)


def redis_info(broker: Broker | None = None) -> dict[str, Any] | None:
    """What the overview shows of the Redis server: version, memory, clients, commands per
    second, keys and uptime; of a cluster, its masters' summed up (the shortest uptime), with
    how many there are. None where INFO is refused (some managed services rename it)."""
    broker = broker or get_broker()
    try:
        servers = broker.server_info()
    except redis.ResponseError:
        return None
    if len(servers) == 1:
        info = servers[0][0]
        memory, peak = _text(info.get("used_memory_human", "?")), _text(info.get("used_memory_peak_human", "?"))
    else:
        memory, peak = (_bytes_text(sum(_number(info.get(name)) for info, _ in servers)) for name in ("used_memory", "used_memory_peak"))
    return {
        "version": ", ".join(sorted({_text(info.get("redis_version", "?")) for info, _ in servers})),
        "memory": memory, "memory_peak": peak,
        "clients": sum(int(_number(info.get("connected_clients"))) for info, _ in servers),
        "ops_per_sec": sum(int(_number(info.get("instantaneous_ops_per_sec"))) for info, _ in servers),
        "keys": sum(keys for _, keys in servers),
        "uptime": min(int(_number(info.get("uptime_in_seconds"))) for info, _ in servers),
        "servers": len(servers),
    }


def _bytes_text(amount: float) -> str:
    """Bytes as INFO's ``*_human`` fields write them (``1.50M``)."""
    unit = "B"
    for bigger in "KMGT":
        if amount < 1024:
            break
        amount, unit = amount / 1024, bigger
    return f"{amount:.0f}B" if unit == "B" else f"{amount:.2f}{unit}"


@dataclass(frozen=True)
class OutboxState:
    """Jobs written to the outboxes that the workers have not relayed to Redis yet."""

    count: int
    oldest: datetime | None  # when the oldest of them was written

    def age(self, now: float | None = None) -> float | None:
        """Seconds the oldest has waited."""
        if self.oldest is None:
            return None
        return max(0.0, (time.time() if now is None else now) - self.oldest.timestamp())


def outbox_state() -> OutboxState | None:
    """The rows waiting in every relayed database's outbox; None when no job uses the outbox."""
    if not outbox.in_use():
        return None
    count, oldest = 0, None
    for alias in get_settings().outbox_databases:
        waiting, first = outbox.summary(alias)
        count += waiting
        if first is not None and (oldest is None or first < oldest):
            oldest = first
    return OutboxState(count, oldest)


# -- recurring ----------------------------------------------------------------------------------


def recurring(count: int = 3, broker: Broker | None = None) -> list[dict[str, Any]]:
    """Each ``RECURRING`` entry with its next ``count`` runs and its last one (``cron.describe``)."""
    return cron.describe(count, broker=broker or get_broker())


def run_recurring_now(name: str) -> str:
    """Enqueue a recurring entry's job now, outside its schedule; returns the job id.

    Its ticks are left alone: the next scheduled run still happens. The payload's ``cron`` field
    is ``{"name": name, "manual": True}``, with no tick: the job can tell it was started by hand;
    the entry's last run shows it (``cron.last_run``'s ``manual_at``).
    """
    for entry in cron.entries():
        if entry.name == name:
            job_class = registry.lookup(entry.job)
            if job_class is None:
                raise LookupError(f"no registered job is named {entry.job!r}")
            job = job_class(*entry.args, **entry.kwargs)
            job.payload["cron"] = {"name": entry.name, "manual": True}
            job.enqueue(queue=entry.queue, priority=entry.priority)
            if not job:
                raise RuntimeError(f"{entry.job} was not enqueued: a before_enqueue callback halted it")
            get_broker().mark_cron_manual(entry.name, job.job_id)
            return job.job_id
    raise LookupError(f"no recurring entry is named {name!r}")


# -- enqueue ------------------------------------------------------------------------------------


def enqueue(job_name: str, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None) -> str:
    """Enqueue a registered job by name (the ``jobs enqueue`` command); returns its job id.

    Only registered names are accepted, as with a worker: a name is looked up, never imported.
    """
    job_class = registry.lookup(job_name)
    if job_class is None:
        known = ", ".join(sorted(registry.all_jobs())) or "none"
        raise LookupError(f"no registered job is named {job_name!r} (registered: {known})")
    job = job_class.perform_later(*args, **(kwargs or {}))
    if not job:
        raise RuntimeError(f"{job_name} was not enqueued: a before_enqueue callback halted it")
    return job.job_id


# -- batches ---------------------------------------------------------------------------------------


def batch_of(data: Any) -> str | None:
    """The id of the batch a payload (a dict: a queued, retrying or dead job's) is a member of,
    or None: what the retry and dead pages link to."""
    keys = data.get("batch") if isinstance(data, dict) else None
    if not isinstance(keys, list) or not keys or not isinstance(keys[0], str):
        return None
    return keys[0].rpartition(":batch:")[2] or None


@dataclass(frozen=True)
class BatchPage(Paging):
    """A page of batches, newest first: each a ``Batch.status`` dict. ``total`` counts the
    index, which may still name batches that expired (left out of ``batches``)."""

    batches: list[dict[str, Any]]
    total: int
    number: int
    per_page: int


def batches(number: int = 1, per_page: int = 25) -> BatchPage:
    """One page of batches (two round trips, never a batch's members)."""
    per_page = max(1, min(int(per_page), MAX_PER_PAGE))
    number = max(1, min(int(number), MAX_PAGE))
    rows, total = batch_state.listing((number - 1) * per_page, per_page)
    return BatchPage(rows, total, number, per_page)


def batch(bid: str) -> dict[str, Any] | None:
    """A batch's status (``Batch.status``), None when it is gone."""
    return batch_state.status(bid)


def cancel_batch(bid: str) -> bool:
    """``Batch.cancel``: False when the batch is gone."""
    return batch_state.Batch.cancel(bid)
