"""Dead jobs on a real Redis and the test database: flush, retry, prune, and the `jobs` command."""

import json
import os
import subprocess
import sys
import time
from datetime import timedelta
from io import StringIO
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from django_async_jobs.deadjobs import (
    TEXT_LIMIT,
    build_row,
    flush_staged,
    fresh_payload,
    prune,
    retention,
    retry_dead,
)
from django_async_jobs.models import DeadJob
from django_async_jobs.retries import handle_failure
from django_async_jobs.serialization import decode_payload, encode_payload
from django_async_jobs.worker.processor import process, settle
from tests.helpers import fetch
from tests.testapp.jobs import FailJob, IncrJob

ROOT = Path(__file__).resolve().parent.parent


# -- staging dead jobs the way the worker and the Lua steps do -----------------------------------


def fetch_one(broker, process_id="p1"):
    [(field, raw)] = fetch(broker, process_id, ["default"], 1)
    return field.decode() if isinstance(field, bytes) else field, raw


def stage_failed_job(broker, settings, key="dead:count"):
    """A FailJob that used up its retries: the worker's own processing and settle step."""
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "MAX_RETRIES": 0}
    job = FailJob.perform_later(key)
    field, raw = fetch_one(broker)
    # What the worker's processor does, minus its close_old_connections() (which would close
    # the test's transaction): perform, then let the retry policy decide.
    running = FailJob.deserialize(decode_payload(raw))
    with pytest.raises(RuntimeError) as failure:
        running.perform_now()
    running.fetched_as = field
    running.outcome = handle_failure(running, failure.value)
    settlement = settle(running, raw)
    assert settlement.op == "dead"
    broker.settle("p1", [settlement.args()])
    return job


def stage_record(broker, dead_id, payload, reason="retries_exhausted", died_at=None, **extra):
    record = {"dead_id": dead_id, "job_id": "", "payload": payload, "reason": reason,
              "died_at": died_at if died_at is not None else time.time(), **extra}
    broker.redis.hset(broker.keys.dead, dead_id, json.dumps(record))


def job_payload(jid, queue="default", **extra):
    return encode_payload({"jid": jid, "job": IncrJob.job_name, "queue": queue, "args": ["k", 2],
                           "enqueued_at": 1700000000.0, **extra})


def staged(broker):
    return broker.redis.hlen(broker.keys.dead)


# -- flush ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_flush_writes_a_row_with_every_field(broker, settings):
    before = time.time()
    job = stage_failed_job(broker, settings)
    assert staged(broker) == 1

    assert flush_staged(broker) == 1
    assert staged(broker) == 0
    row = DeadJob.objects.get()
    assert row.job_id == job.job_id
    assert row.job_class == FailJob.job_name
    assert row.queue == "default"
    assert row.arguments == ["dead:count"]
    assert row.kwargs == {}
    assert row.reason == "retries_exhausted"
    assert row.get_reason_display() == "Retries exhausted"
    assert row.error_class == "builtins.RuntimeError"
    assert row.error_message == "boom"
    assert "Traceback" in row.traceback and "RuntimeError: boom" in row.traceback
    assert row.executions == 1
    assert before - 1 <= row.enqueued_at.timestamp() <= time.time()
    assert before - 1 <= row.died_at.timestamp() <= time.time()
    assert row.failed_at == row.died_at
    assert json.loads(row.payload)["jid"] == job.job_id
    assert row.created is not None
    assert str(row) == f"{FailJob.job_name} {job.job_id} (Retries exhausted)"
    broker.redis.delete("dead:count")


@pytest.mark.django_db
def test_flush_keeps_poison_pills_and_malformed_payloads(broker):
    # A poison pill: its process stopped beating and it was recovered more than allowed.
    job = IncrJob.perform_later("k")
    broker.heartbeat("gone", {}, ttl=10)
    fetch_one(broker, "gone")
    time.sleep(0.01)
    assert broker.recover(timeout=0, max_recoveries=0) == (1, 0, 1)
    # A payload that is not JSON, found by the poller.
    broker.schedule([("{not json", 0)])
    broker.poll()
    # A record that is itself unreadable, and one with a payload that is JSON but no job.
    broker.redis.hset(broker.keys.dead, "junk", b"\xff\x00 not a record")
    stage_record(broker, "half", json.dumps({"job": "Half", "args": "nope", "enqueued_at": "x"}), "malformed_payload")
    assert staged(broker) == 4

    assert flush_staged(broker) == 4
    assert staged(broker) == 0
    pill = DeadJob.objects.get(reason="poison_pill")
    assert pill.job_id == job.job_id and pill.job_class == IncrJob.job_name and pill.arguments == ["k"]
    assert pill.error_class == "" and pill.failed_at is None
    garbage = DeadJob.objects.get(payload="{not json")
    assert garbage.reason == "malformed_payload"
    assert (garbage.job_class, garbage.queue, garbage.arguments, garbage.kwargs) == ("", "", None, None)
    junk = DeadJob.objects.get(dead_id="junk")
    assert junk.reason == "malformed_payload" and "not a record" in junk.payload and "\x00" not in junk.payload
    half = DeadJob.objects.get(dead_id="half")
    assert (half.job_class, half.arguments, half.enqueued_at) == ("Half", None, None)
    assert DeadJob.objects.count() == 4


@pytest.mark.django_db
def test_flush_copes_with_oversized_and_hostile_values(broker):
    long_id = "x" * 400
    payload = encode_payload({"jid": "j" * 300, "job": "J" * 300, "queue": "q", "args": ["a\u0000b", float("1e308")]})
    stage_record(broker, long_id, payload, "arguments_mismatch", error_class="E" * 300,
                 error_message="nul \u0000 here", died_at=float("nan"), executions=-3)
    assert flush_staged(broker) == 1
    row = DeadJob.objects.get()
    assert len(row.dead_id) <= 255 and len(row.job_id) == 255 and len(row.job_class) == 255
    assert row.arguments is None  # a NUL inside JSON: PostgreSQL's jsonb refuses it; the payload keeps it
    assert row.payload == payload
    assert "\x00" not in row.error_message
    assert abs(row.died_at.timestamp() - time.time()) < 60
    assert row.executions == 0
    # The shortened dead id is stable: staging the same record again adds no row.
    stage_record(broker, long_id, payload)
    assert flush_staged(broker) == 1
    assert DeadJob.objects.count() == 1


def nested(depth):
    value = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.django_db
def test_records_that_cannot_be_read_become_rows_and_hold_nothing_back(broker):
    deep = "[" * 100_000 + "]" * 100_000
    long = "x" * (TEXT_LIMIT + 10)
    stage_record(broker, "deep", deep, "malformed_payload")
    stage_record(broker, "long", long, "malformed_payload")
    broker.redis.hset(broker.keys.dead, "deep-record", deep)  # the record itself
    deep_args = encode_payload({"jid": "j-deep", "job": IncrJob.job_name, "queue": "default", "args": nested(150)})
    stage_record(broker, "deep-args", deep_args, "arguments_mismatch", error_class="TypeError")
    for i in range(3):
        stage_record(broker, f"ok{i}", job_payload(f"j{i}"))

    assert flush_staged(broker) == 7
    assert staged(broker) == 0
    rows = {row.dead_id: row for row in DeadJob.objects.all()}
    assert (rows["deep"].payload, rows["deep"].reason, rows["deep"].arguments) == (deep, "malformed_payload", None)
    assert (rows["deep-record"].payload, rows["deep-record"].reason) == (deep, "malformed_payload")
    # A long payload that is not a job is cut, with its length noted.
    assert rows["long"].payload == "x" * TEXT_LIMIT + f"\n[truncated: {TEXT_LIMIT + 10} characters in all]"
    # Arguments too deep for a JSON column stay in the payload, which is kept whole: it can be retried.
    assert rows["deep-args"].arguments is None and rows["deep-args"].job_class == IncrJob.job_name
    assert rows["deep-args"].payload == deep_args and fresh_payload(deep_args) is not None
    assert [rows[f"ok{i}"].arguments for i in range(3)] == [["k", 2]] * 3


@pytest.mark.django_db
def test_dates_outside_any_jobs_lifetime_are_left_empty(broker):
    for i, moment in enumerate([253402300000.0, -62135596800.0, 1e300]):
        payload = encode_payload({"jid": f"j{i}", "job": "J", "queue": "q", "args": [], "enqueued_at": moment})
        stage_record(broker, f"d{i}", payload, died_at=moment, failed_at=moment)
    assert flush_staged(broker) == 3
    for row in DeadJob.objects.all():
        assert row.enqueued_at is None and row.failed_at is None
        assert abs(row.died_at.timestamp() - time.time()) < 60


@pytest.mark.django_db
def test_flush_is_idempotent(broker):
    for i in range(1200):
        stage_record(broker, f"d{i}", job_payload(f"j{i}"))
    copy = broker.redis.hgetall(broker.keys.dead)
    assert flush_staged(broker, batch=500) == 1200
    assert flush_staged(broker) == 0
    # A crash between the database write and the HDEL: the same records are staged again.
    broker.redis.hset(broker.keys.dead, mapping=copy)
    assert flush_staged(broker, batch=250) == 1200
    assert staged(broker) == 0
    assert DeadJob.objects.count() == 1200
    assert DeadJob.objects.values("dead_id").distinct().count() == 1200


# -- subprocesses: concurrent flushers and a database outage --------------------------------------


def database_url(settings_dict):
    engine = settings_dict["ENGINE"]
    if engine.endswith("sqlite3"):
        return f"sqlite:///{settings_dict['NAME']}"
    assert "postgresql" in engine
    auth = settings_dict["USER"] + (f":{settings_dict['PASSWORD']}" if settings_dict["PASSWORD"] else "")
    return f"postgres://{auth}@{settings_dict['HOST'] or '127.0.0.1'}:{settings_dict['PORT'] or 5432}/{settings_dict['NAME']}"


def unreachable_database_url(settings_dict, tmp_path):
    if settings_dict["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{tmp_path}/no/such/dir/db.sqlite3"
    return "postgres://postgres@127.0.0.1:1/test"  # nothing listens on port 1


def flush_in_subprocess(prefix, url, batch=500):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "ASYNC_JOBS_KEY_PREFIX": prefix,
           "DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    code = (
        "import django; django.setup()\n"
        "from django_async_jobs.deadjobs import flush_staged\n"
        f"print(flush_staged(batch={batch}))\n"
    )
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.django_db(transaction=True)
def test_staged_records_survive_a_database_outage(broker, prefix, tmp_path):
    for i in range(30):
        stage_record(broker, f"d{i}", job_payload(f"j{i}"))
    proc = flush_in_subprocess(prefix, unreachable_database_url(connection.settings_dict, tmp_path))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.strip() == "0"
    assert "database unavailable" in err
    assert staged(broker) == 30
    assert DeadJob.objects.count() == 0
    # The command says so too.
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "ASYNC_JOBS_KEY_PREFIX": prefix,
           "DATABASE_URL": unreachable_database_url(connection.settings_dict, tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "django", "jobs", "--skip-checks", "dead", "flush"], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Flushed 0 staged dead jobs" in done.stdout and "30 still staged in Redis" in done.stderr
    assert staged(broker) == 30

    # The database is back: the next flush writes everything.
    assert flush_staged(broker) == 30
    assert staged(broker) == 0
    assert sorted(DeadJob.objects.values_list("dead_id", flat=True)) == sorted(f"d{i}" for i in range(30))


@pytest.mark.django_db(transaction=True)
def test_concurrent_flushers_neither_lose_nor_duplicate(broker, prefix):
    total = 1500
    for start in range(0, total, 500):
        broker.redis.hset(broker.keys.dead, mapping={
            f"d{i}": json.dumps({"dead_id": f"d{i}", "job_id": f"j{i}", "payload": job_payload(f"j{i}"),
                                 "reason": "retries_exhausted", "died_at": time.time()})
            for i in range(start, start + 500)
        })
    url = database_url(connection.settings_dict)
    procs = [flush_in_subprocess(prefix, url, batch=100) for _ in range(3)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results.append(int(out.strip()))
    # SQLite lets one writer in at a time; a flusher that finds it locked leaves its share
    # staged, exactly as during an outage, and the next flush takes it.
    flush_staged(broker)
    assert staged(broker) == 0
    assert DeadJob.objects.count() == total
    assert DeadJob.objects.values("dead_id").distinct().count() == total
    assert sum(results) >= 1


# -- retry -----------------------------------------------------------------------------------------


def make_rows(n, queue="default", **payload_extra):
    rows = [build_row(f"d{i}", json.dumps({
        "dead_id": f"d{i}", "job_id": f"j{i}", "reason": "retries_exhausted", "died_at": time.time(),
        "payload": job_payload(f"j{i}", queue=queue, **payload_extra),
    })) for i in range(n)]
    DeadJob.objects.bulk_create(rows, batch_size=1000)


def queued(broker, queue="default"):
    return [json.loads(p) for p in broker.redis.zrange(broker.keys.queue(queue), 0, -1)]


@pytest.mark.django_db
def test_retry_dead_requeues_with_counters_reset(broker):
    make_rows(3, queue="low", executions=26, retry_count=25, retries={"Transient": 3}, at=1700000100.5,
              error_class="RuntimeError", error_message="boom", priority=5, kwargs={"amount": 2})
    DeadJob.objects.create(dead_id="bad", payload="{not json", reason="malformed_payload", died_at=timezone.now())
    skipped = []
    before = time.time()

    assert retry_dead(DeadJob.objects.all(), broker, skipped=skipped) == 3
    assert skipped == ["bad"]
    assert list(DeadJob.objects.values_list("dead_id", flat=True)) == ["bad"]
    jobs = queued(broker, "low")
    assert sorted(j["jid"] for j in jobs) == ["j0", "j1", "j2"]
    for job in jobs:
        assert list(job)[0] == "jid"
        assert job["job"] == IncrJob.job_name and job["args"] == ["k", 2] and job["kwargs"] == {"amount": 2}
        assert job["priority"] == 5
        for counter in ("executions", "retry_count", "retries", "at", "error_class", "error_message"):
            assert counter not in job
        assert job["enqueued_at"] >= round(before, 3)
    assert broker.redis.sismember(broker.keys.queues, "low")


@pytest.mark.django_db(transaction=True)
def test_retried_job_runs_again(broker):
    key = f"{broker.keys.prefix}:k"  # the test's own: other test runs share this Redis database
    make_rows(1, args=[key, 2])
    assert retry_dead(["d0"], broker) == 1
    field, raw = fetch_one(broker)
    assert process(field, raw).op == "ack"
    assert broker.redis.get(key) == b"2"


@pytest.mark.django_db
def test_retry_dead_by_ids_and_unknown_ids(broker):
    make_rows(5)
    assert retry_dead(["d1", "d3", "missing"], broker) == 2
    assert sorted(DeadJob.objects.values_list("dead_id", flat=True)) == ["d0", "d2", "d4"]
    assert sorted(j["jid"] for j in queued(broker)) == ["j1", "j3"]


@pytest.mark.django_db
def test_retry_dead_in_chunks(broker):
    make_rows(2500)
    assert retry_dead(DeadJob.objects.filter(dead_id__startswith="d"), broker, chunk=1000) == 2500
    assert DeadJob.objects.count() == 0
    assert broker.queue_size("default") == 2500


def test_fresh_payload_refuses_what_cannot_be_routed():
    assert fresh_payload("[]") is None
    assert fresh_payload('{"jid":"a","job":"J","queue":"","args":[]}') is None
    assert fresh_payload('{"jid":"a","job":"J","queue":"q","args":[NaN]}') is None
    assert json.loads(fresh_payload('{"job":"J","jid":"a","queue":"q","args":[],"at":5}')) == {
        "jid": "a", "job": "J", "queue": "q", "args": [], "enqueued_at": pytest.approx(time.time(), abs=5)
    }
    assert fresh_payload("[" * 100_000 + "]" * 100_000) is None


@pytest.mark.django_db
def test_a_dead_job_holding_a_lone_surrogate_is_retried(broker):
    """A "\\ud800" escape reads back as a str UTF-8 cannot carry: it goes back as the escape."""
    text = '{"jid":"s","job":"J","queue":"default","args":["\\ud800"]}'
    DeadJob.objects.create(dead_id="s", payload=text, reason="retries_exhausted", died_at=timezone.now())
    assert retry_dead(["s"], broker) == 1
    [member] = broker.redis.zrange(broker.keys.queue("default"), 0, -1)
    assert b"\\ud800" in member and json.loads(member)["args"] == ["\ud800"]


# -- prune -------------------------------------------------------------------------------------------


def add_row(dead_id, age):
    return DeadJob.objects.create(dead_id=dead_id, reason="killed", died_at=timezone.now() - age)


@pytest.mark.django_db
def test_prune_by_age(settings):
    add_row("new", timedelta(days=1))
    add_row("month", timedelta(days=40))
    add_row("old", timedelta(days=200))
    assert prune(timedelta(days=30)) == 2
    assert list(DeadJob.objects.values_list("dead_id", flat=True)) == ["new"]


@pytest.mark.django_db
def test_prune_uses_the_retention_setting(settings):
    for i in range(5):
        add_row(f"old{i}", timedelta(days=181))
    DeadJob.objects.bulk_create([DeadJob(dead_id=f"b{i}", reason="killed", died_at=timezone.now() - timedelta(days=190))
                                 for i in range(2100)])
    add_row("recent", timedelta(days=179))
    assert retention() == timedelta(days=180)
    assert prune() == 2105
    assert DeadJob.objects.count() == 1

    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "DEAD_JOB_RETENTION": timedelta(days=1)}
    assert prune() == 1
    add_row("x", timedelta(days=5000))
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "DEAD_JOB_RETENTION": None}
    assert prune() == 0
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "DEAD_JOB_RETENTION": 3600}
    assert retention() == timedelta(hours=1)
    assert prune() == 1
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "DEAD_JOB_RETENTION": "180 days"}
    with pytest.raises(ImproperlyConfigured, match="DEAD_JOB_RETENTION"):
        prune()


# -- the jobs command ------------------------------------------------------------------------------


def run(*args):
    out, err = StringIO(), StringIO()
    call_command("jobs", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


class Terminal(StringIO):
    def isatty(self):
        return True


@pytest.mark.django_db
def test_retry_all_asks_and_refuses_without_a_terminal(broker, monkeypatch):
    make_rows(3)
    monkeypatch.setattr("sys.stdin", StringIO("yes\n"))  # a pipe, not an operator
    with pytest.raises(CommandError, match=r"Retry all 3 dead jobs .*No terminal to ask on: give --yes"):
        run("dead", "retry", "--all")
    monkeypatch.setattr("sys.stdin", Terminal("n\n"))
    with pytest.raises(CommandError, match="Not confirmed; nothing done"):
        run("dead", "retry", "--all")
    assert DeadJob.objects.count() == 3 and broker.queue_size("default") == 0
    monkeypatch.setattr("sys.stdin", Terminal("yes\n"))
    out, _ = run("dead", "retry", "--all")
    assert "Retried 3 dead jobs." in out and broker.queue_size("default") == 3
    assert "No dead jobs." in run("dead", "retry", "--all")[0]  # nothing to ask about


@pytest.mark.django_db
@pytest.mark.parametrize("older_than", [[], ["--older-than", "0"], ["--older-than", "100"]])
def test_prune_of_any_age_asks(broker, monkeypatch, older_than):
    make_rows(2)
    DeadJob.objects.update(died_at=timezone.now() - timedelta(days=365))
    monkeypatch.setattr("sys.stdin", StringIO("yes\n"))
    with pytest.raises(CommandError, match=r"Delete 2 dead jobs older than .* for good\? No terminal"):
        run("dead", "prune", *older_than)
    assert DeadJob.objects.count() == 2
    monkeypatch.setattr("sys.stdin", Terminal("yes\n"))
    assert "Pruned 2 dead jobs" in run("dead", "prune", *older_than)[0]
    assert DeadJob.objects.count() == 0


@pytest.mark.django_db
def test_retry_of_unknown_ids_fails_after_retrying_the_known_ones(broker):
    make_rows(2)
    out = StringIO()
    with pytest.raises(CommandError, match="No dead job with id: zzz, yyy"):
        call_command("jobs", "dead", "retry", "d0", "zzz", "j1", "yyy", stdout=out, stderr=StringIO())
    assert "Retried 2 dead jobs." in out.getvalue()
    assert broker.queue_size("default") == 2 and DeadJob.objects.count() == 0


@pytest.mark.django_db
def test_command_list_table_and_json(broker, settings):
    out, _ = run("dead", "list")
    assert "No dead jobs." in out
    stage_failed_job(broker, settings)
    make_rows(2)
    out, _ = run("dead", "flush")
    assert "Flushed 1 staged dead job" in out

    out, _ = run("dead", "list")
    lines = out.splitlines()
    assert lines[0].split() == ["DEAD", "ID", "DIED", "AT", "JOB", "QUEUE", "REASON", "EXEC", "ERROR", "MESSAGE"]
    assert set(lines[1]) <= {"-", " "}
    assert any("RuntimeError" in line and "boom" in line for line in lines[2:])
    assert len(lines) == 5

    out, _ = run("dead", "list", "--json", "--reason", "retries_exhausted", "--limit", "0")
    data = json.loads(out)
    assert len(data) == 3 and {"dead_id", "job_class", "arguments", "traceback", "died_at"} <= set(data[0])

    out, _ = run("dead", "list", "--limit", "1")
    assert "(1 of 3 shown" in out
    broker.redis.delete("dead:count")


@pytest.mark.django_db
def test_command_retry_and_prune(broker):
    make_rows(4)
    DeadJob.objects.create(dead_id="bad", payload="nope", reason="malformed_payload",
                           died_at=timezone.now() - timedelta(days=400))
    out, err = run("dead", "retry", "d0", "j1")
    assert "Retried 2 dead jobs." in out
    out, err = run("dead", "retry", "--all", "--yes")
    assert "Retried 2 dead jobs." in out and "Skipped 1" in err and "bad" in err
    assert broker.queue_size("default") == 4
    with pytest.raises(CommandError):
        run("dead", "retry")

    out, _ = run("dead", "prune", "--older-than", "500")  # nothing that old: nothing to ask
    assert "Pruned 0" in out
    out, _ = run("dead", "prune", "--yes")
    assert "Pruned 1 dead job older than 180 days." in out
    assert DeadJob.objects.count() == 0
