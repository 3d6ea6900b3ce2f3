"""Dead jobs: from the Redis stage to the database, and from the database back to a queue.

Workers never write to the database when a job dies: the Lua steps stage a record in the
``<prefix>:dead`` hash atomically with the job's removal from the in-flight list, and
``flush_staged`` moves the records into ``DeadJob`` rows later. A database outage therefore
costs nothing but delay, and each step is idempotent (keyed on the dead id) so a crash or two
flushers at once neither lose nor duplicate a job.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DataError, IntegrityError, connections, router, transaction
from django.db import Error as DBError
from django.db.models import QuerySet
from django.utils import timezone

from django_async_jobs.broker.client import Broker, get_broker
from django_async_jobs.models import DeadJob, DeathReason
from django_async_jobs.serialization import (
    MalformedPayload,
    decode_payload,
    encode_payload,
    payload_bytes,
)

logger = logging.getLogger("django_async_jobs.dead")

DEFAULT_RETENTION = timedelta(days=180)
FLUSH_BATCH = 500
RETRY_CHUNK = 1000
PRUNE_CHUNK = 1000

# Bookkeeping of the attempts that led to the death; a retried dead job starts afresh.
RESET_KEYS = frozenset({
    "executions", "retry_count", "retries", "at", "error_class", "error_message", "traceback", "moved_at",
})

_CHAR_LIMIT = 255
_INT_LIMIT = 2**31 - 1
# Arguments nested deeper are kept in the payload text only: reading a JSON column back (the
# admin's page) recurses once per level, inside a request already deep in the stack.
_JSON_DEPTH = 100
# A record that cannot become a row keeps this much of its text; the rest is cut with a note.
TEXT_LIMIT = 1_000_000
# Dates outside 1970..2999 are not a job's: left empty rather than overflowing a time zone.
_LAST_SECOND = 32_503_680_000.0


# -- settings -----------------------------------------------------------------------------------


def retention() -> timedelta | None:
    """``ASYNC_JOBS["DEAD_JOB_RETENTION"]``: a timedelta or seconds; ``None`` keeps rows forever."""
    raw = getattr(django_settings, "ASYNC_JOBS", {}) or {}
    value = raw.get("DEAD_JOB_RETENTION", DEFAULT_RETENTION)
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0:
        return timedelta(seconds=value)
    raise ImproperlyConfigured(
        f"ASYNC_JOBS['DEAD_JOB_RETENTION'] must be a timedelta, a number of seconds or None, got {value!r}."
    )


# -- staged records -> rows ---------------------------------------------------------------------


def _text(value: Any, limit: int | None = None) -> str:
    """A string every database accepts: no NUL, valid UTF-8, at most ``limit`` characters."""
    if value is None:
        return ""
    if not isinstance(value, str):
        value = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from "\ud800"-style escapes
        value = value.encode("utf-8", "replace").decode("utf-8")
    if limit is not None and len(value) > limit:
        value = value[:limit]
    return value


def _unique_text(value: str) -> str:
    """A dead id that fits the column and still identifies its record (so stays idempotent)."""
    value = _text(value)
    if len(value) <= _CHAR_LIMIT:
        return value
    return value[:200] + ":" + hashlib.sha1(value.encode("utf-8")).hexdigest()


def _long_text(value: str) -> str:
    """``_text``, cut at ``TEXT_LIMIT`` characters with a note of how long it was."""
    value = _text(value)
    if len(value) <= TEXT_LIMIT:
        return value
    return f"{value[:TEXT_LIMIT]}\n[truncated: {len(value)} characters in all]"


def _shallow(value: Any) -> bool:
    """Whether ``value`` nests no deeper than ``_JSON_DEPTH`` (walked without recursion)."""
    level: list[Any] = [value]
    for _ in range(_JSON_DEPTH):
        level = [
            item for container in level if isinstance(container, (list, dict))
            for item in (container.values() if isinstance(container, dict) else container)
        ]
        if not level:
            return True
    return False


def _json(value: Any) -> Any:
    """``value`` if every database stores it as JSON, else ``None`` (the payload text keeps it)."""
    if not _shallow(value):
        return None
    try:
        encoded = encode_payload(value)
        encoded.encode("utf-8")
    except (TypeError, ValueError, RecursionError):
        return None
    if "\\u0000" in encoded:  # PostgreSQL's jsonb refuses NUL in strings
        return None
    return value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _datetime(value: Any) -> datetime | None:
    seconds = _number(value)
    if seconds is None or not 0 <= seconds < _LAST_SECOND:
        return None
    try:
        moment = datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):
        return None
    return moment if django_settings.USE_TZ else timezone.make_naive(moment)


def _count(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return min(value, _INT_LIMIT)


def _parse(text: str) -> Any:
    """``text`` as JSON, or None when it is not JSON (or nests deeper than the parser goes)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _parse_payload(text: str) -> dict[str, Any]:
    """Whatever the payload says that fits its field; a malformed payload yields less, or nothing."""
    data = _parse(text)
    return data if isinstance(data, dict) else {}


def build_row(field: bytes | str, value: bytes | str) -> DeadJob:
    """The ``DeadJob`` for one staged record; never raises, whatever the record holds.

    A payload that is not a job (not JSON, nested deeper than the parser goes) is kept as text,
    cut at ``TEXT_LIMIT`` characters with a note of its length: it can be read, not retried.
    """
    if isinstance(field, bytes):
        field = field.decode("utf-8", "replace")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    record = _parse(value)
    if not isinstance(record, dict):
        # Not even the record is readable: keep all of it as the payload.
        record = {"payload": value, "reason": DeathReason.MALFORMED_PAYLOAD}
    try:
        return _row(field, record)
    except Exception as exc:  # a record no flush may stop at: the whole of it, as text
        logger.warning("dead jobs: record %s is kept as text: %s: %s", _text(field, _CHAR_LIMIT), type(exc).__name__, exc)
        reason = record.get("reason")
        return DeadJob(
            dead_id=_unique_text(field), payload=_long_text(value), died_at=timezone.now(),
            reason=_text(reason, 32) if isinstance(reason, str) else DeathReason.MALFORMED_PAYLOAD,
        )


def _row(field: str, record: dict[str, Any]) -> DeadJob:
    payload_text = record.get("payload")
    if not isinstance(payload_text, str):
        payload_text = "" if payload_text is None else json.dumps(payload_text)
    payload = _parse_payload(payload_text)

    died_at = _datetime(record.get("died_at")) or timezone.now()
    error_class = _text(record.get("error_class"), _CHAR_LIMIT)
    failed_at = _datetime(record.get("failed_at")) or (died_at if error_class else None)
    executions = _count(record.get("executions"))
    if executions is None:
        executions = _count(payload.get("executions")) or 0
    args = payload.get("args")
    kwargs = payload.get("kwargs")
    job_id = payload.get("jid") if isinstance(payload.get("jid"), str) else record.get("job_id")
    reason = record.get("reason")
    return DeadJob(
        dead_id=_unique_text(field),
        job_id=_text(job_id, _CHAR_LIMIT),
        job_class=_text(payload.get("job") if isinstance(payload.get("job"), str) else "", _CHAR_LIMIT),
        queue=_text(payload.get("queue") if isinstance(payload.get("queue"), str) else "", _CHAR_LIMIT),
        arguments=_json(args) if isinstance(args, list) else None,
        kwargs=_json(kwargs) if isinstance(kwargs, dict) else ({} if isinstance(args, list) else None),
        error_class=error_class,
        error_message=_text(record.get("error_message")),
        traceback=_text(record.get("traceback")),
        executions=executions,
        enqueued_at=_datetime(payload.get("enqueued_at")),
        failed_at=failed_at,
        died_at=died_at,
        payload=_text(payload_text) if payload else _long_text(payload_text),
        reason=_text(reason, 32) if isinstance(reason, str) else "",
    )


def _forget_broken_connection(alias: str) -> None:
    """After an outage, let the next flush reconnect instead of reusing a dead connection."""
    connection = connections[alias]
    if not connection.in_atomic_block:
        connection.close_if_unusable_or_obsolete()


def _write(rows: list[DeadJob], alias: str) -> list[int] | None:
    """Insert rows (existing dead ids are left alone); the indexes written, or None if the DB is down."""
    try:
        with transaction.atomic(using=alias):
            DeadJob.objects.using(alias).bulk_create(rows, ignore_conflicts=True)
        return list(range(len(rows)))
    except (DataError, IntegrityError) as exc:
        # A record the database refuses must not hold back the others: write them one by one.
        logger.warning("dead jobs: a batch was refused (%s); writing its records one by one", exc)
    except DBError as exc:
        logger.warning("dead jobs: database unavailable, records stay staged in Redis: %s", exc)
        _forget_broken_connection(alias)
        return None
    written = []
    for index, row in enumerate(rows):
        try:
            with transaction.atomic(using=alias):
                DeadJob.objects.using(alias).bulk_create([row], ignore_conflicts=True)
        except (DataError, IntegrityError) as exc:
            logger.error("dead jobs: record %s stays staged, the database refuses it: %s", row.dead_id, exc)
            continue
        except DBError as exc:
            logger.warning("dead jobs: database unavailable, records stay staged in Redis: %s", exc)
            _forget_broken_connection(alias)
            return written or None
        written.append(index)
    return written


def flush_staged(broker: Broker | None = None, batch: int = FLUSH_BATCH) -> int:
    """Move staged dead-job records from Redis into ``DeadJob`` rows; returns how many moved.

    Rows are written before their fields are deleted, and a dead id already in the table is
    skipped, so a crash in between or a second flusher never loses nor duplicates a record.
    When the database is down, the records stay staged and the call returns early: call it
    again later.
    """
    broker = broker or get_broker()
    batch = max(1, batch)
    alias = router.db_for_write(DeadJob)
    moved = 0
    for key in (part.keys.dead for part in broker.partitions):  # each partition stages its own
        cursor = 0
        while True:
            cursor, entries = broker.redis.hscan(key, cursor, count=batch)
            items = list(entries.items())
            for start in range(0, len(items), batch):
                chunk = items[start : start + batch]
                rows = [build_row(field, value) for field, value in chunk]
                written = _write(rows, alias)
                if written is None:
                    return moved
                if written:
                    for i in written:
                        _count_in_batch(broker, rows[i])
                    broker.redis.hdel(key, *(chunk[i][0] for i in written))
                    moved += len(written)
                if len(written) < len(chunk) and not _db_up(alias):
                    return moved
            if cursor == 0:
                break
    return moved


def _count_in_batch(broker: Broker, row: DeadJob) -> None:
    """A poison pill is buried by a recovery, not by a settle step, so its batch learns of the
    death here: before the staged record goes (a crash repeats the call, which is idempotent).
    Only keys in the batches' own space are touched, whatever the payload says."""
    if row.reason != DeathReason.POISON_PILL or not row.job_id:
        return
    keys = _parse_payload(row.payload).get("batch")
    base = broker.keys.batch_base
    if isinstance(keys, list) and 0 < len(keys) <= 32 and all(isinstance(k, str) and k.startswith(base) for k in keys):
        broker.batch_dead(keys, row.job_id)


def _db_up(alias: str) -> bool:
    try:
        connections[alias].ensure_connection()
    except DBError:
        return False
    return True


# -- rows -> queues -----------------------------------------------------------------------------


def fresh_payload(text: str) -> str | None:
    """The payload to enqueue again: same job id and arguments, attempt counters reset.

    ``None`` when the payload is not a job (it cannot be retried, only read and deleted).
    """
    try:
        data = decode_payload(text)
    except MalformedPayload:
        return None
    if not data["queue"] or not data["job"]:
        return None
    fresh = {"jid": data["jid"]}
    fresh.update((k, v) for k, v in data.items() if k != "jid" and k not in RESET_KEYS)
    fresh["enqueued_at"] = round(time.time(), 3)
    try:
        return payload_bytes(fresh).decode()  # a lone surrogate goes as its escape
    except (ValueError, RecursionError):  # NaN or infinity: the Lua side could not route it
        return None


def _chunks(values: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for value in values:
        chunk.append(value)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _primary_keys(queryset_or_ids: QuerySet[DeadJob] | Iterable[str], size: int) -> Iterator[list[int]]:
    """Chunks of primary keys, walking the queryset by key (deleting rows never shifts a page)."""
    if isinstance(queryset_or_ids, QuerySet):
        keys = queryset_or_ids.order_by("pk").values_list("pk", flat=True)
        last = None
        while True:
            page = list((keys if last is None else keys.filter(pk__gt=last))[:size])
            if not page:
                return
            last = page[-1]
            yield page
    else:
        for ids in _chunks(queryset_or_ids, size):
            page = list(DeadJob.objects.filter(dead_id__in=ids).order_by("pk").values_list("pk", flat=True))
            if page:
                yield page


def _retry_chunk(pks: list[int], broker: Broker, skipped: list[str] | None) -> int:
    alias = router.db_for_write(DeadJob)
    with transaction.atomic(using=alias):
        rows = DeadJob.objects.using(alias).filter(pk__in=pks)
        if connections[alias].features.has_select_for_update_skip_locked:
            # Two people retrying the same rows at once enqueue each job once.
            rows = rows.select_for_update(skip_locked=True)
        payloads: list[str] = []
        done: list[int] = []
        for pk, dead_id, text in rows.values_list("pk", "dead_id", "payload"):
            payload = fresh_payload(text)
            if payload is None:
                logger.warning("dead job %s has a malformed payload; it cannot be retried", dead_id)
                if skipped is not None:
                    skipped.append(dead_id)
                continue
            payloads.append(payload)
            done.append(pk)
        if not done:
            return 0
        # Delete, then push, then commit: if Redis fails the rows come back with the rollback.
        DeadJob.objects.using(alias).filter(pk__in=done).delete()
        pushed = broker.push(payloads)
        if pushed != len(payloads):
            raise RuntimeError(f"Redis accepted {pushed} of {len(payloads)} dead jobs; none were removed.")
    return len(done)


def retry_dead(
    queryset_or_ids: QuerySet[DeadJob] | Iterable[str],
    broker: Broker | None = None,
    *,
    skipped: list[str] | None = None,
    chunk: int = RETRY_CHUNK,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Enqueue dead jobs again on their queues and delete their rows; returns how many.

    Takes a ``DeadJob`` queryset or dead ids. Works in chunks of ``chunk`` rows (one Redis call
    each), so ten thousand rows take seconds. Rows whose payload is not a job stay in the table;
    their dead ids are appended to ``skipped`` when given. ``progress(done, total)`` is called
    after each chunk (``jobs dead retry`` draws its bar with it).
    """
    broker = broker or get_broker()
    retried = 0
    total = 0
    if progress:
        if not isinstance(queryset_or_ids, QuerySet):
            queryset_or_ids = list(queryset_or_ids)  # counted, then still there to retry
        total = queryset_or_ids.count() if isinstance(queryset_or_ids, QuerySet) else len(queryset_or_ids)
    seen = 0
    for pks in _primary_keys(queryset_or_ids, chunk):
        retried += _retry_chunk(pks, broker, skipped)
        seen += len(pks)
        if progress:
            progress(min(seen, total), total)
    return retried



# -- retention ----------------------------------------------------------------------------------


def prunable(older_than: timedelta) -> QuerySet[DeadJob]:
    """The rows ``prune(older_than)`` deletes."""
    return DeadJob.objects.filter(died_at__lt=timezone.now() - older_than)


def prune(
    older_than: timedelta | None = None,
    *,
    chunk: int = PRUNE_CHUNK,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Delete rows that died more than ``older_than`` ago (default: ``DEAD_JOB_RETENTION``).

    Deletes in chunks so a large backlog never holds a long lock. Returns how many went.
    """
    if older_than is None:
        older_than = retention()
        if older_than is None:
            return 0
    old = prunable(older_than).order_by().values_list("pk", flat=True)
    total = old.count() if progress else 0
    deleted = 0
    while True:
        pks = list(old[:chunk])
        if not pks:
            return deleted
        deleted += DeadJob.objects.filter(pk__in=pks).delete()[0]
        if progress:
            progress(min(deleted, total), total)
