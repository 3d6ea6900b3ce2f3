"""Prometheus metrics (the optional extra ``prometheus``: ``prometheus_client``).

Two sources, each scraped where it lives:

* **the workers** (``runworker --metrics-port 9100``): counters and histograms per job class and
  queue, from the ``Exporter`` layer of the worker's chain, and the process's busy threads.
  With ``--processes N`` every child writes to ``PROMETHEUS_MULTIPROC_DIR`` (the
  ``prometheus_client`` multiprocess mode) and the supervisor serves their sum;
* **Redis** (the view, ``path("metrics/jobs", views.prometheus_metrics)``): gauges read at each
  scrape: queue sizes and latencies, scheduled, retries, dead, processes and busy threads, plus
  the workers' counters when the web process shares their ``PROMETHEUS_MULTIPROC_DIR``.

The layer applies only once ``enable()`` ran (``--metrics-port`` calls it): a worker that
exports nothing pays nothing, nor does one without the package.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

from django_async_jobs import api, metrics

try:
    import prometheus_client
    from prometheus_client import multiprocess
    from prometheus_client.core import GaugeMetricFamily
except ImportError:  # the extra is not installed: nothing here is used
    prometheus_client = None

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
LABELS = ("job_class", "queue")
DURATION_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, float("inf"))
LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 900, 3600, float("inf"))
MISSING = "Prometheus metrics need the prometheus extra: pip install 'django-async-jobs[prometheus]'."


@dataclass(frozen=True)
class WorkerMetrics:
    processed: Any
    failed: Any
    retried: Any
    dead: Any
    expired: Any
    duration: Any
    latency: Any
    busy: Any


_metrics: WorkerMetrics | None = None


def available() -> bool:
    return prometheus_client is not None


def enable() -> WorkerMetrics:
    """Create the workers' metrics (in the default registry, or the multiprocess files) and put
    the ``Exporter`` layer in the chains built from now on."""
    global _metrics
    if prometheus_client is None:
        raise RuntimeError(MISSING)
    if _metrics is None:
        counter, histogram = prometheus_client.Counter, prometheus_client.Histogram
        _metrics = WorkerMetrics(
            processed=counter("async_jobs_jobs_processed", "Jobs that ran (whatever their outcome).", LABELS),
            failed=counter("async_jobs_jobs_failed", "Jobs that raised: retried, dead or discarded.", LABELS),
            retried=counter("async_jobs_jobs_retried", "Jobs that failed and wait for a retry.", LABELS),
            dead=counter("async_jobs_jobs_dead", "Jobs that died (out of retries, or set aside).", LABELS),
            expired=counter("async_jobs_jobs_expired", "Jobs dropped unstarted past their deadline.", LABELS),
            duration=histogram(
                "async_jobs_job_duration_seconds", "Execution time of the jobs that ran.", LABELS,
                buckets=DURATION_BUCKETS,
            ),
            latency=histogram(
                "async_jobs_job_latency_seconds", "From due (enqueue, or run-at) to start.", LABELS,
                buckets=LATENCY_BUCKETS,
            ),
            busy=prometheus_client.Gauge(
                "async_jobs_process_busy_threads", "Jobs running in this worker process now.",
                multiprocess_mode="livesum",
            ),
        )
    return _metrics


class Exporter:
    """The worker layer, next to ``metrics.Metrics``: counts and times each job for Prometheus."""

    def applies_to(self, job_class: type) -> bool:
        return _metrics is not None

    def perform(self, job: Any, call_next: Callable[[Any], Any]) -> Any:
        m = _metrics
        m.busy.inc()
        began = time.time()
        try:
            result = call_next(job)
        finally:
            m.busy.dec()
        _record(m, job, began, time.time())
        return result

    async def aperform(self, job: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        m = _metrics
        m.busy.inc()
        began = time.time()
        try:
            result = await call_next(job)
        finally:
            m.busy.dec()
        _record(m, job, began, time.time())
        return result


def _record(m: WorkerMetrics, job: Any, began: float, ended: float) -> None:
    labels = (job.job_name, job.queue_name)
    outcome = job.outcome
    name = outcome.name
    if not metrics.ran(outcome):
        if name == "expired":
            m.expired.labels(*labels).inc()
        return
    m.processed.labels(*labels).inc()
    m.duration.labels(*labels).observe(ended - began)
    latency = metrics.queue_latency(job, began)
    if latency is not None:
        m.latency.labels(*labels).observe(latency)
    if outcome.failed:
        m.failed.labels(*labels).inc()
    if name == "retry":
        m.retried.labels(*labels).inc()
    elif name == "dead":
        m.dead.labels(*labels).inc()


# -- serving ---------------------------------------------------------------------------------------


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower()) or None


def worker_registry() -> Any:
    """What a worker's port serves: this process's metrics, or with ``PROMETHEUS_MULTIPROC_DIR``
    the sum over every process writing there."""
    if multiprocess_dir() is None:
        return prometheus_client.REGISTRY
    registry = prometheus_client.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


def serve(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104  (scraped from other hosts)
    """Serve ``/metrics`` on ``port`` from a daemon thread (``runworker --metrics-port``)."""
    enable()
    prometheus_client.start_http_server(port, addr=addr, registry=worker_registry())


def process_gone(pid: int) -> None:
    """A worker process of the supervisor ended: its live gauges stop counting."""
    if prometheus_client is not None and multiprocess_dir() is not None:
        multiprocess.mark_process_dead(pid)


class RedisCollector:
    """Gauges read from Redis at each scrape: the state of the whole system, not one process's."""

    def collect(self) -> Iterator[Any]:
        stats = api.stats()
        queues = api.queues()
        size = GaugeMetricFamily("async_jobs_queue_size", "Jobs waiting in the queue.", labels=["queue"])
        latency = GaugeMetricFamily(
            "async_jobs_queue_latency_seconds", "Age of the queue's next job.", labels=["queue"]
        )
        for queue in queues:
            size.add_metric([queue.name], queue.size)
            latency.add_metric([queue.name], queue.latency)
        yield size
        yield latency
        for name, text, value in (
            ("async_jobs_scheduled_jobs", "Jobs waiting for their run-at.", stats.scheduled),
            ("async_jobs_retry_jobs", "Jobs waiting for a retry.", stats.retries),
            ("async_jobs_dead_jobs", "Dead jobs (database and staged).", stats.dead),
            ("async_jobs_worker_processes", "Live worker processes.", stats.processes),
            ("async_jobs_busy_threads", "Jobs running now, over every worker process.", stats.busy),
            ("async_jobs_concurrency", "Threads of every worker process.", stats.concurrency),
        ):
            yield GaugeMetricFamily(name, text, value=value)


def exposition() -> tuple[bytes, str]:
    """The view's page: Redis's gauges, and the workers' metrics when this host has their
    multiprocess directory. Returns (body, content type)."""
    if prometheus_client is None:
        raise RuntimeError(MISSING)
    registry = prometheus_client.CollectorRegistry()
    registry.register(RedisCollector())
    if multiprocess_dir() is not None:
        multiprocess.MultiProcessCollector(registry)
    return prometheus_client.generate_latest(registry), prometheus_client.CONTENT_TYPE_LATEST
