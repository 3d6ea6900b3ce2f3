"""OpenTelemetry tracing (the optional extra ``opentelemetry``: ``opentelemetry-api``).

A **producer** span around each enqueue, whose context travels in the payload (``trace``: the
carrier of the configured propagator, W3C ``traceparent`` by default), and a **consumer** span
around each execution in the worker, a child of it: the web request, its enqueue and the job
are one trace. Attributes follow the messaging semantic conventions: ``messaging.system`` is
``django_async_jobs``, ``messaging.destination.name`` the queue, ``messaging.message.id`` the
job id, ``messaging.operation.type`` ``send`` or ``process``. A job that raised has the
exception recorded and an error status. Each retry is a new consumer span, linked to the
first execution's (``trace_first`` in the payload).

No cost without the package or a configured tracer provider: ``applies_to`` is False and the
chains leave the layer out (the provider must be set before the first job of a class is
enqueued or run in the process, as OpenTelemetry's own instrumentations expect).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, SpanKind, StatusCode
except ImportError:  # the extra is not installed: no layer applies
    trace = None

logger = logging.getLogger("django_async_jobs.worker")

SYSTEM = "django_async_jobs"
CARRIER = "trace"  # payload field: the enqueue's span context
FIRST = "trace_first"  # payload field: the first execution's span context, for the retries' links


def configured() -> bool:
    """Whether spans would go anywhere: the package is there and a tracer provider was set."""
    if trace is None:
        return False
    return not isinstance(trace.get_tracer_provider(), (trace.ProxyTracerProvider, trace.NoOpTracerProvider))


def current_trace_id() -> str | None:
    """The current span's trace id as 32 hex digits (for log lines), None outside a trace."""
    if trace is None:
        return None
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def _tracer() -> Any:
    return trace.get_tracer(SYSTEM)


def _attributes(job: Any, operation: str) -> dict[str, Any]:
    return {
        "messaging.system": SYSTEM,
        "messaging.operation.type": operation,
        "messaging.destination.name": job.queue_name or "",
        "messaging.message.id": job.job_id,
        "async_jobs.job_class": job.job_name,
    }


def _extract(carrier: Any) -> Any:
    """The context a payload's carrier holds; None for anything that is not a carrier of strings
    (a payload is input: it never breaks the job)."""
    if not isinstance(carrier, dict):
        return None
    clean = {k: v for k, v in carrier.items() if isinstance(k, str) and isinstance(v, str) and len(v) <= 512}
    if not clean:
        return None
    try:
        return propagate.extract(clean)
    except Exception:
        return None


class Tracing:
    """The producer span (enqueue chain) and the consumer span (the worker's outermost layer)."""

    def applies_to(self, job_class: type) -> bool:
        return configured()

    def enqueue(self, job: Any, call_next: Callable[[Any], Any]) -> Any:
        with _tracer().start_as_current_span(
            f"send {job.job_name}", kind=SpanKind.PRODUCER, attributes=_attributes(job, "send")
        ):
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            job.payload[CARRIER] = carrier
            return call_next(job)

    def _start(self, job: Any) -> tuple[Any, Any]:
        parent = _extract(job.payload.get(CARRIER))
        links = []
        first = _extract(job.payload.get(FIRST))
        if first is not None:
            linked = trace.get_current_span(first).get_span_context()
            if linked.is_valid:
                links.append(Link(linked))
        attributes = _attributes(job, "process")
        attributes["async_jobs.executions"] = job.executions
        span = _tracer().start_span(
            f"process {job.job_name}", context=parent, kind=SpanKind.CONSUMER, links=links, attributes=attributes
        )
        context = trace.set_span_in_context(span, parent)
        if FIRST not in job.payload:  # the first execution: its retries link to this span
            carrier: dict[str, str] = {}
            propagate.inject(carrier, context=context)
            job.payload[FIRST] = carrier
        return span, otel_context.attach(context)

    @staticmethod
    def _end(job: Any, span: Any, token: Any) -> None:
        otel_context.detach(token)
        outcome = getattr(job, "outcome", None)
        if outcome is not None:
            span.set_attribute("async_jobs.outcome", outcome.name)
            if outcome.error is not None:
                span.record_exception(outcome.error)
                span.set_status(StatusCode.ERROR, f"{type(outcome.error).__name__}: {outcome.name}")
        span.end()

    def perform(self, job: Any, call_next: Callable[[Any], Any]) -> Any:
        span, token = self._start(job)
        try:
            return call_next(job)
        finally:
            self._end(job, span, token)

    async def aperform(self, job: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        span, token = self._start(job)
        try:
            return await call_next(job)
        finally:
            self._end(job, span, token)
