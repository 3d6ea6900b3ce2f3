"""Runs one fetched job and says how to settle it: ack, retry, dead, or hand back.

Nothing a payload says can crash this: a payload that is not JSON, names an unknown class or no
longer fits ``perform``'s signature becomes a dead job with that reason.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass
from typing import Any

from django.db import close_old_connections

from django_async_jobs import registry, retries, signals
from django_async_jobs.serialization import MalformedPayload, decode_payload, new_job_id

logger = logging.getLogger("django_async_jobs.job")


@dataclass(frozen=True)
class Settlement:
    """One entry of the settle script: op, in-flight field, two op arguments, and counters."""

    op: str
    field: str
    a: Any = ""
    b: Any = ""
    failed: bool = False

    def args(self) -> tuple[str, str, Any, Any]:
        return (self.op, self.field, self.a, self.b)


def dead_record(field: str, raw: bytes | str, reason: str, exc: BaseException | None, data: dict | None) -> Settlement:
    from django_async_jobs.serialization import encode_payload

    dead_id = new_job_id()
    record = {
        "dead_id": dead_id,
        "job_id": (data or {}).get("jid", field),
        "payload": raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw,
        "reason": reason,
        "died_at": time.time(),
    }
    if exc is not None:
        record["error_class"] = f"{type(exc).__module__}.{type(exc).__qualname__}"
        record["error_message"] = str(exc)
        record["traceback"] = "".join(traceback.format_exception(exc))
    return Settlement("dead", field, dead_id, encode_payload(record), failed=exc is not None)


def _send(signal: Any, sender: type, **kwargs: Any) -> None:
    try:
        signal.send(sender=sender, **kwargs)
    except Exception:
        logger.exception("a %s receiver raised; the job goes on", signal)


def process(field: str, raw: bytes, log_jobs: bool = True) -> Settlement:
    try:
        data = decode_payload(raw)
    except MalformedPayload as exc:
        logger.error("job %s has a malformed payload: %s", field, exc)
        return dead_record(field, raw, "malformed_payload", exc, None)
    job_class = registry.lookup(data["job"])
    if job_class is None:
        logger.error("job %s names an unknown job class %r", data["jid"], data["job"])
        return dead_record(field, raw, "unknown_class", None, data)
    try:
        job = job_class.deserialize(data)
        job._check_arguments()
    except (MalformedPayload, TypeError) as exc:
        logger.error("job %s cannot be rebuilt: %s", data["jid"], exc)
        return dead_record(field, raw, "arguments_mismatch", exc, data)

    log = log_jobs and logger.isEnabledFor(logging.INFO)
    extra = {"job_class": data["job"], "job_id": job.job_id, "queue": job.queue_name}
    if log:
        logger.info("start %s %s queue=%s", data["job"], job.job_id, job.queue_name, extra=extra)
    close_old_connections()
    started = time.perf_counter()
    _send(signals.job_started, job_class, job=job)
    try:
        job.perform_now()
    except Exception as exc:
        settlement = retries.handle_failure(job, field, raw, exc)
        if log:
            elapsed = (time.perf_counter() - started) * 1000
            logger.info(
                "fail %s %s queue=%s elapsed_ms=%.1f outcome=%s error=%s",
                data["job"], job.job_id, job.queue_name, elapsed, settlement.op, type(exc).__name__,
                extra={**extra, "elapsed_ms": elapsed, "outcome": settlement.op},
            )
        return settlement
    finally:
        close_old_connections()
    if log:
        elapsed = (time.perf_counter() - started) * 1000
        logger.info(
            "done %s %s queue=%s elapsed_ms=%.1f", data["job"], job.job_id, job.queue_name, elapsed,
            extra={**extra, "elapsed_ms": elapsed, "outcome": "ack"},
        )
    _send(signals.job_succeeded, job_class, job=job)
    return Settlement("ack", field)
