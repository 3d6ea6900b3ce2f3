"""Recurring jobs from settings: validation, one enqueue per tick, missed ticks, listing."""

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from django_async_jobs import checks, cron
from django_async_jobs.locks import payload_lock
from django_async_jobs.worker.cron import CronScheduler
from tests.helpers import fetch, wait_for
from tests.testapp.recurring_jobs import UniqueCronJob

ROOT = Path(__file__).resolve().parent.parent
JOB = "tests.testapp.recurring_jobs.CronTickJob"
T0 = datetime(2026, 3, 2, 8, 0, 30, tzinfo=UTC).timestamp()  # a Monday, 30 s past a minute



@pytest.fixture
def key(prefix):
    return f"{prefix}:ticks"


def recurring(settings, entries):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "RECURRING": entries}


class Clock:
    def __init__(self, now):
        self.now = now

    def __call__(self):
        return self.now


def queued_ticks(broker, queue="default"):
    return [json.loads(p)["cron"]["tick"] for p in broker.redis.zrange(broker.keys.queue(queue), 0, -1)]


def errors_for(settings, entries):
    recurring(settings, entries)
    return [e.msg for e in checks.check_settings() if e.id == "async_jobs.E020"]


def test_the_check_names_each_bad_entry_and_the_fix(settings):
    module = "django.contrib.sessions.backends.file"
    assert module not in sys.modules
    messages = errors_for(settings, {
        "bad_cron": {"cron": "61 * * * *", "class": JOB},
        "not_a_job": {"cron": "0 2 * * *", "class": f"{module}.SessionStore"},
        "bad_queue": {"cron": "0 2 * * *", "class": JOB, "queue": "integrations"},
        "bad_zone": {"cron": "0 2 * * *", "class": JOB, "timezone": "Mars/Olympus"},
        "bad_catch_up": {"cron": "0 2 * * *", "class": JOB, "catch_up": "all", "colour": 1},
    })
    text = "\n".join(messages)
    assert "RECURRING['bad_cron']['cron'] = '61 * * * *' is not a cron expression" in text
    assert f"RECURRING['not_a_job']['class'] = '{module}.SessionStore' is not a registered job" in text
    assert "RECURRING['bad_queue'] would enqueue to queue 'integrations', which no worker reads" in text
    assert "RECURRING['bad_zone']['timezone'] = 'Mars/Olympus'" in text
    assert "RECURRING['bad_catch_up']['catch_up'] = 'all'" in text
    assert "RECURRING['bad_catch_up'] has unknown keys ['colour']" in text
    assert len(messages) == 6
    assert module not in sys.modules  # named, never imported
    with pytest.raises(ImproperlyConfigured, match="bad_cron"):
        cron.entries()


def test_a_valid_setting_passes_the_check(settings):
    assert errors_for(settings, {
        "nightly": {"cron": "0 2 * * *", "class": JOB, "queue": "low", "args": ["k"]},
        "weekly": {"cron": "0 9 * * 1", "class": JOB, "timezone": "Europe/Berlin", "catch_up": "last"},
    }) == []


def test_two_processes_enqueue_a_tick_once(settings, broker, key):
    recurring(settings, {"minutely": {"cron": "* * * * *", "class": JOB, "args": [key]}})
    clock = Clock(T0)
    a, b = CronScheduler(broker, cron.entries(), clock), CronScheduler(broker, cron.entries(), clock)
    assert a.run_due() == pytest.approx(30) and b.run_due() == pytest.approx(30)
    assert queued_ticks(broker) == []
    for tick in (T0 + 30, T0 + 90):
        clock.now = tick + 0.2
        a.run_due()
        b.run_due()
        b.run_due()
    assert queued_ticks(broker) == [T0 + 30, T0 + 90]
    last = cron.last_run("minutely", broker)
    assert last["tick"].timestamp() == T0 + 90


def test_missed_ticks_are_skipped_by_default(settings, broker, key):
    recurring(settings, {"minutely": {"cron": "* * * * *", "class": JOB, "args": [key]}})
    [entry] = cron.entries()
    assert cron.enqueue_tick(entry, T0 - 3600 - 30, broker)  # last ran an hour ago
    broker.redis.delete(broker.keys.queue("default"))
    clock = Clock(T0)
    scheduler = CronScheduler(broker, cron.entries(), clock)
    scheduler.run_due()
    assert queued_ticks(broker) == []  # the 60 missed ticks are not run
    clock.now = T0 + 30
    scheduler.run_due()
    assert queued_ticks(broker) == [T0 + 30]


def test_catch_up_last_runs_the_latest_missed_tick_once(settings, broker, key):
    recurring(settings, {"hourly": {"cron": "0 * * * *", "class": JOB, "args": [key], "catch_up": "last"}})
    [entry] = cron.entries()
    assert cron.enqueue_tick(entry, T0 - 3 * 3600 - 30, broker)
    broker.redis.delete(broker.keys.queue("default"))
    clock = Clock(T0)
    for _ in range(2):  # two processes starting together
        CronScheduler(broker, cron.entries(), clock).run_due()
    assert queued_ticks(broker) == [T0 - 30]  # 08:00, not the 05:00..07:00 ticks
    assert not cron.enqueue_tick(entry, T0 - 3600 - 30, broker)  # older than the last run


def test_a_unique_recurring_job_skips_ticks_while_its_last_one_is_pending(settings, broker, key):
    recurring(settings, {"minutely": {"cron": "* * * * *", "class": "tests.testapp.recurring_jobs.UniqueCronJob",
                                      "args": [key]}})
    [entry] = cron.entries()
    first = cron.enqueue_tick(entry, T0 - 30, broker)
    lock = payload_lock(UniqueCronJob(key))["key"]
    assert first and broker.redis.get(lock) == first.encode()
    assert cron.enqueue_tick(entry, T0 + 30, broker) is None  # the first is still pending
    assert queued_ticks(broker) == [T0 - 30]
    last = cron.last_run("minutely", broker)
    assert last["tick"].timestamp() == T0 + 30 and last["job_id"] is None  # handled: no retry elsewhere
    assert cron.enqueue_tick(entry, T0 + 30, broker) is None
    broker.redis.delete(lock)  # as the settle step does when the first job finishes
    assert cron.enqueue_tick(entry, T0 + 90, broker)
    assert queued_ticks(broker) == [T0 - 30, T0 + 90]


def test_recurring_enqueues_run_the_jobs_enqueue_callbacks(settings, broker, key):
    recurring(settings, {"minutely": {"cron": "* * * * *", "class": "tests.testapp.recurring_jobs.GuardedCronJob",
                                      "args": [key]}})
    [entry] = cron.entries()
    job_id = cron.enqueue_tick(entry, T0 - 30, broker)
    assert job_id and broker.redis.lrange(f"{key}:enqueued", 0, -1) == [job_id.encode()]
    broker.redis.set(f"{key}:closed", 1)
    assert cron.enqueue_tick(entry, T0 + 30, broker) is None  # before_enqueue halted it
    assert queued_ticks(broker) == [T0 - 30]
    assert cron.last_run("minutely", broker)["tick"].timestamp() == T0 - 30
    assert broker.redis.lrange(f"{key}:enqueued", 0, -1) == [job_id.encode()]


def test_timezone_and_listing(settings, broker, key):
    recurring(settings, {
        "weekly_report": {"cron": "0 9 * * 1", "class": JOB, "queue": "low", "args": [key],
                          "timezone": "Europe/Berlin"},
        "nightly": {"cron": "0 2 * * *", "class": JOB, "args": [key]},
    })
    [weekly, nightly] = cron.entries()
    cron.enqueue_tick(nightly, T0 - 6 * 3600 - 30, broker)
    rows = {row["name"]: row for row in cron.describe(count=2, now=T0)}
    # T0 is 09:00:30 in Berlin: this Monday's run has passed there (not yet in UTC).
    assert [d.isoformat() for d in rows["weekly_report"]["next_runs"]] == [
        "2026-03-09T09:00:00+01:00", "2026-03-16T09:00:00+01:00",
    ]
    # Across the switch to summer time (29 March), still 09:00 in Berlin.
    assert weekly.next_after(datetime(2026, 3, 24, tzinfo=UTC).timestamp()) == datetime(2026, 3, 30, 7, tzinfo=UTC).timestamp()
    assert rows["weekly_report"]["queue"] == "low" and rows["weekly_report"]["last_run"] is None
    assert rows["nightly"]["queue"] == "default"
    assert rows["nightly"]["last_run"]["tick"] == datetime(2026, 3, 2, 2, tzinfo=UTC)
    text = "\n".join(cron.format_table(cron.describe(now=T0)))
    assert "weekly_report: tests.testapp.recurring_jobs.CronTickJob on low" in text
    assert "last: 2026-03-02T02:00:00+00:00" in text and "last: never" in text


def test_a_broken_entry_does_not_stop_the_others(settings, broker, key):
    recurring(settings, {
        "broken": {"cron": "* * * * *", "class": JOB, "args": [key, "extra"]},
        "fine": {"cron": "* * * * *", "class": JOB, "args": [key]},
    })
    clock = Clock(T0)
    scheduler = CronScheduler(broker, cron.entries(), clock)
    clock.now = T0 + 30
    scheduler.run_due()
    assert [json.loads(p)["cron"]["name"] for p in broker.redis.zrange(broker.keys.queue("default"), 0, -1)] == ["fine"]


def test_three_worker_processes_enqueue_each_tick_exactly_once(broker, prefix, key):
    overrides = {"RECURRING": {"every_second": {"cron": "* * * * * *", "class": JOB, "args": [key]}}}
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings", "ASYNC_JOBS_KEY_PREFIX": prefix,
           "ASYNC_JOBS_OVERRIDES": json.dumps(overrides)}
    # One supervisor forks the three worker processes: three schedulers, one Django start-up.
    proc = subprocess.Popen(
        [sys.executable, "-m", "django", "runworker", "-c", "1", "--processes", "3"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: broker.redis.zcard(broker.keys.processes) == 3, timeout=20)
        first = broker.redis.llen(key)
        wait_for(lambda: broker.redis.llen(key) >= first + 3, timeout=10)  # 3+ ticks with all 3 up
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
    runs = [json.loads(x) for x in broker.redis.lrange(key, 0, -1)]
    ticks = [run["tick"] for run in runs]
    assert len(ticks) == len(set(ticks)), "a tick was enqueued twice"
    assert sorted(ticks) == list(range(min(ticks), max(ticks) + 1)), "a tick was skipped while workers ran"
    assert all(run["enqueued_at"] - run["tick"] < 1.0 for run in runs)
    assert broker.queue_size("default") == 0


def test_the_jobs_cron_command_lists_entries(settings, broker, key):
    from io import StringIO

    from django.core.management import call_command

    recurring(settings, {"nightly": {"cron": "0 2 * * *", "class": JOB, "args": [key]}})
    [entry] = cron.entries()
    cron.enqueue_tick(entry, entry.latest_until(time.time()), broker)
    out = StringIO()
    call_command("jobs", "cron", "--next", "2", stdout=out)
    lines = out.getvalue().splitlines()
    assert lines[0] == f"nightly: {JOB} on default  cron '0 2 * * *' (UTC)"
    assert lines[1].startswith("  next: ") and lines[1].count("T02:00:00+00:00") == 2
    assert lines[2].startswith("  last: ") and "T02:00:00+00:00 (job " in lines[2]
    out = StringIO()
    call_command("jobs", "cron", "--json", stdout=out)
    [row] = json.loads(out.getvalue())
    assert row["name"] == "nightly" and len(row["next_runs"]) == 3 and row["last_run"]["job_id"]


def test_a_run_by_hand_is_marked_manual_and_leaves_the_ticks_alone(settings, broker, key):
    from django_async_jobs import api

    recurring(settings, {"nightly": {"cron": "0 2 * * *", "class": JOB, "queue": "low", "args": [key], "priority": 5}})
    job_id = api.run_recurring_now("nightly")
    [raw] = broker.redis.zrange(broker.keys.queue("low"), 0, -1)
    payload = json.loads(raw)
    assert payload["jid"] == job_id and payload["priority"] == 5
    assert payload["cron"] == {"name": "nightly", "manual": True}
    last = cron.last_run("nightly", broker)
    assert last["tick"] is None and last["job_id"] is None  # no tick was recorded
    assert last["manual_job_id"] == job_id and last["manual_at"] is not None  # the run by hand was


def test_the_cron_field_stays_with_a_job_that_enqueues_itself_again(settings, broker, key):
    from tests.testapp.recurring_jobs import CronTickJob

    recurring(settings, {"minutely": {"cron": "* * * * *", "class": JOB, "args": [key]}})
    [entry] = cron.entries()
    cron.enqueue_tick(entry, T0 - 30, broker)
    [(field, raw)] = fetch(broker, "tester", ["default"], 1)
    job = CronTickJob.deserialize(json.loads(raw))
    job.retry_job(wait=60)
    [again] = broker.redis.zrange(broker.keys.schedule, 0, -1)
    assert json.loads(again)["cron"] == {"name": "minutely", "tick": int(T0 - 30)}
