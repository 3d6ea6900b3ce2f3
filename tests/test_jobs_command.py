"""``manage.py jobs stats|queues|clear|scheduled|retries|enqueue|cancel`` on real Redis."""

import json
import time
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from django_async_jobs import api
from django_async_jobs.serialization import encode_payload
from tests.helpers import add_stats
from tests.testapp.jobs import IncrJob, RecordJob

pytestmark = pytest.mark.django_db


def run(*args):
    out = StringIO()
    call_command("jobs", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_stats_table_and_json_match_the_api(broker):
    IncrJob.perform_later("a")
    add_stats(broker, processed=5, failed=1)
    data = json.loads(run("stats", "--json"))
    assert data == api.stats().as_json()
    assert (data["processed"], data["failed"], data["enqueued"]) == (5, 1, 1)
    text = run("stats")
    assert "processed today  5" in text and "enqueued         1" in text


def test_queues_lists_sizes(broker):
    for i in range(3):
        IncrJob.set(queue="low").perform_later(f"k{i}")
    data = {q["name"]: q for q in json.loads(run("queues", "--json"))}
    assert data["low"]["size"] == 3 and data["default"]["size"] == 0
    lines = run("queues").splitlines()
    assert lines[0].split() == ["QUEUE", "SIZE", "LATENCY", "STATE"]
    assert any(line.split()[:2] == ["low", "3"] for line in lines)


class Terminal(StringIO):
    """What an operator types, on a stdin that is a terminal."""

    def isatty(self):
        return True


def test_clear_asks_on_a_terminal_unless_yes(broker, monkeypatch):
    for i in range(2):
        IncrJob.perform_later(f"k{i}")
    monkeypatch.setattr("sys.stdin", Terminal("no\n"))
    with pytest.raises(CommandError, match="Not confirmed; nothing done"):
        run("clear", "default")
    assert broker.queue_size("default") == 2
    monkeypatch.setattr("sys.stdin", Terminal(""))  # end of input: no
    with pytest.raises(CommandError, match="Not confirmed"):
        run("clear", "default")
    monkeypatch.setattr("sys.stdin", Terminal("yes\n"))
    assert "2 jobs deleted" in run("clear", "default")
    IncrJob.perform_later("again")
    monkeypatch.setattr("sys.stdin", Terminal(""))
    assert "1 job deleted" in run("clear", "default", "--yes")
    assert broker.queue_size("default") == 0


def test_clear_refuses_without_a_terminal_even_a_piped_yes(broker, monkeypatch):
    IncrJob.perform_later("k")
    monkeypatch.setattr("sys.stdin", StringIO("yes\n"))
    with pytest.raises(CommandError, match="No terminal to ask on: give --yes to confirm"):
        run("clear", "default")
    assert broker.queue_size("default") == 1


def test_scheduled_and_retries_list_soonest_first(broker):
    now = time.time()
    broker.redis.zadd(broker.keys.retry, {
        encode_payload({"jid": f"r{i}", "job": "J", "queue": "default", "args": [i], "retry_count": i,
                        "error_class": "RuntimeError", "error_message": "boom"}): now + 100 - i
        for i in range(3)
    })
    data = json.loads(run("retries", "--json"))
    assert data["total"] == 3 and [j["job_id"] for j in data["jobs"]] == ["r2", "r1", "r0"]
    text = run("retries", "--limit", "2")
    assert text.splitlines()[0].split()[:6] == ["RUNS", "AT", "JOB", "QUEUE", "RETRIES", "ERROR"]
    assert "RuntimeError: boom" in text and "(1-2 of 3;" in text
    assert run("scheduled") == "No scheduled jobs.\n"
    job = IncrJob.set(wait=60).perform_later("later")
    assert json.loads(run("scheduled", "--json"))["jobs"][0]["job_id"] == job.job_id


def test_enqueue_by_name(broker):
    out = run("enqueue", RecordJob.job_name, '["rec", 1, {"a": [2]}]', "--kwargs", '{"flag": true}', "--json")
    job_id = json.loads(out)["job_id"]
    [entry] = api.page_of(broker.keys.queue("default"), broker=broker).entries
    assert (entry.job_id, entry.args, entry.kwargs) == (job_id, ["rec", 1, {"a": [2]}], {"flag": True})
    assert run("enqueue", IncrJob.job_name, '"solo"').startswith(f"Enqueued {IncrJob.job_name} ")
    with pytest.raises(CommandError, match="no registered job is named 'os.system'"):
        run("enqueue", "os.system", '["rm -rf /"]')
    with pytest.raises(CommandError, match="must be JSON"):
        run("enqueue", IncrJob.job_name, "[oops")
    assert broker.queue_size("default") == 2


def test_cancel_takes_waiting_jobs_out_and_names_the_ones_it_did_not_find(broker):
    from tests.helpers import fetch

    waiting = IncrJob.perform_later("a")
    scheduled = IncrJob.set(wait=600).perform_later("b")
    assert run("cancel", waiting.job_id, scheduled.job_id).splitlines() == [
        f"Cancelled {waiting.job_id}: taken out of queue default.",
        f"Cancelled {scheduled.job_id}: taken out of scheduled.",
    ]
    assert broker.queue_size("default") == 0 and broker.redis.zcard(broker.keys.schedule) == 0
    running = IncrJob.perform_later("c")
    fetch(broker, "host-a:1:ab", ["default"], 1)
    assert json.loads(run("cancel", "--json", running.job_id)) == [
        {"job_id": running.job_id, "removed": [], "running": ["host-a:1:ab"]},
    ]
    with pytest.raises(CommandError, match=f"No waiting or running job with id: {waiting.job_id}"):
        run("cancel", waiting.job_id)
    with pytest.raises(CommandError, match="is not a job id"):
        run("cancel", "a*b")
