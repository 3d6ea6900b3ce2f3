"""The load the dashboard's speed is measured under, and how a page is timed: one definition for
the bar in the suite (test_dashboard_perf.py) and the figures in the docs (bench/dashboard.py)."""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime
from typing import Any

from django_async_jobs.serialization import encode_payload, new_job_id
from tests.testapp.jobs import IncrJob

METRICS_HOURS = 72


def payload(i: int, **extra: object) -> str:
    return encode_payload({"jid": new_job_id(), "job": IncrJob.job_name, "queue": "default",
                           "args": [f"customer-{i}@example.com", i], "enqueued_at": time.time(), **extra})


def seed(broker: Any, queued: int, in_sets: int, dead: int, batches: int = 0, metric_classes: int = 0) -> None:
    """``queued`` jobs in one queue (one priority band, as enqueues make it), ``in_sets``
    scheduled and as many retries (a second apart), ``dead`` dead rows; ``batches`` batches of
    20 jobs with a callback (their jobs in queue "batches"); ``metric_classes`` job classes
    that ran every minute of the last ``METRICS_HOURS`` hours."""
    from django_async_jobs.batches import Batch
    from django_async_jobs.models import DeadJob

    for start in range(0, queued, 5000):  # the real push step, 5,000 payloads a call
        broker.push([payload(i) for i in range(start, min(start + 5000, queued))])
    now = time.time()
    for key in (broker.keys.schedule, broker.keys.retry):
        broker.redis.zadd(key, {
            payload(i, error_class="RuntimeError", error_message=f"boom {i}", retry_count=3): now + 60 + i
            for i in range(in_sets)
        })
    died = datetime.now(UTC)
    DeadJob.objects.bulk_create(
        [DeadJob(dead_id=f"d{i}", job_id=f"j{i}", job_class=IncrJob.job_name, queue="default", died_at=died,
                 reason="retries_exhausted", error_class="RuntimeError", payload=payload(i)) for i in range(dead)],
        batch_size=2000,
    )
    for n in range(batches):
        batch = Batch(description=f"Import of customers-{n}.csv")
        batch.on("complete", IncrJob, "imports:done")
        with batch.jobs():
            IncrJob.perform_bulk([(f"imports:{n}", i) for i in range(20)], queue="batches")
    if metric_classes:
        _seed_metrics(broker, metric_classes, now)


def _seed_metrics(broker: Any, classes: int, now: float) -> None:
    """Every minute of the window: per class 100 runs, 2 failures, execution times and latencies
    over a few histogram buckets, as a busy worker's heartbeats write them."""
    last = int(now // 60)
    minutes = range(last - METRICS_HOURS * 60 + 1, last + 1)
    for start in range(0, len(minutes), 60):  # an hour of minutes a call
        increments = {}
        for minute in minutes[start:start + 60]:
            fields = {}
            for c in range(classes):
                name = f"reports.jobs.Report{c}Job"
                fields.update({f"{name}|r": "100", f"{name}|f": "2", f"{name}|ms": "4210.500",
                               f"{name}|lat": "812.250", f"{name}|latn": "100"})
                fields.update({f"{name}|h{b}": str(10 + b) for b in range(8, 13)})
                fields.update({f"{name}|l{b}": str(15 + b) for b in range(4, 8)})
            increments[minute] = fields
        broker.record_metrics(increments, METRICS_HOURS * 3600, now)


def pages(broker: Any) -> dict[str, str]:
    """The pages timed, by name: every page, the searches, jobs found from a list and by their
    id alone (one deep in the queue, one in the middle of the retries), the metrics' windows."""
    from django.urls import reverse

    from django_async_jobs import api

    [retry] = api.page_of(broker.keys.retry, 5000, 1, broker).entries
    [queued] = api.page_of(broker.keys.queue("default"), 2000, 1, broker).entries
    job_page = reverse("admin:async_jobs_job", args=[retry.job_id])
    queue = reverse("admin:async_jobs_queue", args=["default"])
    metrics = reverse("admin:async_jobs_metrics")
    return {
        "overview": reverse("admin:async_jobs_overview"),
        "stats.json (live refresh)": reverse("admin:async_jobs_stats"),
        "queues": reverse("admin:async_jobs_queues"),
        "queue, page 1": queue,
        "queue, page 4,000": queue + "?page=4000",
        "queue, argument search": queue + "?q=customer-99999@",
        "busy": reverse("admin:async_jobs_busy"),
        "scheduled, page 200": reverse("admin:async_jobs_scheduled") + "?page=200",
        "retries": reverse("admin:async_jobs_retries"),
        "retries, error search": reverse("admin:async_jobs_retries") + "?error=boom 9999",
        "recurring": reverse("admin:async_jobs_recurring"),
        "limits": reverse("admin:async_jobs_blocked"),
        "job page, from a list": f"{job_page}?where=retries&ref={retry.ref}",
        "job page, queued, by id alone": reverse("admin:async_jobs_job", args=[queued.job_id]),
        "job page, retrying, by id alone": job_page,
        "batches, page 1": reverse("admin:async_jobs_batches"),
        "batches, page 40": reverse("admin:async_jobs_batches") + "?page=40",
        "metrics, 1 hour": metrics,
        "metrics, 72 hours": f"{metrics}?minutes=4320",
        "metrics, one class, 72 hours": f"{metrics}?minutes=4320&class=reports.jobs.Report0Job",
        "dead jobs (DeadJob admin)": reverse("admin:django_async_jobs_deadjob_changelist"),
    }


def render_times(client: Any, url: str, runs: int) -> tuple[float, float, float]:
    """A page rendered once to warm up (templates, connections), then ``runs`` times with the
    test client: (fastest, median) wall time of the whole request and the CPU time of the
    fastest, in ms."""
    assert client.get(url).status_code == 200, url
    wall, cpu = [], []
    for _ in range(runs):
        started, started_cpu = time.perf_counter(), time.process_time()
        response = client.get(url)
        wall.append((time.perf_counter() - started) * 1000)
        cpu.append((time.process_time() - started_cpu) * 1000)
        assert response.status_code == 200, url
    fastest = min(range(runs), key=wall.__getitem__)
    return wall[fastest], statistics.median(wall), cpu[fastest]
