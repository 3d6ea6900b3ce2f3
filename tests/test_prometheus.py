"""Prometheus: the view's Redis gauges (staff or token), a worker's counters and histograms, and
``runworker --processes 2 --metrics-port`` serving the sum of its processes."""

import json
import re
import time
import urllib.request

import pytest
from django.contrib.auth.models import User
from django.core.management import CommandError, call_command
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from django_async_jobs import prometheus
from django_async_jobs.checks import check_settings
from django_async_jobs.worker import processor
from tests.helpers import ROOT, free_port, wait_for
from tests.testapp.flow_jobs import ExpiringJob
from tests.testapp.jobs import FailJob, IncrJob

pytestmark = pytest.mark.django_db
TOKEN = "a-token-of-sixteen-characters-or-more"


def samples(text):
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text) for s in family.samples
    }


def test_the_view_needs_staff_or_the_token(client, broker, settings):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "PROMETHEUS_TOKEN": TOKEN}
    assert client.get("/metrics/jobs").status_code == 403
    client.force_login(User.objects.create_user("visitor"))
    assert client.get("/metrics/jobs").status_code == 403
    assert client.get("/metrics/jobs", headers={"Authorization": "Bearer wrong"}).status_code == 403
    assert client.get("/metrics/jobs", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    client.force_login(User.objects.create_user("operator", is_staff=True))
    assert client.get("/metrics/jobs").status_code == 200


def test_the_view_gives_queue_sizes_and_the_system_gauges(client, broker, prefix):
    for i in range(3):
        IncrJob.set(queue="low").perform_later(f"{prefix}:n", i)
    IncrJob.set(wait=3600).perform_later(f"{prefix}:n")
    client.force_login(User.objects.create_user("operator", is_staff=True))
    response = client.get("/metrics/jobs")
    assert response["Content-Type"].startswith("text/plain")
    found = samples(response.content.decode())
    assert found[("async_jobs_queue_size", (("queue", "low"),))] == 3
    assert found[("async_jobs_scheduled_jobs", ())] == 1
    assert found[("async_jobs_retry_jobs", ())] == 0 and found[("async_jobs_worker_processes", ())] == 0


def test_a_worker_counts_and_times_each_class_and_queue(broker, prefix, worker):
    prometheus.enable()
    processor._chains.clear()  # chains built before enable() have no exporter
    labels = {"job_class": IncrJob.job_name, "queue": "default"}
    fail_labels = {"job_class": FailJob.job_name, "queue": "default"}
    expired_labels = {"job_class": ExpiringJob.job_name, "queue": "default"}

    def value(name, which=labels):
        return REGISTRY.get_sample_value(name, which) or 0

    before = {n: value(n) for n in ("async_jobs_jobs_processed_total", "async_jobs_job_duration_seconds_count",
                                     "async_jobs_job_latency_seconds_count")}
    failed = value("async_jobs_jobs_failed_total", fail_labels), value("async_jobs_jobs_retried_total", fail_labels)
    expired = value("async_jobs_jobs_expired_total", expired_labels)
    IncrJob.perform_later(f"{prefix}:n")
    IncrJob.perform_later(f"{prefix}:n")
    FailJob.perform_later(f"{prefix}:f")
    ExpiringJob.set(wait_until=time.time() - 120).perform_later(f"{prefix}:e")  # past its deadline
    wait_for(lambda: value("async_jobs_jobs_processed_total") - before["async_jobs_jobs_processed_total"] == 2
             and value("async_jobs_jobs_retried_total", fail_labels) > failed[1]
             and value("async_jobs_jobs_expired_total", expired_labels) > expired, 30, "the counters")
    for name in before:
        assert value(name) - before[name] == 2
    assert value("async_jobs_jobs_failed_total", fail_labels) - failed[0] == 1
    assert REGISTRY.get_sample_value("async_jobs_process_busy_threads") == 0


def test_runworker_refuses_processes_without_a_multiprocess_dir(monkeypatch, broker):
    monkeypatch.delenv(prometheus.MULTIPROC_ENV, raising=False)
    with pytest.raises(CommandError, match="PROMETHEUS_MULTIPROC_DIR"):
        call_command("runworker", "--processes", "2", "--metrics-port", str(free_port()))


def test_a_short_token_is_refused_by_the_check(settings):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "PROMETHEUS_TOKEN": "short"}
    assert "async_jobs.E015" in [e.id for e in check_settings()]


def test_the_supervisor_serves_the_sum_of_its_processes(spawn, broker, prefix, tmp_path, monkeypatch):
    directory = tmp_path / "prometheus"
    directory.mkdir()
    monkeypatch.setenv(prometheus.MULTIPROC_ENV, str(directory))
    port = free_port()
    proc = spawn("--processes", "2", "--metrics-port", str(port))
    for i in range(20):
        IncrJob.perform_later(f"{prefix}:n", i)
    wait_for(lambda: broker.redis.get(f"{prefix}:n") == b"190", 60, "the jobs")
    label = (("job_class", IncrJob.job_name), ("queue", "default"))

    def scraped():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as page:
                return samples(page.read().decode())
        except OSError:
            return {}

    found = wait_for(lambda: (s := scraped()).get(("async_jobs_jobs_processed_total", label)) == 20 and s, 30,
                     f"the supervisor's page\n{proc.output()}")
    assert found[("async_jobs_job_duration_seconds_count", label)] == 20
    assert len({f.name for f in directory.iterdir()}) >= 2  # each process wrote its own files


def test_the_grafana_dashboard_queries_only_metrics_that_exist():
    source = (ROOT / "django_async_jobs" / "prometheus.py").read_text()
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    names = {n for p in dashboard["panels"] for t in p["targets"] for n in re.findall(r"async_jobs_\w+", t["expr"])}
    assert names
    unknown = sorted(n for n in names if f'"{re.sub(r"_(total|bucket)$", "", n)}"' not in source)
    assert not unknown
