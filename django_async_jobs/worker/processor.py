"""Runs one fetched job: decode it, run it through the worker's perform chain, say how to settle.

The worker's chain for a job class is its perform chain (``middleware/chain.py``: the
project's and the class's middleware, idempotency markers, callbacks) inside the worker's own
layers, outermost first: ``Tracing`` (the consumer span, with a tracer provider), ``JobLog``
(the log line), ``Metrics`` (per-class metrics), ``Exporter`` (Prometheus, once enabled),
``BatchMembership`` (a cancelled batch's job dropped; a batch job's outcome carries its batch's
keys to the settle step), the flow-control layers (``flow.py``: a job past its deadline ends as
expired, one whose concurrency limit is full as blocked),
``DatabaseConnections``, ``JobSignals`` (``job_started`` / ``job_succeeded``), ``RetryPolicy``
(every exception becomes an outcome: retry, discard or dead), ``Cancellation`` (a cancelled
job dropped or stopped, ``job_cancelled``) and ``UniqueJobs`` (run locks). The job's
``outcome`` then says how to settle it: ack, retry, dead, reschedule or expire, in the acker's
next batch.

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
import threading
import time
import traceback
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from django.core.signals import setting_changed

from django_async_jobs import (
    batches,
    flow,
    locks,
    metrics,
    prometheus,
    registry,
    resumable,
    retries,
    signals,
    tracing,
)
from django_async_jobs.middleware import chain
from django_async_jobs.serialization import decode_payload, new_job_id, payload_bytes
from django_async_jobs.worker.connections import DatabaseConnections
from django_async_jobs.worker.job_log import JobLog

logger = logging.getLogger("django_async_jobs.job")


class UnknownJobClass(LookupError):
    """A payload names a job no installed app's jobs.py registers."""


@dataclass(frozen=True)
class Settlement:
    """One entry of the settle script: op, in-flight field, two op arguments, and counters;
    ``keys``: the Redis keys of the job's concurrency limit, which the step frees a place of."""

    op: str
    field: str
    a: Any = ""
    b: Any = ""
    failed: bool = False
    keys: tuple[str, ...] = ()

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


def bury(field: str, raw: bytes, reason: str, exc: BaseException, data: dict[str, Any] | None) -> Settlement:
    """A job set aside: dead at once, with death handlers and the signal."""
    logger.error("job %s is dead (%s): %s", field, reason, _message(exc))
    job_class = registry.lookup(data["job"]) if data and isinstance(data.get("job"), str) else None
    retries.call_handlers("DEATH_HANDLERS", data or {}, exc)
    signals.send(signals.job_died, job_class, job=None, exception=exc, reason=reason)
    return dead_record(field, raw, reason, exc, data)


# -- the worker's chain ------------------------------------------------------------------------------


class JobSignals:
    """``job_started`` before the job, ``job_succeeded`` after one that succeeded (the retry
    rules send the failure signals; a job put back or dropped, e.g. at a checkpoint, has neither).
    Left out of a class's chain while neither signal has a receiver for it."""

    def applies_to(self, job_class: type) -> bool:
        return signals.job_started.has_listeners(job_class) or signals.job_succeeded.has_listeners(job_class)

    def perform(self, job: Any, call_next: Callable[[Any], Any]) -> Any:
        signals.send(signals.job_started, type(job), job=job)
        result = call_next(job)
        if job.outcome is retries.SUCCEEDED:
            signals.send(signals.job_succeeded, type(job), job=job)
        return result

    async def aperform(self, job: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        signals.send(signals.job_started, type(job), job=job)
        result = await call_next(job)
        if job.outcome is retries.SUCCEEDED:
            signals.send(signals.job_succeeded, type(job), job=job)
        return result


# Outermost first; each layer applies only to the classes it serves (``applies_to``).
WORKER_LAYERS: tuple[Any, ...] = (
    tracing.Tracing(), JobLog(), metrics.Metrics(), prometheus.Exporter(), batches.BatchMembership(), flow.Expiry(),
    flow.ConcurrencyLimits(), DatabaseConnections(), JobSignals(), retries.RetryPolicy(), resumable.Cancellation(),
    locks.UniqueJobs(),
)


@dataclass(frozen=True)
class WorkerChain:
    """A job class's chain in the worker: on a thread, and on the event loop when every layer
    (and ``perform``) can run there."""

    run: Callable[[Any], Any]
    arun: Callable[[Any], Awaitable[Any]] | None


_chains: dict[type, WorkerChain] = {}
_chains_lock = threading.Lock()


def worker_chain(job_class: type) -> WorkerChain:
    found = _chains.get(job_class)
    if found is None:
        with _chains_lock:
            layers = [
                *(layer for layer in WORKER_LAYERS if _applies(layer, job_class)),
                *chain.perform_layers(job_class),
            ]
            arun = None
            if job_class._is_async and all(chain.runs_async(layer, job_class) for layer in layers):
                arun = chain.acompose([layer.aperform for layer in layers], chain.acall_perform)
            found = _chains[job_class] = WorkerChain(chain.compose([layer.perform for layer in layers], chain.call_perform), arun)
    return found


def _applies(layer: Any, job_class: type) -> bool:
    applies = getattr(layer, "applies_to", None)
    return applies is None or applies(job_class)


def _forget_chains() -> None:
    with _chains_lock:
        _chains.clear()


def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "ASYNC_JOBS":
        _forget_chains()


setting_changed.connect(_settings_changed, dispatch_uid="django_async_jobs.worker.processor")
signals.watch_receivers(_forget_chains)


# -- one job ---------------------------------------------------------------------------------------


def start(field: str, raw: bytes) -> Settlement | Any:
    """Decode and check a fetched job: the job, or a ``Settlement`` if it cannot even start."""
    try:
        data = decode_payload(raw)
    except Exception as exc:
        return bury(field, raw, "malformed_payload", exc, None)
    job_class = registry.lookup(data["job"])
    if job_class is None:
        exc = UnknownJobClass(f"no registered job is named {data['job'][:200]!r}")
        return bury(field, raw, "unknown_class", exc, data)
    try:
        job = job_class.deserialize(data)
        job._check_arguments()
    except Exception as exc:  # MalformedPayload, TypeError, or whatever a tagged value raises
        return bury(field, raw, "arguments_mismatch", exc, data)
    job.fetched_as = field
    job.executions += 1
    return job


# Outcomes of the flow-control layers that are not an ack: the settle step's op for each.
FLOW_OPS = {flow.EXPIRED: "expire", flow.BLOCKED: "block"}


def settle(job: Any, raw: bytes) -> Settlement:
    """How to settle a job its chain ran: from its ``outcome`` (whose ``keys`` are a concurrency
    limit's, for the step to free the job's place)."""
    outcome = job.outcome
    field = job.fetched_as
    if outcome.name == "retry":
        return Settlement("retry", field, outcome.run_at, outcome.payload, failed=True, keys=outcome.keys)
    if outcome.name == "dead":
        return replace(dead_record(field, raw, outcome.reason, outcome.error, outcome.data), keys=outcome.keys)
    if outcome.payload:  # a Reschedule: back in the schedule, or its queue when due now
        return Settlement("reschedule", field, outcome.run_at, outcome.payload, keys=outcome.keys)
    if outcome.name in FLOW_OPS:
        return Settlement(FLOW_OPS[outcome.name], field, keys=outcome.keys)
    return Settlement("ack", field, failed=outcome.failed, keys=outcome.keys)


def worker_error(job: Any, raw: bytes, failure: Exception) -> Settlement:
    """A job whose worker-side steps failed (the retry rules themselves, a signal receiver...):
    set aside as dead, with the job's own exception chained in the traceback."""
    return bury(job.fetched_as, raw, "worker_error", failure, {**job.payload, "executions": job.executions})


def process(field: str, raw: bytes, event_loop: Any = None) -> Settlement | None:
    """Run one fetched job. ``None``: an async job handed to ``event_loop``, settled when it ends.

    Whatever ``perform`` raises, ``SystemExit`` included, goes to the retry rules.
    """
    try:
        job = start(field, raw)
        if isinstance(job, Settlement):
            return job
        chains = worker_chain(type(job))
        if event_loop is not None and chains.arun is not None:
            event_loop.submit(job, raw, chains.arun)
            return None
    except Exception as exc:  # the worker's own steps around the checks (building the chain, the hand-over)
        return bury(field, raw, "worker_error", exc, None)
    try:
        chains.run(job)
        return settle(job, raw)
    except Exception as failure:
        return worker_error(job, raw, failure)
