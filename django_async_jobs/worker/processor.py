"""Runs one fetched job and says how to settle it: ack, retry, dead, or hand back.

Whatever bytes a payload holds, the job ends here: it runs, or it becomes a dead job with the
reason and the raw payload. A payload that is not JSON is ``malformed_payload``; one naming no
registered class, ``unknown_class``; arguments that cannot be read back or no longer fit
``perform``, ``arguments_mismatch``. An exception in the worker's own steps around the job (the
retry rules reading a ``retry_count`` that is not a number, a retry payload JSON cannot carry)
is ``worker_error``. Nothing but a ``BaseException`` raised outside ``perform`` leaves
``process``; the launcher then leaves the job to its heartbeat, which hands it back and counts a
recovery (``MAX_RECOVERIES``): no job stays in flight on a live worker.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from functools import cache
from typing import Any

from django.conf import settings
from django.db import close_old_connections
from django.db.backends.signals import connection_created

from django_async_jobs import locks, registry, retries, signals
from django_async_jobs.serialization import decode_payload, new_job_id, payload_bytes
from django_async_jobs.worker.logs import plain_output

logger = logging.getLogger("django_async_jobs.job")
FINISH = "finish %s %s queue=%s elapsed_ms=%.1f outcome=%s%s"


@cache
def _keeps_connections() -> bool:
    """Whether any database keeps connections between jobs. With ``CONN_MAX_AGE = 0`` (Django's
    default) the call after each job already closed them, so the one before has nothing to do."""
    return any(db.get("CONN_MAX_AGE", 0) != 0 or db.get("CONN_HEALTH_CHECKS") for db in settings.DATABASES.values())


_opened = threading.local()


def _note_connection(**kwargs: Any) -> None:
    _opened.connection = True


connection_created.connect(_note_connection, dispatch_uid="django_async_jobs.worker.processor")


def _close_connections() -> None:
    """``close_old_connections()`` after a job, when there can be something to close.

    Finding which connections a thread initialized takes a lock shared by every thread (Django's
    connection registry), about a tenth of a busy worker's CPU. With no database keeping
    connections, only a connection opened since the last call can be open: the
    ``connection_created`` signal says whether this thread opened one.
    """
    if _keeps_connections() or getattr(_opened, "connection", False):
        _opened.connection = False
        _close_old_connections()


def _close_old_connections() -> None:
    """``close_old_connections()``; a connection that fails to close must not decide the fate
    of the job beside it (buried before it ran, or left in flight after)."""
    try:
        close_old_connections()
    except Exception:
        logger.exception("closing old database connections failed")


class UnknownJobClass(LookupError):
    """A payload names a job no installed app's jobs.py registers."""


@dataclass(frozen=True)
class Settlement:
    """One entry of the settle script: op, in-flight field, two op arguments, and counters."""

    op: str
    field: str
    a: Any = ""
    b: Any = ""
    failed: bool = False

    def args(self) -> tuple[str, str, Any, Any, int]:
        return (self.op, self.field, self.a, self.b, int(self.failed))


def dead_record(field: str, raw: bytes | str, reason: str, exc: BaseException | None, data: dict | None) -> Settlement:
    """The settle entry that stages a job as dead (the database row is written from there).

    Never raises: a record JSON or UTF-8 cannot carry as it is (a NaN or a huge structure in
    ``executions``, a lone surrogate, an exception whose ``str()`` raises) is staged with the
    raw payload as text and the error's class and message only.
    """
    dead_id = new_job_id()
    payload = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    died_at = time.time()
    try:
        record: dict[str, Any] = {
            "dead_id": dead_id,
            "job_id": (data or {}).get("jid", field),
            "payload": payload,
            "reason": reason,
            "died_at": died_at,
        }
        if data and data.get("executions"):
            record["executions"] = data["executions"]
        if exc is not None:
            record["error_class"] = _class_name(exc)
            record["error_message"] = str(exc)
            record["traceback"] = "".join(traceback.format_exception(exc))
        value = payload_bytes(record)
    except Exception:
        jid = (data or {}).get("jid")
        bare = {
            "dead_id": dead_id,
            "job_id": jid if isinstance(jid, str) else field,
            "payload": payload,
            "reason": reason,
            "died_at": died_at,
        }
        if exc is not None:
            bare["error_class"] = _class_name(exc)
            bare["error_message"] = _message(exc)
        value = json.dumps(bare).encode()  # ASCII escapes: any str fits
    return Settlement("dead", field, dead_id, value, failed=exc is not None)


def _class_name(exc: BaseException) -> str:
    return f"{type(exc).__module__}.{type(exc).__qualname__}"


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:
        return f"<{type(exc).__name__} whose message cannot be read>"


def _bury(field: str, raw: bytes, reason: str, exc: BaseException, data: dict[str, Any] | None) -> Settlement:
    """A job set aside: dead at once, with death handlers and the signal."""
    logger.error("job %s is dead (%s): %s", field, reason, _message(exc))
    job_class = registry.lookup(data["job"]) if data and isinstance(data.get("job"), str) else None
    retries.call_handlers("DEATH_HANDLERS", data or {}, exc)
    signals.send(signals.job_died, job_class, job=None, exception=exc, reason=reason)
    return dead_record(field, raw, reason, exc, data)


@dataclass
class Started:
    """A job past its checks, running or about to run: what ``finish`` needs to settle it."""

    job: Any
    field: str
    raw: bytes
    log: bool
    extra: dict[str, Any]
    began: float

    @property
    def on_event_loop(self) -> bool:
        """Async jobs are awaited on the worker's event loop, so they hold no thread; those with
        run locks or ``around_perform`` callbacks (which block until the job ends) are not."""
        job = self.job
        return job._is_async and not job.payload.get("lock") and not job._callbacks["around_perform"]


def start(field: str, raw: bytes, log_jobs: bool = True) -> Settlement | Started:
    """Decode and check a fetched job; a ``Settlement`` if it cannot even start."""
    try:
        data = decode_payload(raw)
    except Exception as exc:
        return _bury(field, raw, "malformed_payload", exc, None)
    job_class = registry.lookup(data["job"])
    if job_class is None:
        exc = UnknownJobClass(f"no registered job is named {data['job'][:200]!r}")
        return _bury(field, raw, "unknown_class", exc, data)
    try:
        job = job_class.deserialize(data)
        job._check_arguments()
    except Exception as exc:  # MalformedPayload, TypeError, or whatever a tagged value raises
        return _bury(field, raw, "arguments_mismatch", exc, data)

    # One INFO line per job, when it finishes (with its elapsed time); the start line is DEBUG.
    # Two formatted records per job were a quarter of a busy worker's CPU.
    log = log_jobs and logger.isEnabledFor(logging.INFO)
    extra: dict[str, Any] = {}
    if log:
        extra = {"job_class": data["job"], "job_id": job.job_id, "queue": job.queue_name}
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("start %s %s queue=%s", data["job"], job.job_id, job.queue_name, extra=extra)
    if _keeps_connections():
        _close_old_connections()  # a kept connection may have aged or broken while the thread idled
    began = time.perf_counter()
    signals.send(signals.job_started, job_class, job=job)
    return Started(job, field, raw, log, extra, began)


def finish(started: Started, exc: BaseException | None) -> Settlement:
    """How to settle a job that ran: ack, or what the retry rules say about ``exc``.

    Never raises an ``Exception``: when the retry rules themselves fail (a ``retry_count`` that
    is not a number, a retry payload JSON cannot carry), the job is set aside as dead
    (``worker_error``) with that error, the job's own exception chained to it.
    """
    job, field = started.job, started.field
    settlement: Settlement | None = None
    try:
        if exc is not None:
            settlement = retries.handle_failure(job, field, started.raw, exc)
            outcome = "discarded" if settlement.op == "ack" else settlement.op
            error: str | None = type(exc).__name__
        else:
            settlement = Settlement("ack", field)
            outcome = "ok"
            error = None
            signals.send(signals.job_succeeded, type(job), job=job)
        if started.log:
            elapsed = (time.perf_counter() - started.began) * 1000
            args = (job.job_name, job.job_id, job.queue_name, elapsed, outcome, f" error={error}" if error else "")
            output = plain_output(logger, logging.INFO)
            if output is None:
                _info(FINISH, args, {**started.extra, "elapsed_ms": round(elapsed, 3), "outcome": outcome, "error": error})
            else:  # runworker's own handler and nothing else: the same line without a LogRecord
                output.append(output.formatter.line(time.time(), logging.INFO, logger.name, FINISH % args))
    except Exception as failure:
        if settlement is None:
            if exc is not None and failure.__context__ is None:
                failure.__context__ = exc  # the dead record's traceback shows both
            settlement = _bury(field, started.raw, "worker_error", failure, {**job.payload, "executions": job.executions})
        else:  # the job is settled; only its log line failed (a raising filter or handler)
            traceback.print_exc()
    finally:
        _close_connections()
    return settlement


def _info(msg: str, args: tuple[Any, ...], extra: dict[str, Any]) -> None:
    """``logger.info`` for a level already checked, naming its caller's line without walking the
    stack for it (``findCaller``); the record then goes through the logger's filters and handlers."""
    caller = sys._getframe(1)
    code = caller.f_code
    logger.handle(
        logger.makeRecord(logger.name, logging.INFO, code.co_filename, caller.f_lineno, msg, args, None, code.co_name, extra)
    )


def process(field: str, raw: bytes, log_jobs: bool = True, event_loop: Any = None) -> Settlement | None:
    """Run one fetched job. ``None``: an async job handed to ``event_loop``, settled when it ends.

    Whatever ``perform`` raises, ``SystemExit`` included, goes to the retry rules.
    """
    try:
        started = start(field, raw, log_jobs)
        if isinstance(started, Settlement):
            return started
        if event_loop is not None and started.on_event_loop:
            event_loop.submit(started)
            return None
    except Exception as exc:  # the worker's own steps around the checks (signals, logging, hand-over)
        return _bury(field, raw, "worker_error", exc, None)
    try:
        locks.perform(started.job, field)
    except BaseException as exc:
        return finish(started, exc)
    return finish(started, None)
