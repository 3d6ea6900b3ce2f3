"""OpenTelemetry: a producer span at enqueue, its context in the payload, a consumer span around
each execution in a real worker, retries linked to the first; nothing without a tracer provider."""

import json
import logging

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.util._once import Once

from django_async_jobs import tracing
from django_async_jobs.middleware import chain
from tests.helpers import wait_for
from tests.testapp.jobs import IncrJob
from tests.testapp.poison_jobs import PoisonRuleJob

pytestmark = pytest.mark.django_db


def _reset_provider():
    """OpenTelemetry sets its provider once per process; its own test utilities undo it so."""
    trace._TRACER_PROVIDER_SET_ONCE = Once()
    trace._TRACER_PROVIDER = None


@pytest.fixture
def spans(settings, prefix):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _reset_provider()
    trace.set_tracer_provider(provider)
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS}  # chains built from now on see the provider
    yield exporter
    _reset_provider()


def queued(broker):
    [member] = broker.redis.zrange(broker.keys.queue("default"), 0, -1)
    return json.loads(member)


def finished(spans, kind, name=None):
    return [s for s in spans.get_finished_spans() if s.kind is kind and (name is None or s.name.endswith(name))]


def test_the_enqueue_is_a_producer_span_whose_context_travels_in_the_payload(spans, broker, prefix):
    with trace.get_tracer("tests").start_as_current_span("GET /orders") as request:
        job = IncrJob.perform_later(f"{prefix}:n")
    [producer] = finished(spans, SpanKind.PRODUCER)
    assert producer.parent.span_id == request.get_span_context().span_id
    assert producer.name == f"send {IncrJob.job_name}"
    assert dict(producer.attributes) == {
        "messaging.system": "django_async_jobs", "messaging.operation.type": "send",
        "messaging.destination.name": "default", "messaging.message.id": job.job_id,
        "async_jobs.job_class": IncrJob.job_name,
    }
    traceparent = queued(broker)["trace"]["traceparent"]
    assert traceparent.startswith(f"00-{producer.context.trace_id:032x}-{producer.context.span_id:016x}-")


def test_the_worker_runs_the_job_in_a_consumer_span_of_the_same_trace(spans, broker, worker, prefix):
    with trace.get_tracer("tests").start_as_current_span("GET /orders"):
        job = IncrJob.perform_later(f"{prefix}:n")
    wait_for(lambda: finished(spans, SpanKind.CONSUMER), 30, "the consumer span")
    [producer] = finished(spans, SpanKind.PRODUCER)
    [consumer] = finished(spans, SpanKind.CONSUMER)
    assert consumer.context.trace_id == producer.context.trace_id
    assert consumer.parent.span_id == producer.context.span_id
    assert consumer.name == f"process {IncrJob.job_name}"
    assert consumer.attributes["messaging.operation.type"] == "process"
    assert consumer.attributes["messaging.message.id"] == job.job_id
    assert consumer.attributes["async_jobs.outcome"] == "ok" and consumer.status.status_code is StatusCode.UNSET


def test_a_failure_is_recorded_and_each_retry_is_a_new_span_linked_to_the_first(spans, broker, worker, prefix):
    PoisonRuleJob.perform_later("x")  # fails, is retried at once, fails again: dead
    wait_for(lambda: len(finished(spans, SpanKind.CONSUMER)) == 2, 30, "two executions")
    first, second = sorted(finished(spans, SpanKind.CONSUMER), key=lambda s: s.start_time)
    for span in (first, second):
        assert span.status.status_code is StatusCode.ERROR
        [event] = [e for e in span.events if e.name == "exception"]
        assert event.attributes["exception.type"] == "ValueError"
    assert (first.attributes["async_jobs.outcome"], second.attributes["async_jobs.outcome"]) == ("retry", "dead")
    assert first.links == () or list(first.links) == []
    [link] = second.links
    assert link.context.span_id == first.context.span_id
    assert second.context.trace_id == first.context.trace_id  # both children of the enqueue's span


def test_a_carrier_that_is_not_one_never_breaks_the_job(spans, broker, worker, prefix):
    payload = {"jid": "j1", "job": IncrJob.job_name, "queue": "default", "args": [f"{prefix}:n"],
               "trace": {"traceparent": 5, "x": ["y"]}, "trace_first": "nonsense"}
    broker.push([json.dumps(payload)])
    wait_for(lambda: broker.redis.get(f"{prefix}:n") == b"1", 30, "the job")
    wait_for(lambda: finished(spans, SpanKind.CONSUMER), 30, "its span")
    [consumer] = finished(spans, SpanKind.CONSUMER)
    assert consumer.parent is None and list(consumer.links) == []


def test_without_a_tracer_provider_there_is_no_layer_and_no_carrier(settings, broker, prefix):
    _reset_provider()
    assert not tracing.configured() and not tracing.Tracing().applies_to(IncrJob)
    assert tracing.Tracing not in [type(layer) for layer in chain.layers(IncrJob, "enqueue")]
    IncrJob.perform_later(f"{prefix}:n")
    assert "trace" not in queued(broker)


def test_the_json_log_line_carries_the_trace_id(spans, broker, worker, prefix, settings, caplog):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "LOG_FORMAT": "json"}
    with caplog.at_level(logging.INFO, logger="django_async_jobs.job"):
        job = IncrJob.perform_later(f"{prefix}:n")
        wait_for(lambda: finished(spans, SpanKind.CONSUMER), 30, "the consumer span")
    [consumer] = finished(spans, SpanKind.CONSUMER)
    [line] = [json.loads(r.getMessage()) for r in caplog.records if job.job_id in r.getMessage()]
    assert line["trace_id"] == f"{consumer.context.trace_id:032x}"
