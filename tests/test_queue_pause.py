"""Pausing a queue: every worker skips it within a second, its jobs stay, the state outlives
restarts; the other queues keep their order; the API, the ``jobs queue`` command and the
dashboard."""

import json
import threading
import time
from io import StringIO

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command

from django_async_jobs import api
from django_async_jobs.conf import QueueSpec, parse_queues
from django_async_jobs.serialization import decode_payload
from django_async_jobs.worker.fetcher import PAUSED_RECHECK, Fetcher, QueueOrder
from django_async_jobs.worker.launcher import Worker
from tests.helpers import wait_for
from tests.testapp.jobs import IncrJob

BASE = "/admin/django_async_jobs/dashboard/"


def test_a_paused_queue_keeps_its_jobs_until_resumed(broker, prefix):
    assert api.pause_queue("low") is True
    assert api.pause_queue("low") is False  # paused already
    IncrJob.set(queue="low").perform_later(f"{prefix}:low")
    IncrJob.perform_later(f"{prefix}:default")
    worker = Worker()  # started after the pause, as after a restart: the state is in Redis
    worker.start()
    try:
        wait_for(lambda: broker.redis.get(f"{prefix}:default") == b"1", 30, "the default queue's job")
        IncrJob.set(queue="low").perform_later(f"{prefix}:low")  # new jobs join the paused queue
        IncrJob.perform_later(f"{prefix}:default")
        wait_for(lambda: broker.redis.get(f"{prefix}:default") == b"2", 30, "the second default job")
        assert broker.queue_size("low") == 2 and broker.redis.get(f"{prefix}:low") is None
        assert api.paused_queues() == ["low"]
        assert api.resume_queue("low") is True and api.resume_queue("low") is False
        wait_for(lambda: broker.redis.get(f"{prefix}:low") == b"2", 30, "the low queue's jobs after the resume")
    finally:
        worker.stop(timeout=2)


def test_a_running_worker_skips_a_queue_paused_meanwhile(broker, prefix, worker):
    IncrJob.set(queue="low").perform_later(f"{prefix}:before")
    wait_for(lambda: broker.redis.get(f"{prefix}:before") == b"1", 30, "a job of the low queue")
    paused_at = time.monotonic()
    api.pause_queue("low")
    # An idle worker fetches at least once a second, and reads the paused set at most that long
    # after a change; the deadline is generous for a loaded machine.
    wait_for(lambda: "low" in worker.fetcher._paused, 10, "the worker to see the pause")
    assert time.monotonic() - paused_at < 10
    IncrJob.set(queue="low").perform_later(f"{prefix}:after")
    IncrJob.perform_later(f"{prefix}:default")
    wait_for(lambda: broker.redis.get(f"{prefix}:default") == b"1", 30, "the default queue's job")
    assert broker.queue_size("low") == 1


def fetcher_for(broker, spec, concurrency=50):
    broker.heartbeat("p1", {}, ttl=60)
    return Fetcher(broker, "p1", QueueOrder(spec), concurrency, threading.Event(), prefetch=0)


def queues_of(items):
    return [decode_payload(raw)["queue"] for _, raw in items]


@pytest.mark.parametrize("queues", [["critical", "default", "low"], [("critical", 6), ("default", 5), ("low", 1)]])
def test_the_other_queues_keep_their_order(broker, queues):
    for name in ("critical", "default", "low"):
        for i in range(3):
            IncrJob.set(queue=name).perform_later(f"{name}{i}")
    api.pause_queue("default")
    spec = parse_queues(queues)
    fetcher = fetcher_for(broker, spec)
    items = fetcher._fetch(fetcher._lanes[0], new=True)
    fetched = queues_of(items)
    assert sorted(fetched) == ["critical"] * 3 + ["low"] * 3
    if spec.strict:
        assert fetched == ["critical"] * 3 + ["low"] * 3
    assert broker.queue_size("default") == 3


def test_every_queue_paused_costs_no_fetch(broker):
    IncrJob.perform_later("k")
    api.pause_queue("default")
    fetcher = fetcher_for(broker, QueueSpec(("default",), (1,), strict=True))
    lane = fetcher._lanes[0]
    attempts = lane.attempt
    assert fetcher._fetch(lane, new=True) == [] and fetcher._dry
    assert lane.attempt == attempts  # no round trip made, no attempt numbered
    api.resume_queue("default")
    fetcher._paused_read_at -= PAUSED_RECHECK  # as a second later
    assert queues_of(fetcher._fetch(lane, new=True)) == ["default"]


def test_pause_refuses_names_that_are_not_queue_names(broker):
    with pytest.raises(ValueError, match="not a valid queue name"):
        api.pause_queue("a:b")
    with pytest.raises(TypeError):
        api.resume_queue(None)


def test_queues_show_the_paused_state(broker):
    api.pause_queue("idle")  # never pushed to: listed, since it is paused
    data = {q.name: q for q in api.queues()}
    assert data["idle"].paused and not data["default"].paused
    assert data["idle"].as_json()["paused"] is True


# -- jobs queue pause / resume ---------------------------------------------------------------------


def run(*args):
    out = StringIO()
    call_command("jobs", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


@pytest.mark.django_db
def test_the_jobs_command_pauses_and_resumes(broker):
    assert "Paused queue 'low'" in run("queue", "pause", "low")
    assert "was paused already" in run("queue", "pause", "low")
    assert broker.paused_queues() == {"low"}
    rows = {line.split()[0]: line.split() for line in run("queues").splitlines()[1:]}
    assert rows["low"][-1] == "paused" and rows["default"][-1] == "active"
    assert {q["name"]: q["paused"] for q in json.loads(run("queues", "--json"))}["low"] is True
    assert "Resumed queue 'low'" in run("queue", "resume", "low")
    assert "was not paused" in run("queue", "resume", "low")
    assert broker.paused_queues() == set()
    with pytest.raises(CommandError, match="not a valid queue name"):
        run("queue", "pause", "a b")


# -- the dashboard -----------------------------------------------------------------------------------


@pytest.fixture
def manager(client, db):
    user = User.objects.create_user("manager", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="change_deadjob"))
    client.force_login(user)
    return user


def test_the_dashboard_pauses_and_resumes_a_queue(client, broker, manager):
    page = client.get(BASE + "queues/")
    assert b'name="pause" value="1"' in page.content
    response = client.post(BASE + "queues/low/pause/", {"pause": "1"}, follow=True)
    assert b"Paused queue low" in response.content
    assert broker.paused_queues() == {"low"}
    assert b"<strong>paused</strong>" in response.content and b'name="pause" value="0"' in response.content
    client.post(BASE + "queues/low/pause/", {"pause": "0"})
    assert broker.paused_queues() == set()
    assert client.post(BASE + "queues/a:b/pause/", {"pause": "1"}).status_code == 404


@pytest.mark.django_db
def test_only_managers_pause_queues(client, broker):
    assert client.post(BASE + "queues/low/pause/", {"pause": "1"}).status_code == 302  # to the login page
    client.force_login(User.objects.create_user("viewer", is_staff=True))
    assert b'name="pause"' not in client.get(BASE + "queues/").content
    assert client.post(BASE + "queues/low/pause/", {"pause": "1"}).status_code == 403
    assert broker.paused_queues() == set()
