"""Per-class metrics: a real worker runs jobs, its heart sends the buffered counts to Redis,
``api.metrics`` and ``jobs metrics`` read them back."""

import dataclasses
import json
import time
from io import StringIO

import pytest
import redis
from django.core.management import CommandError, call_command

from django_async_jobs import api, metrics
from django_async_jobs.broker.client import Broker
from django_async_jobs.checks import check_settings
from django_async_jobs.conf import get_settings
from django_async_jobs.worker import processor
from tests.dashboard_load import _seed_metrics
from tests.helpers import wait_for
from tests.testapp.flow_jobs import DiscardingAccountJob, ExpiringJob
from tests.testapp.jobs import FailJob, IncrJob, TraceJob

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def empty_buffer():
    """Jobs of earlier tests (other prefixes) leave nothing in this process's buffer."""
    metrics.BUFFER.take()
    yield
    metrics.BUFFER.take()


def run(*args):
    out = StringIO()
    call_command("jobs", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def runs_of(name):
    found = api.metrics(name, minutes=5).classes.get(name)
    return found.total_runs if found else 0


def test_runs_failures_and_jobs_that_did_not_run_are_counted_per_class(broker, worker, prefix):
    for i in range(3):
        IncrJob.perform_later(f"{prefix}:n", i)
    FailJob.perform_later(f"{prefix}:f")
    ExpiringJob.set(wait_until=time.time() - 120).perform_later(f"{prefix}:e")  # past its deadline
    wait_for(lambda: runs_of(IncrJob.job_name) == 3 and runs_of(FailJob.job_name) == 1, 30, "the heart's flush")
    wait_for(lambda: api.metrics(minutes=5).classes.get(ExpiringJob.job_name), 30, "the expired job")
    report = api.metrics(minutes=5)
    incr, fail, expiring = (report.classes[c.job_name] for c in (IncrJob, FailJob, ExpiringJob))
    assert (incr.total_runs, incr.total_failures) == (3, 0)
    assert (fail.total_runs, fail.total_failures) == (1, 1)  # failed, waiting for its retry
    assert expiring.total_runs == 0 and expiring.other == {"expired": 1}  # dropped: not a run
    assert sum(incr.histogram().values()) == 3 and incr.average_ms > 0
    assert incr.percentile(0.5) in metrics.BOUNDS_MS
    series = incr.percentile_series(0.95)
    assert len(series) == 5 and series.count(None) >= 3 and any(series)  # the minutes that ran
    assert sum(incr.latencies) == 3 and incr.average_latency_ms >= 0
    assert len(report.starts) == 5 and report.starts[-1] == int(time.time() // 60) * 60 and report.step == 60


def test_execution_time_lands_in_its_bucket_and_latency_counts_from_the_run_at(broker, worker, prefix):
    TraceJob.perform_later(f"{prefix}:t", "slow", 0.2)
    IncrJob.set(wait_until=time.time() - 90).perform_later(f"{prefix}:n")  # due 90 s ago
    wait_for(lambda: runs_of(TraceJob.job_name) == 1 and runs_of(IncrJob.job_name) == 1, 30, "both runs")
    report = api.metrics(minutes=5)
    slow = report.classes[TraceJob.job_name]
    [bucket] = slow.histogram()
    assert metrics.BOUNDS_MS[bucket - 1] < slow.average_ms <= metrics.BOUNDS_MS[bucket]
    assert slow.average_ms >= 200
    late = report.classes[IncrJob.job_name]
    assert late.average_latency_ms >= 90_000
    assert metrics.percentile(late.latency_histogram(), 0.95) >= 90_000


def test_percentile_reads_the_bucket_a_rank_falls_in():
    hist = {3: 50, 10: 45, 20: 5}
    assert metrics.percentile(hist, 0.5) == metrics.BOUNDS_MS[3]
    assert metrics.percentile(hist, 0.95) == metrics.BOUNDS_MS[10]
    assert metrics.percentile(hist, 0.99) == metrics.BOUNDS_MS[20]
    assert metrics.percentile({}, 0.5) is None
    assert metrics.percentile({metrics.BUCKETS - 1: 1}, 0.5) == metrics.BOUNDS_MS[-1]  # past the last bound
    assert all(b > a for a, b in zip(metrics.BOUNDS_MS, metrics.BOUNDS_MS[1:], strict=False))


def test_minute_hashes_expire_with_the_retention_and_old_minutes_are_not_written(broker, settings):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "METRICS_RETENTION": 600}
    broker = api.get_broker()
    now = time.time()
    minute = int(now // 60)
    broker.record_metrics({minute: {"a.Job|r": "2"}, minute - 30: {"a.Job|r": "1"}}, 600, now)
    ttl = broker.redis.ttl(broker.keys.metrics(minute))
    assert 540 < ttl <= 660
    assert not broker.redis.exists(broker.keys.metrics(minute - 30))  # older than the retention
    assert api.metrics("a.Job", minutes=5).classes["a.Job"].total_runs == 2
    assert len(api.metrics(minutes=10_000).starts) == 10  # never further back than the retention


def _seed_hours(broker, now, hours=5):
    """Minutes of the last ``hours`` hours as workers' flushes write them (two classes, varying
    counts, times and buckets; some minutes empty), a flush of a few minutes at a time."""
    last = int(now // 60)
    minutes = range(last - hours * 60 + 1, last + 1)
    for start in range(0, len(minutes), 7):
        increments = {}
        for minute in minutes[start:start + 7]:
            if minute % 11 == 0:
                continue  # a quiet minute
            i = minute % 17
            increments[minute] = {
                "a.Job|r": str(3 + i), "a.Job|f": str(i % 3), "a.Job|ms": f"{12.5 * (i + 1):.3f}",
                "a.Job|lat": f"{0.75 * i:.3f}", "a.Job|latn": str(2 + i), f"a.Job|h{i}": "2",
                f"a.Job|h{i + 20}": str(1 + i), f"a.Job|l{i % 5}": str(2 + i), "b.Job|r": "1",
                "b.Job|h30": "1", "b.Job|x:expired": str(i % 2),
            }
        broker.record_metrics(increments, 72 * 3600, now)


def _totals(report):
    return {
        name: (c.total_runs, c.total_failures, round(sum(c.ms), 3), round(sum(c.latency_ms), 3), sum(c.latencies),
               c.histogram(), c.latency_histogram(), c.other, [c.percentile(q) for q in (0.5, 0.95, 0.99)],
               c.average_ms, c.average_latency_ms)
        for name, c in report.classes.items()
    }


@pytest.mark.parametrize("minutes", [60, 150, 181, 240, 300])
def test_a_window_of_hours_reads_the_hour_hashes_and_agrees_with_its_minutes(broker, minutes):
    """Each flush adds to the hour's hash what it adds to the minutes': over any window, the
    hourly read (the oldest hour's part from its minutes) sums to what the minutes sum to."""
    now = time.time()
    _seed_hours(broker, now)
    by_minute = metrics.read(broker, minutes=minutes, now=now, hourly=False)
    by_hour = metrics.read(broker, minutes=minutes, now=now, hourly=True)
    assert by_minute.step == 60 and by_hour.step == 3600 and len(by_minute.starts) == minutes
    assert _totals(by_hour) == _totals(by_minute) and by_minute.classes["a.Job"].total_runs > minutes
    first = int(now // 60) - minutes + 1
    assert by_hour.starts[0] == first * 60 and all(s % 3600 == 0 for s in by_hour.starts[1:])
    assert len(by_hour.starts) == len({m // 60 for m in range(first, first + minutes)})
    hourly = by_hour.classes["a.Job"]
    for at, start in enumerate(by_hour.starts):  # each point is its minutes' sum
        end = by_hour.starts[at + 1] if at + 1 < len(by_hour.starts) else float("inf")
        inside = [i for i, s in enumerate(by_minute.starts) if start <= s < end]
        assert hourly.runs[at] == sum(by_minute.classes["a.Job"].runs[i] for i in inside)
    assert api.metrics(minutes=minutes).step == (3600 if minutes > metrics.MINUTES_UP_TO else 60)


def test_the_hour_hash_is_written_beside_the_minute_and_expires_with_the_retention_after_its_hour(broker):
    now = time.time()
    minute = int(now // 60)
    hour = minute // 60
    broker.record_metrics({minute: {"a.Job|r": "2", "a.Job|ms": "1.500"}, minute - 1: {"a.Job|r": "3"}}, 600, now)
    minute_ttl, hour_ttl = broker.redis.ttl(broker.keys.metrics(minute)), broker.redis.ttl(broker.keys.metrics_hour(hour))
    assert 540 < minute_ttl <= 660
    assert abs(hour_ttl - ((hour + 1) * 3600 + 600 - now)) <= 2  # the retention after its hour ends
    in_hour = {minute, minute - 1} if (minute - 1) // 60 == hour else {minute}
    hour_hash = broker.redis.hgetall(broker.keys.metrics_hour(hour))
    assert hour_hash[b"a.Job|r"] == str(2 + 3 * (len(in_hour) - 1)).encode() and float(hour_hash[b"a.Job|ms"]) == 1.5
    # Past the retention a minute writes neither hash; an hour's last minute keeps it longest.
    old = minute - 11 * 60
    broker.record_metrics({old: {"a.Job|r": "1"}}, 600, now)
    assert not broker.redis.exists(broker.keys.metrics(old), broker.keys.metrics_hour(old // 60))
    last_of_hour = (hour - 1) * 60 + 59
    broker.record_metrics({last_of_hour: {"a.Job|r": "1"}}, 3600, now)
    ttl = broker.redis.ttl(broker.keys.metrics_hour(hour - 1))
    assert broker.redis.ttl(broker.keys.metrics(last_of_hour)) <= ttl <= hour * 3600 + 3600 - now + 1


def test_72_hours_of_busy_classes_read_as_hours(broker):
    """The dashboard's 72-hour window: 73 hashes (72 hours and the oldest hour's minutes in the
    window, at most 59), not 4,320; every run of every minute counted once."""
    for _ in range(3):  # a read in a later minute than the seeding drops the oldest minute: again
        broker.flush()  # the seeding adds to what is there
        now = time.time()
        _seed_metrics(broker, 2, now)  # 100 runs and 2 failures a minute per class
        report = api.metrics(minutes=72 * 60)
        if int(time.time() // 60) == int(now // 60):
            break
    assert report.step == 3600 and len(report.starts) in (72, 73)
    one = report.classes["reports.jobs.Report1Job"]
    assert (one.total_runs, one.total_failures) == (100 * 72 * 60, 2 * 72 * 60)
    assert one.average_ms == pytest.approx(42.105) and one.average_latency_ms == pytest.approx(8.1225)
    assert sum(one.histogram().values()) == sum(10 + b for b in range(8, 13)) * 72 * 60
    assert one.percentile(0.5) == metrics.BOUNDS_MS[10] and one.percentile(0.99) == metrics.BOUNDS_MS[12]
    assert one.percentile_series(0.5)[1:] == [metrics.BOUNDS_MS[10]] * (len(report.starts) - 1)


def test_a_flush_redis_did_not_take_is_sent_with_the_next(broker, prefix):
    payload = {"jid": "x1", "job": IncrJob.job_name, "queue": "default", "args": [f"{prefix}:n"], "enqueued_at": time.time()}
    processor.worker_chain(IncrJob).run(IncrJob.deserialize(payload))
    unreachable = Broker(dataclasses.replace(get_settings(), redis_url="redis://127.0.0.1:1/0"))
    with pytest.raises(redis.ConnectionError):
        metrics.flush(unreachable)
    assert metrics.flush(broker) == 1
    assert runs_of(IncrJob.job_name) == 1


def test_metrics_off_leaves_the_layer_out(settings):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "METRICS_RETENTION": None}
    assert not metrics.Metrics().applies_to(IncrJob)
    with pytest.raises(ValueError, match="Metrics are off"):
        api.mark_deploy("v1")


@pytest.mark.parametrize("value", [0, 30, "72h", True])
def test_bad_retention_is_refused_by_the_check(settings, value):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "METRICS_RETENTION": value}
    assert "async_jobs.E014" in [e.id for e in check_settings()]


def test_deploy_marks_are_kept_and_returned_with_the_metrics(broker):
    assert "Marked 'v1.2'" in run("metrics", "mark", "v1.2")
    api.mark_deploy("v1.3")
    assert [m.label for m in api.metrics(minutes=5).marks] == ["v1.2", "v1.3"]
    assert broker.redis.ttl(broker.keys.metrics_marks) > 0
    with pytest.raises(CommandError, match="label of 1 to 200"):
        run("metrics", "mark", " ")


def test_the_metrics_command_prints_a_table_and_json(broker, worker, prefix):
    assert "No job ran in the last 60 minute(s)." in run("metrics")
    for i in range(2):
        IncrJob.perform_later(f"{prefix}:n", i)
    FailJob.perform_later(f"{prefix}:f")
    wait_for(lambda: runs_of(IncrJob.job_name) == 2 and runs_of(FailJob.job_name) == 1, 30, "the flush")
    lines = run("metrics", "--minutes", "5").splitlines()
    assert lines[0].split()[:4] == ["JOB", "RUNS", "FAILED", "AVG"]
    assert any(line.split()[:3] == [IncrJob.job_name, "2", "0"] for line in lines)
    data = json.loads(run("metrics", "--class", FailJob.job_name, "--json"))
    [only] = data["classes"]
    assert (only["job_class"], only["runs"], only["failures"]) == (FailJob.job_name, 1, 1)
    assert only["p50_ms"] in data["bounds_ms"] and len(only["series"]) == 60
    with pytest.raises(CommandError, match="positive integer"):
        run("metrics", "--minutes", "0")


def test_the_processes_command_shows_each_worker(broker, worker):
    lines = run("processes").splitlines()
    assert lines[0].split()[:5] == ["HOST", "PID", "QUEUES", "BUSY", "RSS"]
    assert worker.process_id in lines[2] and f"0/{worker.concurrency}" in lines[2].split()
    [data] = json.loads(run("processes", "--json"))
    assert data["id"] == worker.process_id and data["rss"] > 0 and data["quiet"] is False


def test_a_payload_whose_times_are_not_numbers_counts_a_run_without_latency(broker, worker, prefix):
    payload = {"jid": "j1", "job": IncrJob.job_name, "queue": "default", "args": [f"{prefix}:n"],
               "enqueued_at": "yesterday", "at": None}
    broker.push([json.dumps(payload)])
    wait_for(lambda: runs_of(IncrJob.job_name) == 1, 30, "the run")
    incr = api.metrics(IncrJob.job_name, minutes=5).classes[IncrJob.job_name]
    assert sum(incr.latencies) == 0 and incr.average_latency_ms is None


def test_a_job_its_concurrency_limit_discards_is_not_a_run(broker, worker, prefix):
    gate = f"{prefix}:gate"
    DiscardingAccountJob.perform_later("acme", prefix, gate)
    wait_for(lambda: broker.redis.llen(f"{prefix}:start") == 1, 30, "the first job running")
    DiscardingAccountJob.perform_later("acme", prefix)  # its place is taken: discarded unstarted
    name = DiscardingAccountJob.job_name
    wait_for(lambda: api.metrics(name, minutes=5).classes.get(name), 30, "the discard counted")
    broker.redis.rpush(gate, "go")
    wait_for(lambda: runs_of(name) == 1, 30, "the first job's run")
    assert api.metrics(name, minutes=5).classes[name].other == {"discarded": 1}


def test_a_busy_process_keeps_sums_not_every_event_between_flushes(broker, prefix):
    """Between two beats a busy process runs thousands of jobs: past ``COMPACT_AT`` events the
    buffer sums them up, so its memory is per class and minute, not per job."""
    chain = processor.worker_chain(IncrJob)
    payload = {"jid": "x1", "job": IncrJob.job_name, "queue": "default", "args": [f"{prefix}:n"], "enqueued_at": time.time()}
    for _ in range(metrics.COMPACT_AT * 2 + 10):
        chain.run(IncrJob.deserialize(payload))
    assert len(metrics.BUFFER.events) <= metrics.COMPACT_AT
    assert metrics.flush(broker) >= 1  # one minute hash, two if a minute ended meanwhile
    assert runs_of(IncrJob.job_name) == metrics.COMPACT_AT * 2 + 10


def test_interleaved_classes_queues_and_minutes_are_summed_apart():
    """The summing loop reuses a row across a run of one class, queue and minute: each change of
    any of the three, back and forth, must land in its own row, as must the jobs that did not run."""
    from django_async_jobs.retries import Outcome

    ok, failed, expired = Outcome("ok"), Outcome("retry", failed=True, error=ValueError()), Outcome("expired")
    t0 = 600 * 60.0  # the start of a minute
    events = [
        ("A", "q", ok, t0, t0 + 0.001, t0 - 1),
        ("A", "q", failed, t0, t0 + 0.002, None),
        ("B", "q", ok, t0, t0 + 0.001, "not a time"),
        ("A", "q", ok, t0, t0 + 0.001, t0 + 5),  # started before its run-at: latency 0, not negative
        ("A", "r", ok, t0, t0 + 0.001, t0 - 1),
        ("A", "q", expired, t0, t0 + 0.001, t0 - 1),
        ("A", "q", ok, t0 + 60, t0 + 60.001, t0 + 59),  # the next minute
        ("A", "q", ok, t0, t0 + 0.001, t0 - 1),  # back to the first minute
    ]
    buffer = metrics.Buffer()
    buffer.events.extend(events)
    rows, other = buffer.take()
    first = rows[(600, "A", "q")]
    assert first[metrics.RUNS_AT] == 4 and first[metrics.FAILED_AT] == 1
    assert first[metrics.LATENCIES_AT] == 3 and first[metrics.LATENCY_AT] == pytest.approx(2000)
    assert sum(first[metrics.HISTOGRAM_AT:metrics.LATENCY_HISTOGRAM_AT]) == 4
    assert sum(first[metrics.LATENCY_HISTOGRAM_AT:]) == 3
    assert rows[(600, "B", "q")][metrics.RUNS_AT] == 1 and rows[(600, "B", "q")][metrics.LATENCIES_AT] == 0
    assert rows[(600, "A", "r")][metrics.RUNS_AT] == 1
    assert rows[(601, "A", "q")][metrics.RUNS_AT] == 1
    assert other == {(600, "A", "q", "expired"): 1}
    assert len(rows) == 4


def test_bucket_counts_of_a_list_agree_with_each_values_bucket():
    """Buckets are counted per list from its sorted values: each value must land where
    ``bisect_left`` over the bounds puts it, a value on a bound and one past the last included."""
    import random
    from bisect import bisect_left

    values = [*metrics.BOUNDS_MS, 0.0, 0.05, metrics.BOUNDS_MS[-1] * 3, *(random.uniform(0, 2e6) for _ in range(500))]
    expected = [0] * metrics.BUCKETS
    for value in values:
        expected[bisect_left(metrics.BOUNDS_MS, value)] += 1
    row = [0] * metrics.ROW
    metrics._count_buckets(row, metrics.HISTOGRAM_AT, list(values))
    assert row[metrics.HISTOGRAM_AT:metrics.LATENCY_HISTOGRAM_AT] == expected
