"""The per-job log line: one INFO record when a job finishes, with its time and outcome.

``finish <job> <id> queue=<q> elapsed_ms=<ms> outcome=<ok|retry|dead|discarded> [error=<class>]``,
with ``job_class``, ``job_id``, ``queue``, ``elapsed_ms``, ``outcome`` and ``error`` as record
attributes for structured handlers. The start line is DEBUG: two formatted records per job were
a quarter of a busy worker's CPU. ``LOG_JOBS = False`` leaves the layer out.

``LOG_FORMAT = "json"``: the message is one JSON object instead (those fields, the error's
message, the executions and the trace id of the job's span, ``tracing.py``), for log pipelines
that parse lines (Datadog, Loki); ``logs.JsonFormatter`` writes the record's other fields around it.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from django_async_jobs import tracing
from django_async_jobs.conf import get_settings
from django_async_jobs.worker.logs import JOB_EVENT, plain_output

logger = logging.getLogger("django_async_jobs.job")
FINISH = "finish %s %s queue=%s elapsed_ms=%.1f outcome=%s%s"


class JobLog:
    """The worker's outermost perform layer: it times the whole execution, settling included.

    It runs for every job, so the format is read when a chain is built (chains are built again
    when ``ASYNC_JOBS`` changes), and the record's fields only made when a record is."""

    json = False

    def applies_to(self, job_class: type) -> bool:
        settings = get_settings()
        self.json = settings.log_format == "json"
        return settings.log_jobs

    def perform(self, job: Any, call_next: Callable[[Any], Any]) -> Any:
        if not logger.isEnabledFor(logging.INFO):
            return call_next(job)
        if logger.isEnabledFor(logging.DEBUG):
            _start(job)
        began = time.perf_counter()
        result = call_next(job)
        self.finish(job, began)
        return result

    async def aperform(self, job: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        if not logger.isEnabledFor(logging.INFO):
            return await call_next(job)
        if logger.isEnabledFor(logging.DEBUG):
            _start(job)
        began = time.perf_counter()
        result = await call_next(job)
        self.finish(job, began)
        return result

    def finish(self, job: Any, began: float) -> None:
        outcome = job.outcome
        error = type(outcome.error).__name__ if outcome.error is not None else None
        elapsed = (time.perf_counter() - began) * 1000
        if self.json:
            _json_line(job, elapsed, error)
            return
        args = (job.job_name, job.job_id, job.queue_name, elapsed, outcome.name, f" error={error}" if error else "")
        try:
            output = plain_output(logger, logging.INFO)
            if output is None:
                _info(FINISH, args, {**_fields(job), "elapsed_ms": round(elapsed, 3), "outcome": outcome.name, "error": error})
            else:  # runworker's own handler and nothing else: the same line without a LogRecord
                output.append(output.formatter.line(time.time(), logging.INFO, logger.name, FINISH % args))
        except Exception:  # the job is settled; only its log line failed (a raising filter or handler)
            traceback.print_exc()


def _fields(job: Any) -> dict[str, Any]:
    return {"job_class": job.job_name, "job_id": job.job_id, "queue": job.queue_name}


def _start(job: Any) -> None:
    logger.debug("start %s %s queue=%s", job.job_name, job.job_id, job.queue_name, extra=_fields(job))


def _json_line(job: Any, elapsed: float, error: str | None) -> None:
    outcome = job.outcome
    event = {
        "event": "job_finished", **_fields(job), "elapsed_ms": round(elapsed, 3), "outcome": outcome.name,
        "error": error, "error_message": _message(outcome.error), "executions": job.executions,
        "trace_id": tracing.current_trace_id(),
    }
    try:
        _info("%s", (json.dumps(event, ensure_ascii=False, default=str),), {**event, JOB_EVENT: event})
    except Exception:  # the job is settled; only its log line failed
        traceback.print_exc()


def _message(error: BaseException | None) -> str | None:
    if error is None:
        return None
    try:
        return str(error)[:1000]
    except Exception:
        return f"<{type(error).__name__} whose message cannot be read>"


def _info(msg: str, args: tuple[Any, ...], extra: dict[str, Any]) -> None:
    """``logger.info`` for a level already checked, naming its caller's line without walking the
    stack for it (``findCaller``); the record then goes through the logger's filters and handlers."""
    caller = sys._getframe(1)
    code = caller.f_code
    logger.handle(
        logger.makeRecord(logger.name, logging.INFO, code.co_filename, caller.f_lineno, msg, args, None, code.co_name, extra)
    )
