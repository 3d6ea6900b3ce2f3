"""The jobs dashboard in the admin, on real Redis: what it shows, what it changes, and to whom."""

import json
import time

import pytest
from django.contrib import admin
from django.contrib.auth.models import Permission, User
from django.urls import reverse

from django_async_jobs import api
from django_async_jobs.broker import client as client_module
from django_async_jobs.broker.client import score
from django_async_jobs.deadjobs import flush_staged
from django_async_jobs.models import DeadJob
from django_async_jobs.serialization import encode_payload, new_job_id
from tests.helpers import add_stats, fetch, wait_for
from tests.testapp.jobs import FailJob, IncrJob, TraceJob

pytestmark = pytest.mark.django_db

BASE = "/admin/django_async_jobs/dashboard/"
PAGES = ["", "stats.json", "queues/", "queues/default/", "queues/default/clear/", "busy/", "scheduled/", "retries/", "blocked/"]


@pytest.fixture
def manager(client):
    """A staff user with the manage permission, logged in."""
    user = User.objects.create_user("manager", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="change_deadjob"))
    client.force_login(user)
    return user


@pytest.fixture
def viewer(client):
    """Staff without the manage permission: may look, may not change."""
    user = User.objects.create_user("viewer", is_staff=True)
    client.force_login(user)
    return user


def in_set(broker, key, n, at=None, **extra):
    """``n`` jobs in the schedule or retry set, one second apart from ``at``."""
    at = time.time() + 3600 if at is None else at
    payloads = {}
    for i in range(n):
        data = {"jid": f"job{i:04d}", "job": IncrJob.job_name, "queue": "default", "args": [f"k{i}"], **extra}
        payloads[encode_payload(data)] = at + i
    broker.redis.zadd(key, payloads)
    return [f"job{i:04d}" for i in range(n)]


def refs(broker, key):
    return [e.ref for e in api.page_of(key, 1, 200, broker).entries]


def ids(broker, key):
    return [e.job_id for e in api.page_of(key, 1, 200, broker).entries]


# -- who gets in --------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES)
def test_anonymous_gets_the_login_page_and_no_data(client, broker, page):
    IncrJob.perform_later("secret-arg")
    response = client.get(BASE + page)
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
    assert b"secret-arg" not in response.content and b"processed" not in response.content


@pytest.mark.parametrize("page", PAGES)
def test_non_staff_user_gets_no_data(client, broker, page):
    IncrJob.perform_later("secret-arg")
    user = User.objects.create_user("visitor")  # active, not staff
    user.user_permissions.add(Permission.objects.get(codename="change_deadjob"))
    client.force_login(user)
    response = client.get(BASE + page)
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert b"secret-arg" not in response.content


def test_anonymous_and_non_staff_cannot_change_anything(client, broker):
    in_set(broker, broker.keys.retry, 2)
    IncrJob.perform_later("x")
    posts = [
        ("retries/", {"action": "delete", "ref": refs(broker, broker.keys.retry)}),
        ("queues/default/clear/", {}),
        ("queues/default/", {"action": "delete", "ref": refs(broker, broker.keys.queue("default"))}),
        ("busy/", {"process": "p1", "signal": "stop"}),
    ]
    for page, data in posts:
        assert client.post(BASE + page, data).status_code == 302
    client.force_login(User.objects.create_user("visitor"))
    for page, data in posts:
        assert client.post(BASE + page, data).status_code == 302
    assert broker.redis.zcard(broker.keys.retry) == 2
    assert broker.queue_size("default") == 1
    assert broker.redis.get(broker.keys.process_signal("p1")) is None


def test_staff_without_permission_sees_pages_but_no_actions(client, broker, viewer):
    in_set(broker, broker.keys.retry, 2)
    IncrJob.perform_later("x")
    page = client.get(BASE + "retries/")
    assert page.status_code == 200 and b"job0000" in page.content
    assert b'name="ref"' not in page.content and b"one_kill" not in page.content
    for url, data in [
        ("retries/", {"action": "kill", "ref": refs(broker, broker.keys.retry)}),
        ("queues/default/clear/", {}),
        ("busy/", {"process": "p1", "signal": "quiet"}),
    ]:
        assert client.post(BASE + url, data).status_code == 403
    assert client.get(BASE + "queues/default/clear/").status_code == 403
    assert broker.redis.zcard(broker.keys.retry) == 2 and broker.queue_size("default") == 1


ARGUMENT_PAGES = ["queues/default/", "scheduled/", "retries/", "busy/"]


def with_secret_arguments(broker):
    """A job carrying "secret-arg" on every page that lists jobs: queue, schedule, retries, busy."""
    IncrJob.perform_later("secret-arg")
    IncrJob.perform_later("secret-arg")  # one stays queued, one is fetched below
    for key in (broker.keys.schedule, broker.keys.retry):
        broker.redis.zadd(key, {encode_payload({"jid": "sec1", "job": IncrJob.job_name, "queue": "default",
                                                "args": ["secret-arg"]}): time.time() + 60})
    info = {"host": "host-a", "pid": 1, "queues": "default", "concurrency": 1, "started_at": time.time(), "busy": 1, "quiet": 0}
    broker.heartbeat("host-a:1:ab", info, ttl=60)
    [(field, _)] = fetch(broker, "host-a:1:ab", ["default"], 1)
    broker.heartbeat("host-a:1:ab", {**info, "running": json.dumps({field.decode(): time.time()})}, ttl=60)  # started


@pytest.mark.parametrize("page", ARGUMENT_PAGES)
def test_staff_without_the_read_permission_see_no_arguments_nor_dead_jobs(client, broker, viewer, page):
    with_secret_arguments(broker)
    response = client.get(BASE + page)
    assert response.status_code == 200
    assert b"secret-arg" not in response.content and b"IncrJob" in response.content
    assert b">Arguments<" not in response.content and b"aj-hidden-arguments" in response.content
    assert b"aj-dead-link" not in response.content


def test_the_overview_hides_the_dead_card_without_the_read_permission(client, broker, viewer):
    response = client.get(BASE)
    assert response.status_code == 200
    assert b'data-stat="dead"' not in response.content and b"aj-dead-link" not in response.content
    reader = User.objects.create_user("reader", is_staff=True)
    reader.user_permissions.add(Permission.objects.get(codename="view_deadjob"))
    client.force_login(reader)
    response = client.get(BASE)
    assert b'data-stat="dead"' in response.content and b"aj-dead-link" in response.content


@pytest.mark.parametrize("codename", ["view_deadjob", "change_deadjob"])
@pytest.mark.parametrize("page", ARGUMENT_PAGES)
def test_the_read_permission_shows_arguments(client, broker, codename, page):
    user = User.objects.create_user("reader", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename=codename))
    client.force_login(user)
    with_secret_arguments(broker)
    response = client.get(BASE + page)
    assert response.status_code == 200
    assert b"secret-arg" in response.content and b">Arguments<" in response.content
    assert b"aj-hidden-arguments" not in response.content and b"aj-dead-link" in response.content


def test_mutations_need_the_csrf_token(broker, manager):
    from django.test import Client

    strict = Client(enforce_csrf_checks=True)
    strict.force_login(manager)
    in_set(broker, broker.keys.retry, 1)
    response = strict.post(BASE + "retries/", {"action": "delete", "ref": refs(broker, broker.keys.retry)})
    assert response.status_code == 403
    assert broker.redis.zcard(broker.keys.retry) == 1


# -- pages --------------------------------------------------------------------------------------


def test_overview_counts_and_json(client, broker, manager):
    IncrJob.perform_later("a")
    IncrJob.set(queue="low").perform_later("b")
    in_set(broker, broker.keys.schedule, 3)
    in_set(broker, broker.keys.retry, 2)
    add_stats(broker, processed=7, failed=2)
    broker.redis.hset(broker.keys.dead, "d1", "{}")  # staged, not yet in the database
    DeadJob.objects.create(dead_id="d0", died_at="2026-01-01T00:00:00Z", reason="killed")
    response = client.get(BASE)
    assert response.status_code == 200
    assert response.context["stats"] == api.Stats(
        processed=7, failed=2, processed_today=7, failed_today=2, enqueued=2, scheduled=3, retries=2,
        dead=DeadJob.objects.count() + 1, processes=0, busy=0, concurrency=0,
    )
    assert response.context["stats"].dead >= 2
    assert b'id="aj-chart"' in response.content
    assert reverse("admin:django_async_jobs_deadjob_changelist").encode() in response.content
    data = client.get(BASE + "stats.json").json()
    assert data["stats"]["enqueued"] == 2 and data["stats"]["processed_today"] == 7
    assert len(data["history"]) == 30 and data["history"][-1]["processed"] == 7
    assert {q["name"]: q["size"] for q in data["queues"]}["low"] == 1


def test_dashboard_is_listed_in_the_admin_index_and_sidebar(client, viewer):
    response = client.get("/admin/")
    overview = reverse("admin:async_jobs_overview")
    assert overview == BASE
    assert f'href="{overview}"'.encode() in response.content
    # The DeadJob admin needs view permission; without it the section holds the dashboard alone.
    [app] = [a for a in response.context["app_list"] if a["app_label"] == "django_async_jobs"]
    assert [m["object_name"] for m in app["models"]] == ["AsyncJobsDashboard"]


def test_install_on_a_custom_site_is_idempotent():
    from django.contrib.admin import AdminSite

    from django_async_jobs.dashboard import install

    site = AdminSite(name="ops")
    install(site)
    install(site)
    names = [p.name for p in site.get_urls() if getattr(p, "name", None)]
    assert names.count("async_jobs_overview") == 1
    assert admin.site._async_jobs_dashboard


def test_queues_show_size_and_latency(client, broker, viewer):
    IncrJob.perform_later("a")
    oldest = json.loads(broker.redis.zrange(broker.keys.queue("default"), 0, 0)[0])
    broker.redis.zadd(broker.keys.queue("low"), {encode_payload({**oldest, "queue": "low", "enqueued_at": time.time() - 90}): 1})
    response = client.get(BASE + "queues/")
    rows = {q.name: q for q, *_ in response.context["rows"]}
    assert rows["default"].size == 1 and rows["default"].latency < 5
    assert rows["low"].size == 1 and 89 < rows["low"].latency < 100
    assert rows["critical"].size == 0  # configured, never used: still listed


def test_queue_pages_follow_queue_order(client, broker, viewer):
    jobs = [IncrJob.perform_later(f"k{i}").job_id for i in range(30)]
    urgent = IncrJob.set(priority=10).perform_later("urgent").job_id
    first = client.get(BASE + "queues/default/").context["page"]
    assert [e.job_id for e in first.entries] == [urgent, *jobs[:24]]
    second = client.get(BASE + "queues/default/?page=2").context["page"]
    assert [e.job_id for e in second.entries] == jobs[24:]
    assert (second.total, second.pages, second.start_index, second.end_index) == (31, 2, 26, 31)
    beyond = client.get(BASE + "queues/default/?page=99&per_page=10").context["page"]
    assert beyond.number == 4 and [e.job_id for e in beyond.entries] == jobs[29:]


def test_delete_one_and_several_jobs_from_a_queue(client, broker, manager):
    jobs = [IncrJob.perform_later(f"k{i}").job_id for i in range(4)]
    key = broker.keys.queue("default")
    all_refs = refs(broker, key)
    response = client.post(BASE + "queues/default/?page=1", {"one_delete": all_refs[1]})
    assert response.status_code == 302 and response["Location"].endswith("queues/default/?page=1")
    assert ids(broker, key) == [jobs[0], jobs[2], jobs[3]]
    client.post(BASE + "queues/default/", {"action": "delete", "ref": [all_refs[0], all_refs[3], all_refs[1]]})
    assert ids(broker, key) == [jobs[2]]


def test_queue_pages_refuse_names_that_are_not_queue_names(client, broker, manager):
    broker.redis.zadd(broker.keys.queue("a:b"), {"x": 1})
    assert client.get(BASE + "queues/a:b/").status_code == 404
    assert client.post(BASE + "queues/a:b/clear/").status_code == 404
    assert broker.redis.zcard(broker.keys.queue("a:b")) == 1


def test_clear_queue_asks_first(client, broker, manager):
    for i in range(3):
        IncrJob.perform_later(f"k{i}")
    IncrJob.set(queue="low").perform_later("stays")
    confirm = client.get(BASE + "queues/default/clear/")
    assert confirm.status_code == 200 and b"holds 3 jobs" in confirm.content
    assert broker.queue_size("default") == 3
    response = client.post(BASE + "queues/default/clear/", follow=True)
    assert b"3 jobs deleted" in response.content
    assert broker.queue_size("default") == 0 and broker.queue_size("low") == 1
    assert not broker.redis.sismember(broker.keys.queues, "default")


def test_sorted_sets_are_paginated_by_time(client, broker, viewer):
    now = time.time()
    later = in_set(broker, broker.keys.schedule, 30, at=now + 100)
    sooner = in_set(broker, broker.keys.schedule, 1, at=now + 10, priority=1)  # id "job0000" again
    page = client.get(BASE + "scheduled/?per_page=10").context["page"]
    assert [e.job_id for e in page.entries] == sooner + later[:9] and page.total == 31
    assert page.entries[0].at.timestamp() == pytest.approx(now + 10)
    assert client.get(BASE + "scheduled/?page=4&per_page=10").context["page"].entries[0].job_id == later[29]


def test_run_now_moves_scheduled_jobs_to_their_queue(client, broker, manager):
    jobs = in_set(broker, broker.keys.schedule, 3)
    all_refs = refs(broker, broker.keys.schedule)
    client.post(BASE + "scheduled/", {"action": "enqueue", "ref": all_refs[:2]})
    assert ids(broker, broker.keys.schedule) == [jobs[2]]
    assert ids(broker, broker.keys.queue("default")) == jobs[:2]
    # A ref whose job is gone (run by the poller, deleted by someone else) is skipped.
    client.post(BASE + "scheduled/", {"one_enqueue": all_refs[0]})
    assert broker.queue_size("default") == 2


def test_delete_retries(client, broker, manager):
    jobs = in_set(broker, broker.keys.retry, 3)
    all_refs = refs(broker, broker.keys.retry)
    client.post(BASE + "retries/", {"one_delete": all_refs[0]})
    client.post(BASE + "retries/", {"action": "delete", "ref": all_refs[2]})
    assert ids(broker, broker.keys.retry) == [jobs[1]]
    assert broker.queue_size("default") == 0


def test_bulk_action_without_a_selection_changes_nothing(client, broker, manager):
    in_set(broker, broker.keys.retry, 2)
    response = client.post(BASE + "retries/", {"action": "delete"}, follow=True)
    assert b"Select at least one job" in response.content
    client.post(BASE + "retries/", {"action": "explode", "ref": refs(broker, broker.keys.retry)})
    client.post(BASE + "retries/", {"action": "delete", "ref": ["garbage", "nan|x", "1.0|"]})
    assert broker.redis.zcard(broker.keys.retry) == 2


def test_kill_a_real_retry_moves_it_to_the_dead_jobs(client, broker, manager, worker):
    FailJob.perform_later("kill:count")
    wait_for(lambda: broker.redis.zcard(broker.keys.retry) == 1, what="the failed job in the retry set")
    [job] = api.page_of(broker.keys.retry, broker=broker).entries
    client.post(BASE + "retries/", {"one_kill": job.ref})
    assert broker.redis.zcard(broker.keys.retry) == 0
    [(dead_id, staged)] = broker.redis.hgetall(broker.keys.dead).items()
    record = json.loads(staged)
    assert record["reason"] == "killed" and record["job_id"] == job.job_id
    assert record["payload"] == job.raw and record["dead_id"] == dead_id.decode()
    assert record["error_class"] == "RuntimeError" and record["error_message"] == "boom"
    assert record["died_at"] == pytest.approx(time.time(), abs=10)
    # The retry payload kept the failure's traceback, so the killed job's record has it.
    assert "raise RuntimeError(\"boom\")" in job.data["traceback"] and record["traceback"] == job.data["traceback"]
    assert flush_staged(broker) == 1
    row = DeadJob.objects.get()
    assert (row.reason, row.job_id, row.job_class, row.error_class) == ("killed", job.job_id, FailJob.job_name, "RuntimeError")
    assert row.traceback.startswith("Traceback (most recent call last):") and row.traceback.endswith("RuntimeError: boom\n")


def test_pick_tells_jobs_with_the_same_score_apart(broker):
    key = broker.keys.retry
    a = encode_payload({"jid": "a", "job": "J", "queue": "default", "args": []})
    b = encode_payload({"jid": "b", "job": "J", "queue": "default", "args": []})
    broken = "not json at all"
    broker.redis.zadd(key, {a: 5.0, b: 5.0, broken: 5.0})
    by_id = {e.job_id: e for e in api.page_of(key, broker=broker).entries}
    assert api.act(key, "delete", [by_id["b"].ref], broker) == 1
    assert api.act(key, "enqueue", [e.ref for e in by_id.values() if e.data is None], broker) == 1
    assert [m.decode() for m in broker.redis.zrange(key, 0, -1)] == [a]
    # The unreadable job could not go to a queue: it is staged as dead instead of lost.
    [staged] = broker.redis.hvals(broker.keys.dead)
    assert json.loads(staged)["reason"] == "malformed_payload" and json.loads(staged)["payload"] == broken


POISON = [
    b"[" * 100_000 + b"]" * 100_000,
    b'{"jid":"a1","job":"J","queue":"default","args":5,"kwargs":[1]}',
    b'{"jid":"\\ud800","job":"\\ud800","queue":"\\udfff","args":["\\ud800"],"kwargs":{"\\ud800":1},'
    b'"error_class":"\\udfff","error_message":["x"],"retries":{"a":"x"},"retry_count":"y"}',
    b'{"jid":"\xff\xfe","job":"J\xff","queue":"default","args":["\xfe"]}',
    b'{"jid":"a2","job":"J","queue":"default","args":[' + b"[" * 1200 + b"]" * 1200 + b'],"enqueued_at":1e300}',
    b'{"jid":"a3","job":["x"],"queue":{"a":1},"args":[NaN,1e999],"enqueued_at":NaN,"priority":NaN}',
    b'{"jid":"a4","job":"J","queue":"default","args":[' + b"1" * 5000 + b"]}",
]


def test_no_payload_makes_a_page_fail_and_each_can_be_acted_on(client, broker, manager):
    """Every page that lists jobs shows these payloads, and a ref still finds each one."""
    for key in (broker.keys.queue("default"), broker.keys.schedule, broker.keys.retry):
        broker.redis.zadd(key, {member: 1e12 + i for i, member in enumerate(POISON)})
    broker.heartbeat("host-a:1:ab", {"host": "host-a", "pid": 1, "queues": "default", "concurrency": 1}, ttl=60)
    broker.redis.hset(broker.keys.inflight("host-a:1:ab"), mapping={f"f{i}": m for i, m in enumerate(POISON)})
    for page in PAGES + ["queues/default/?per_page=200"]:
        assert client.get(BASE + page).status_code == 200, page
    entries = api.page_of(broker.keys.retry, per_page=200, broker=broker).entries
    for entry in entries:  # what `jobs retries --json` writes
        json.dumps(entry.as_json(), ensure_ascii=False).encode()
    assert [p.as_json() for p in api.processes(broker=broker)][0]["jobs"]
    assert api.act(broker.keys.retry, "kill", [e.ref for e in entries], broker) == len(POISON)
    assert broker.redis.hlen(broker.keys.dead) == len(POISON)
    response = client.post(BASE + "scheduled/", {"action": "delete", "ref": refs(broker, broker.keys.schedule)})
    assert response.status_code == 302 and broker.redis.zcard(broker.keys.schedule) == 0


# -- busy ---------------------------------------------------------------------------------------


def test_busy_lists_processes_and_their_running_jobs(client, broker, viewer):
    job = IncrJob.perform_later("busy")
    broker.heartbeat("host-a:123:ab", {"host": "host-a", "pid": 123, "queues": "default,low", "concurrency": 5,
                                       "started_at": time.time() - 60, "busy": 1, "quiet": 0}, ttl=60)
    fetch(broker, "host-a:123:ab", ["default"], 1)
    response = client.get(BASE + "busy/")
    [process] = response.context["processes"]
    assert (process.host, process.pid, process.queues, process.concurrency, process.busy) == ("host-a", "123", "default,low", 5, 1)
    assert time.time() - process.started_at.timestamp() == pytest.approx(60, abs=5)
    # Fetched ahead, no thread yet: listed apart, not as running (the Busy count stays the heartbeat's).
    assert response.context["running"] == []
    [(_, waiting, url)] = response.context["waiting"]
    assert waiting.job.job_id == job.job_id and waiting.runtime is None
    assert b"waiting for a thread" in response.content and b'id="aj-prefetched"' in response.content
    assert f'data-job-id="{job.job_id}"'.encode() not in response.content.split(b'id="aj-prefetched"')[0]


def test_busy_shows_a_real_workers_running_job_with_its_runtime_and_memory(client, broker, viewer, worker):
    key = f"{broker.keys.prefix}:trace"
    before = time.time()
    job = TraceJob.perform_later(key, "busy", gate=f"{key}:gate")  # runs until the gate opens

    def running():
        [process] = api.processes()
        return process if process.jobs and process.jobs[0].runtime is not None else None

    try:
        process = wait_for(running, timeout=30, what="the job's start in the heartbeat")
        assert process.process_id == worker.process_id and process.busy == 1
        assert process.jobs[0].job.job_id == job.job_id and 0 <= process.jobs[0].runtime <= time.time() - before
        assert process.rss > 10 * 2**20  # a Django process: tens of MB
        response = client.get(BASE + "busy/")
        assert f'data-job-id="{job.job_id}"'.encode() in response.content
    finally:
        broker.redis.rpush(f"{key}:gate", 1)
    worker.stop(timeout=5)


def test_quiet_and_stop_buttons_set_the_signal_key(client, broker, manager):
    client.post(BASE + "busy/", {"process": "host-a:1:ab", "signal": "quiet"})
    assert broker.redis.get(broker.keys.process_signal("host-a:1:ab")) == b"quiet"
    assert 0 < broker.redis.ttl(broker.keys.process_signal("host-a:1:ab")) <= 6
    client.post(BASE + "busy/", {"process": "host-a:1:ab", "signal": "explode"})
    assert broker.redis.get(broker.keys.process_signal("host-a:1:ab")) == b"quiet"


def test_a_worker_goes_quiet_on_its_next_heartbeat(broker, worker):
    api.signal_process(worker.process_id, "quiet")
    wait_for(lambda: worker.quiet, timeout=30, what="the worker going quiet")
    assert worker.stopping.is_set()
    assert broker.redis.get(broker.keys.process_signal(worker.process_id)) is None
    wait_for(lambda: broker.redis.hget(broker.keys.process(worker.process_id), "quiet") == b"1", what="quiet in its info")
    IncrJob.perform_later("after:quiet")
    time.sleep(0.5)
    assert broker.queue_size("default") == 1  # a quiet worker fetches nothing new


def test_stop_from_the_dashboard_stops_a_worker_process(broker, spawn):
    from tests.helpers import registered

    proc = spawn("--concurrency", "1")
    [process_id] = wait_for(lambda: list(registered(broker)), timeout=15, what="the worker registering")
    api.signal_process(process_id, "stop")
    assert proc.wait(15) == 0
    assert registered(broker) == {}


def test_deleting_or_killing_a_unique_job_releases_its_lock(broker):
    from tests.testapp.unique_jobs import UntilExecutedJob

    key = f"{broker.keys.prefix}:unique"
    first = UntilExecutedJob.set(wait=3600).perform_later(key, "a")
    assert not UntilExecutedJob.set(wait=3600).perform_later(key, "b")  # locked
    [entry] = api.page_of(broker.keys.schedule, broker=broker).entries
    assert entry.job_id == first.job_id
    api.act(broker.keys.schedule, "enqueue", [entry.ref], broker)  # run now: still locked
    assert not UntilExecutedJob.perform_later(key, "c")
    [entry] = api.page_of(broker.keys.queue("default"), broker=broker).entries
    assert api.act(broker.keys.queue("default"), "delete", [entry.ref], broker) == 1
    second = UntilExecutedJob.set(wait=3600).perform_later(key, "d")
    assert second
    [entry] = api.page_of(broker.keys.schedule, broker=broker).entries
    broker.redis.zadd(broker.keys.retry, {entry.raw: entry.score})
    broker.redis.zrem(broker.keys.schedule, entry.raw)
    [entry] = api.page_of(broker.keys.retry, broker=broker).entries
    assert api.act(broker.keys.retry, "kill", [entry.ref], broker) == 1
    assert UntilExecutedJob.perform_later(key, "e")


# -- recurring ----------------------------------------------------------------------------------


def test_recurring_lists_entries_and_runs_one_now(client, broker, manager, settings):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "RECURRING": {
        "nightly": {"cron": "0 3 * * *", "class": IncrJob.job_name, "args": ["nightly:count", 2], "queue": "low"},
    }}
    response = client.get(BASE + "recurring/")
    [entry] = response.context["entries"]
    assert (entry["name"], entry["cron"], entry["queue"], entry["last_run"]) == ("nightly", "0 3 * * *", "low", None)
    assert [m.hour for m in entry["next_runs"]] == [3, 3, 3]
    assert b'data-entry="nightly"' in response.content
    response = client.post(BASE + "recurring/", {"entry": "nightly"}, follow=True)
    [job] = api.page_of(broker.keys.queue("low"), broker=broker).entries
    assert (job.job_class, job.args) == (IncrJob.job_name, ["nightly:count", 2])
    assert f"job {job.job_id}".encode() in response.content
    response = client.post(BASE + "recurring/", {"entry": "nope"}, follow=True)
    assert [str(m) for m in response.context["messages"]] == ["no recurring entry is named 'nope'"]
    assert broker.queue_size("low") == 1


def test_recurring_shows_a_broken_setting_instead_of_failing(client, broker, viewer, settings):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "RECURRING": {"bad": {"cron": "61 * * * *", "class": "x.Y"}}}
    response = client.get(BASE + "recurring/")
    assert response.status_code == 200 and b"is not a cron expression" in response.content
    assert client.post(BASE + "recurring/", {"entry": "bad"}).status_code == 403


# -- cancel -------------------------------------------------------------------------------------


def test_cancel_takes_jobs_out_of_a_queue_the_schedule_and_the_retries(client, broker, manager):
    from django_async_jobs import signals

    cancelled = []
    signals.job_cancelled.connect(receiver := lambda sender, job_id, **kw: cancelled.append(job_id), weak=False)
    try:
        queued = [IncrJob.perform_later(f"q{i}").job_id for i in range(3)]
        scheduled = in_set(broker, broker.keys.schedule, 2)
        client.post(BASE + "queues/default/", {"one_cancel": refs(broker, broker.keys.queue("default"))[1]})
        client.post(BASE + "scheduled/", {"action": "cancel", "ref": refs(broker, broker.keys.schedule)})
        retried = in_set(broker, broker.keys.retry, 2, retry_count=1)
        response = client.post(BASE + "retries/", {"one_cancel": refs(broker, broker.keys.retry)[0]}, follow=True)
    finally:
        signals.job_cancelled.disconnect(receiver)
    assert "Cancelled 1 job." in [str(m) for m in response.context["messages"]]
    assert ids(broker, broker.keys.queue("default")) == [queued[0], queued[2]]
    assert ids(broker, broker.keys.schedule) == [] and ids(broker, broker.keys.retry) == [retried[1]]
    assert cancelled == [queued[1], *scheduled, retried[0]]
    assert all(broker.redis.exists(broker.keys.cancel(job_id)) for job_id in cancelled)
    assert broker.redis.hlen(broker.keys.dead) == 0 and DeadJob.objects.count() == 0
    page = client.get(BASE + "retries/").content
    assert b'name="one_cancel"' in page and b'value="cancel"' in page


def test_cancel_on_the_busy_page_marks_a_running_job(client, broker, manager):
    job = IncrJob.perform_later("busy")
    info = {"host": "host-a", "pid": 1, "queues": "default", "concurrency": 1, "started_at": time.time(), "busy": 1, "quiet": 0}
    broker.heartbeat("host-a:1:ab", info, ttl=60)
    [(field, _)] = fetch(broker, "host-a:1:ab", ["default"], 1)
    broker.heartbeat("host-a:1:ab", {**info, "running": json.dumps({field.decode(): time.time()})}, ttl=60)  # started
    page = client.get(BASE + "busy/").content
    assert f'name="cancel" value="{job.job_id}"'.encode() in page
    response = client.post(BASE + "busy/", {"cancel": job.job_id}, follow=True)
    assert "it stops at its next checkpoint" in str(list(response.context["messages"])[0])
    assert broker.redis.exists(broker.keys.cancel(job.job_id))
    assert broker.cancelled_in_flight("host-a:1:ab") == {job.job_id}
    response = client.post(BASE + "busy/", {"cancel": "no such*job"}, follow=True)
    assert "is not a job id" in str(list(response.context["messages"])[0])


def test_cancel_needs_the_manage_permission(client, broker, viewer):
    job = IncrJob.perform_later("x")
    assert b"one_cancel" not in client.get(BASE + "queues/default/").content
    assert client.post(BASE + "queues/default/", {"one_cancel": refs(broker, broker.keys.queue("default"))[0]}).status_code == 403
    assert client.post(BASE + "busy/", {"cancel": job.job_id}).status_code == 403
    assert broker.queue_size("default") == 1 and not broker.redis.exists(broker.keys.cancel(job.job_id))


# -- issue 22: what an operator reads ------------------------------------------------------------

ALL_PAGES = ["", "queues/", "queues/default/", "queues/default/clear/", "busy/", "scheduled/", "retries/",
             "recurring/", "blocked/", "batches/", "metrics/"]


@pytest.mark.parametrize("page", ALL_PAGES)
def test_breadcrumbs_are_the_admins_list_and_the_section_is_called_jobs(client, broker, manager, page):
    IncrJob.perform_later("x")
    response = client.get(BASE + page)
    assert response.status_code == 200
    html = response.content.decode()
    assert '<ol class="breadcrumbs">' in html and 'class="breadcrumbs"' not in html.replace('<ol class="breadcrumbs">', "")
    crumbs = html.split('<ol class="breadcrumbs">')[1].split("</ol>")[0]
    assert f'<li><a href="{reverse("admin:app_list", args=["django_async_jobs"])}">Jobs</a></li>' in crumbs
    assert crumbs.count("<li") >= 3 and "aria-current" in crumbs
    assert "Async jobs" not in html and "Background jobs" not in html


def test_the_app_is_called_jobs_in_the_admin_index(client, manager):
    response = client.get("/admin/")
    [app] = [a for a in response.context["app_list"] if a["app_label"] == "django_async_jobs"]
    assert app["name"] == "Jobs" and app["models"][0]["name"] == "Dashboard"


def test_unknown_queues_are_not_found(client, broker, manager):
    assert client.get(BASE + "queues/nosuchqueue/").status_code == 404
    assert client.get(BASE + "queues/nosuchqueue/clear/").status_code == 404
    assert client.post(BASE + "queues/nosuchqueue/", {"action": "delete", "ref": ["1|x"]}).status_code == 404
    assert client.get(BASE + "queues/critical/").status_code == 200  # configured, empty: known


def test_bulk_delete_in_a_queue_with_nothing_selected_says_so(client, broker, manager):
    IncrJob.perform_later("stays")
    response = client.post(BASE + "queues/default/", {"action": "delete"}, follow=True)
    assert [str(m) for m in response.context["messages"]] == ["Select at least one job."]
    assert broker.queue_size("default") == 1


def test_durations_and_moments_have_one_format(settings):
    from datetime import UTC, datetime

    from django_async_jobs.templatetags.async_jobs import absolute, duration, moment, relative

    assert [duration(s) for s in (0.25, 4.26, 59, 90, 423, 3600, 3725, 273650)] == [
        "0.2 s", "4.3 s", "59 s", "1 min 30 s", "7 min 3 s", "1 h", "1 h 2 min", "3 d 4 h",
    ]
    assert relative(-423) == "7 min 3 s ago" and relative(65) == "in 1 min 5 s"
    settings.TIME_ZONE = "Europe/Paris"  # 24-hour clock, seconds, in TIME_ZONE
    moment_utc = datetime(2026, 12, 5, 22, 55, 7, tzinfo=UTC)
    assert absolute(moment_utc) == "2026-12-05 23:55:07" and absolute(moment_utc.timestamp()) == "2026-12-05 23:55:07"
    html = str(moment(moment_utc))
    assert '<time datetime="2026-12-05T22:55:07+00:00"' in html and ">2026-12-05 23:55:07</time>" in html and "ago" in html


def test_lists_show_times_in_the_one_format(client, broker, manager, settings):
    settings.TIME_ZONE = "Asia/Tokyo"
    in_set(broker, broker.keys.retry, 1, at=1_900_000_000, error_class="E", error_message="m")  # 2030-03-17 17:46:40 UTC
    html = client.get(BASE + "retries/").content.decode()
    assert ">2030-03-18 02:46:40</time>" in html and "Times are in Asia/Tokyo" in html
    broker.heartbeat("h:1:a", {"host": "h", "pid": 1, "queues": "default", "concurrency": 1, "busy": 0, "quiet": 0,
                               "started_at": time.time() - 423}, ttl=60)
    html = client.get(BASE + "busy/").content.decode()
    assert "(7 min 3 s ago)" in html or "(7 min 4 s ago)" in html


def test_queue_latency_counts_from_when_the_job_became_ready(client, broker, manager):
    # Enqueued an hour ago for an hour from now, then moved with Run now: it has waited seconds.
    now = time.time()
    broker.redis.zadd(broker.keys.schedule, {encode_payload({
        "jid": "late1", "job": IncrJob.job_name, "queue": "low", "args": ["x"], "enqueued_at": now - 3600,
        "at": now + 3600}): now + 3600})
    client.post(BASE + "scheduled/", {"one_enqueue": refs(broker, broker.keys.schedule)[0]})
    [moved] = api.page_of(broker.keys.queue("low"), broker=broker).entries
    assert moved.data["moved_at"] == pytest.approx(now, abs=30) and moved.raw.startswith('{"jid":"late1","moved_at":')
    assert {q.name: q.latency for q in api.queues()}["low"] < 30
    # Run now again (back in the schedule, as a retry would put it): one stamp, the new one.
    broker.redis.zadd(broker.keys.schedule, {moved.raw.replace('"moved_at":', '"moved_at":1'): now + 60})
    broker.redis.delete(broker.keys.queue("low"))
    client.post(BASE + "scheduled/", {"one_enqueue": refs(broker, broker.keys.schedule)[0]})
    [again] = api.page_of(broker.keys.queue("low"), broker=broker).entries
    assert again.raw.count('"moved_at"') == 1 and again.data["moved_at"] == pytest.approx(time.time(), abs=30)
    # A retry the poller moved when it came due: from its run-at time, not its first enqueue.
    due = api.entry(encode_payload({"jid": "r1", "job": "J", "queue": "q", "enqueued_at": now - 900, "at": now - 60}), 0)
    assert api.ready_since(due, now) == pytest.approx(now - 60)


def test_busy_threads_card_counts_processes_in_words(client, broker, manager):
    assert b"0 processes" in client.get(BASE).content
    broker.heartbeat("h:1:a", {"host": "h", "pid": 1, "queues": "default", "concurrency": 2, "busy": 0, "quiet": 0}, ttl=60)
    assert b"(<span data-stat=\"processes_label\">1 process</span>)" in client.get(BASE).content
    assert client.get(BASE + "stats.json").json()["stats"]["processes_label"] == "1 process"


def test_the_overview_warns_when_jobs_wait_and_no_process_is_alive(client, broker, manager):
    assert b'id="aj-no-process" hidden' in client.get(BASE).content  # nothing waits
    IncrJob.perform_later("x")
    html = client.get(BASE).content
    assert b'id="aj-no-process">' in html and b"no worker process is alive" in html
    assert client.get(BASE + "stats.json").json()["stats"]["nobody_works"] is True
    broker.heartbeat("h:1:a", {"host": "h", "pid": 1, "queues": "default", "concurrency": 1, "busy": 0, "quiet": 0}, ttl=60)
    assert b'id="aj-no-process" hidden' in client.get(BASE).content


def test_recurring_shows_a_run_now_as_the_last_run(client, broker, manager, settings):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "RECURRING": {
        "nightly": {"cron": "0 3 * * *", "class": IncrJob.job_name, "args": ["n"], "queue": "low"},
    }}
    assert "never" in client.get(BASE + "recurring/").content.decode().split('class="aj-last-run"')[1]
    client.post(BASE + "recurring/", {"entry": "nightly"})
    cell = client.get(BASE + "recurring/").content.decode().split('class="aj-last-run"')[1].split("</td>")[0]
    assert "run now" in cell and "never" not in cell and "ago" in cell


def test_the_overview_has_a_realtime_and_a_history_graph_and_the_redis_panel(client, broker, manager):
    html = client.get(BASE).content.decode()
    assert 'id="aj-realtime"' in html and 'id="aj-chart"' in html and 'id="aj-redis"' in html
    assert 'data-redis="version"' in html and 'preserveAspectRatio' not in html
    redis_info = client.get(BASE + "stats.json").json()["redis"]
    assert redis_info["version"] and redis_info["keys"] >= 0 and redis_info["clients"] >= 1


def test_the_overview_lists_paused_queues(client, broker, manager):
    api.pause_queue("low")
    html = client.get(BASE).content.decode()
    assert 'id="aj-paused"' in html and ">low</a>" in html.split('id="aj-paused"')[1]


# -- one job ------------------------------------------------------------------------------------


def job_page(client, job_id, **query):
    from urllib.parse import urlencode

    return client.get(f"{BASE}jobs/{job_id}/" + (f"?{urlencode(query)}" if query else ""))


def test_a_queued_job_has_a_page_with_its_arguments_and_actions(client, broker, manager):
    job = IncrJob.set(queue="low").perform_later("secret-arg", amount=3)
    html = job_page(client, job.job_id).content.decode()
    assert "waiting in queue low" in html and "secret-arg" in html and "&quot;amount&quot;: 3" in html
    assert 'name="one_delete"' in html and 'name="one_cancel"' in html
    # From a list, the link carries the set and the ref: the same page without a scan.
    listing = client.get(BASE + "queues/low/").content.decode()
    link = listing.split('class="aj-job-link"')[0].rsplit('href="', 1)[1].split('"')[0].replace("&amp;", "&")
    assert link.startswith(f"{BASE}jobs/{job.job_id}/?where=queue%3Alow&ref=")
    assert "waiting in queue low" in client.get(link).content.decode()


def test_a_retry_page_shows_the_error_traceback_and_history(client, broker, manager, worker):
    FailJob.perform_later("detail:count")
    wait_for(lambda: broker.redis.zcard(broker.keys.retry) == 1, what="the failed job in the retry set")
    [job] = api.page_of(broker.keys.retry, broker=broker).entries
    worker.stop(timeout=5)
    html = job_page(client, job.job_id, where="retries", ref=job.ref).content.decode()
    assert "waiting for a retry" in html and "RuntimeError: boom" in html
    assert "Traceback (most recent call last)" in html and "Executions" in html
    assert 'name="one_kill"' in html and 'name="one_enqueue"' in html


def test_a_scheduled_running_and_dead_job_each_have_a_page(client, broker, manager):
    [scheduled] = in_set(broker, broker.keys.schedule, 1)
    assert "scheduled" in job_page(client, scheduled).content.decode()
    job = IncrJob.perform_later("run")
    info = {"host": "host-a", "pid": 1, "queues": "default", "concurrency": 1, "busy": 1, "quiet": 0}
    broker.heartbeat("host-a:1:ab", info, ttl=60)
    fetch(broker, "host-a:1:ab", ["default"], 1)
    html = job_page(client, job.job_id).content.decode()
    assert "held by host-a:1:ab" in html and "waiting for a thread" in html and 'name="cancel"' in html
    assert f"{BASE}jobs/{job.job_id}/?where=running" in client.get(BASE + "busy/").content.decode()
    assert "held by host-a:1:ab" in job_page(client, job.job_id, where="running").content.decode()
    DeadJob.objects.create(dead_id="d9", job_id="gone1", died_at="2026-01-01T00:00:00Z", reason="killed",
                           traceback="Traceback ...", payload="{}")
    html = job_page(client, "gone1").content.decode()
    assert "Not in Redis any more" in html and "2026-01-01 00:00:00: killed" in html
    assert job_page(client, "neverwas").status_code == 404


def test_the_job_page_hides_arguments_without_the_read_permission(client, broker, viewer):
    job = IncrJob.perform_later("secret-arg")
    html = job_page(client, job.job_id).content.decode()
    assert "waiting in queue default" in html and "IncrJob" in html
    assert "secret-arg" not in html and "aj-hidden-arguments" in html and "one_delete" not in html


def test_a_job_in_each_state_is_found_by_its_id_alone(client, broker, manager):
    """No ``where`` in the URL: the page finds the job wherever it waits, in a queue's long
    priority band, among jobs handed back, scheduled, retrying, blocked, running or dead."""
    band = [encode_payload({"jid": new_job_id(), "job": IncrJob.job_name, "queue": "default", "args": [i]}) for i in range(700)]
    broker.push(band)
    handed_back = encode_payload({"jid": "handed-back", "job": IncrJob.job_name, "queue": "default", "args": []})
    broker.redis.zadd(broker.keys.queue("default"), {handed_back: score(0) - 2**45 + 7})  # its fetch number: 7
    scheduled = in_set(broker, broker.keys.schedule, 300)
    retrying = encode_payload({"jid": "retrying", "job": IncrJob.job_name, "queue": "low", "args": [], "error_class": "E"})
    broker.redis.zadd(broker.keys.retry, {retrying: time.time() + 60})
    limit = f"{IncrJob.job_name}:{'ab12' * 10}"
    broker.redis.zadd(broker.keys.blocked, {limit: time.time() * 1000})
    broker.redis.zadd(broker.keys.concurrency_blocked(limit), {
        encode_payload({"jid": f"blocked{i}", "job": IncrJob.job_name, "queue": "default", "args": []}): i for i in range(3)
    })
    running = IncrJob.set(queue="busy").perform_later("run")
    info = {"host": "host-a", "pid": 1, "queues": "busy", "concurrency": 1, "busy": 1, "quiet": 0}
    broker.heartbeat("host-a:1:ab", info, ttl=60)
    fetch(broker, "host-a:1:ab", ["busy"], 1)
    DeadJob.objects.create(dead_id="d9", job_id="dead1", died_at="2026-01-01T00:00:00Z", reason="killed", payload="{}")
    middle = json.loads(band[350])["jid"]
    expected = {
        middle: "waiting in queue default", json.loads(band[-1])["jid"]: "waiting in queue default",
        "handed-back": "waiting in queue default", scheduled[150]: "scheduled", "retrying": "waiting for a retry",
        "blocked1": "blocked by a concurrency limit", running.job_id: "held by host-a:1:ab", "dead1": "Not in Redis any more",
    }
    for job_id, state in expected.items():
        response = job_page(client, job_id)
        assert response.status_code == 200 and state in response.content.decode(), job_id
        assert len(response.context["places"]) == (job_id != "dead1"), job_id
    assert job_page(client, new_job_id()).status_code == 404


def test_find_bisects_runs_of_one_score_and_reads_the_rest_in_bounded_calls(broker, monkeypatch):
    """``find.lua`` over runs of one score longer and shorter than its slice, distinct scores,
    and runs cut by a slice's end, with one slice a call: every job is found once, and only it."""
    monkeypatch.setattr(client_module, "FIND_READS", 100)
    key = broker.keys.schedule
    scores = [1.0] * 250 + [2.0 + i for i in range(150)] + [500.0] * 99 + [600.0] * 101 + [700.5] * 3
    members = {}
    for i, at in enumerate(scores):
        members[encode_payload({"jid": new_job_id(), "job": IncrJob.job_name, "queue": "default", "args": [i]})] = at
    foreign = '{"job":"Hand","jid":"hand-made","queue":"default"}'  # an id not at the start: found in a short run
    members[foreign] = 3.0
    broker.redis.zadd(key, members)
    for member, at in [*list(members.items())[::7], (foreign, 3.0)]:
        job_id = api.entry(member, at).job_id
        assert [(m.decode(), s) for m, s in broker.find(key, job_id) if api.entry(m, s).job_id == job_id] == [(member, at)]
    calls = []
    run = broker._run
    monkeypatch.setattr(broker, "_run", lambda name, *args: calls.append(name) or run(name, *args))
    assert list(broker.find(key, "nowhere")) == []
    assert 1 < len(calls) < 10  # the runs of 250 and 101 bisected, the others read a slice a call


# -- search and "all matching" ------------------------------------------------------------------


def retries_with(broker, n, **extra):
    return in_set(broker, broker.keys.retry, n, **extra)


def test_search_filters_by_class_queue_error_and_argument_text(client, broker, manager):
    now = time.time()
    broker.redis.zadd(broker.keys.retry, {
        encode_payload({"jid": "a1", "job": "Billing", "queue": "low", "args": ["Ana@example.com"], "error_class": "Timeout",
                        "error_message": "gateway slow"}): now + 10,
        encode_payload({"jid": "a2", "job": "Billing", "queue": "default", "args": ["bo@example.com"], "error_class": "KeyError",
                        "error_message": "x"}): now + 11,
        encode_payload({"jid": "a3", "job": "Mailer", "queue": "low", "args": ["ana@example.com"], "error_class": "Timeout",
                        "error_message": "smtp slow"}): now + 12,
    })

    def found(**query):
        return sorted(row.job_id for row in client.get(BASE + "retries/", query).context["rows"])

    assert found(**{"class": "Billing"}) == ["a1", "a2"]
    assert found(queue="low") == ["a1", "a3"]
    assert found(error="SLOW") == ["a1", "a3"]
    assert found(q="ana@EXAMPLE") == ["a1", "a3"]
    assert found(**{"class": "Billing", "q": "ana"}) == ["a1"]
    assert found(q="nobody") == []


def test_argument_search_needs_the_read_permission(client, broker, viewer):
    retries_with(broker, 3)
    rows = client.get(BASE + "retries/", {"q": "k1"}).context["rows"]
    assert len(rows) == 3  # the text filter is ignored: it would reveal what arguments hold


def test_search_reads_the_set_in_bounded_pages(client, broker, manager):
    n = api.SCAN_COUNT * api.SCAN_CALLS * 2  # more than one page of scanning can cover
    retries_with(broker, n, error_class="E", error_message="needle")
    first = api.search(broker.keys.retry, api.Filters(error="needle"), limit=25)
    assert 25 <= len(first.entries) < n and first.cursor != 0
    response = client.get(BASE + "retries/", {"error": "needle"})
    assert response.context["search"]["next_url"] and 25 <= len(response.context["rows"]) < n


def test_all_matching_acts_on_every_match_and_nothing_else(client, broker, manager):
    retries_with(broker, 700, error_class="E", error_message="gateway slow")
    broker.redis.zadd(broker.keys.retry, {encode_payload({"jid": "keep", "job": IncrJob.job_name, "queue": "default",
                                                         "args": [], "error_message": "other"}): time.time()})
    response = client.post(BASE + "retries/?error=gateway", {"action": "delete", "all": "1"}, follow=True)
    assert "Deleted 700 jobs." in [str(m) for m in response.context["messages"]]
    assert ids(broker, broker.keys.retry) == ["keep"]
    for i in range(600):
        IncrJob.perform_later(f"k{i}")
    response = client.post(BASE + "queues/default/", {"action": "delete", "all": "1"}, follow=True)
    assert "Deleted 600 jobs." in [str(m) for m in response.context["messages"]] and broker.queue_size("default") == 0


def test_all_matching_needs_the_manage_permission(client, broker, viewer):
    retries_with(broker, 3)
    assert client.post(BASE + "retries/", {"action": "delete", "all": "1"}).status_code == 403
    assert broker.redis.zcard(broker.keys.retry) == 3


# -- admin pages ----------------------------------------------------------------------------------


def test_the_dead_list_writes_times_with_seconds(client, broker):
    admin_user = User.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(admin_user)
    DeadJob.objects.create(dead_id="d1", job_id="j1", died_at="2026-12-05T22:55:07Z", reason="killed")
    html = client.get(reverse("admin:django_async_jobs_deadjob_changelist")).content.decode()
    assert ">2026-12-05 22:55:07</time>" in html and "p.m." not in html


def test_progress_rows_have_a_name_and_short_error_details(client, broker):
    from django_async_jobs.models import JobProgress

    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    row = JobProgress.objects.create(job_id="p1", job_class="Import", status="processing",
                                     error_details=[{"row": i, "error": "bad"} for i in range(40)], error_count=40)
    listing = client.get(reverse("admin:django_async_jobs_jobprogress_changelist")).content.decode()
    assert "(the whole job)" in listing and "async_jobs/progress.js" in listing
    page = client.get(reverse("admin:django_async_jobs_jobprogress_change", args=[row.pk])).content.decode()
    assert "<details><summary>" in page and "… and 35 more" in page


def test_the_limits_page_shows_rate_limiters_in_use_and_paused_queues(client, broker, manager):
    from django_async_jobs.flow import RateLimit

    with RateLimit("window", "stripe", 10, 60).within_limit():
        pass
    with RateLimit("concurrent", "pdf", 2, 30).within_limit():
        held = client.get(BASE + "blocked/").content.decode()
    api.pause_queue("low")
    html = client.get(BASE + "blocked/").content.decode()
    assert 'data-limiter="window:stripe"' in html and "1 call in the current window" in html
    assert "1 lock held" in held.split('data-limiter="concurrent:pdf"')[1].split("</tr>")[0]
    assert ">low</a>" in html.split("Paused queues:")[1]
    # A concurrent limiter with no lock held has no key: it is not in use.
    assert [(u.kind, u.name) for u in api.rate_limiters()] == [("window", "stripe")]


def test_recurring_shows_a_tick_no_process_enqueued_as_missed(client, broker, manager, settings):
    from django_async_jobs import cron

    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "RECURRING": {
        "minutely": {"cron": "* * * * *", "class": IncrJob.job_name, "args": ["m"], "queue": "low"},
    }}
    [row] = cron.describe(broker=broker)
    assert row["missed"] is not None and time.time() - 180 < row["missed"].timestamp() <= time.time() - 60
    cell = client.get(BASE + "recurring/").content.decode().split('class="aj-last-run"')[1].split("</td>")[0]
    assert "missed" in cell and "no worker process ran the clock" in cell
    [entry] = cron.entries()
    cron.enqueue_tick(entry, entry.latest_until(time.time()), broker)  # a worker's clock did its job
    assert cron.describe(broker=broker)[0]["missed"] is None
    assert "missed" not in client.get(BASE + "recurring/").content.decode().split('class="aj-last-run"')[1].split("</td>")[0]


def test_cancel_from_a_job_page_comes_back_to_it_and_never_leaves_the_site(client, broker, manager):
    job = IncrJob.perform_later("run")
    broker.heartbeat("host-a:1:ab", {"host": "host-a", "pid": 1, "queues": "default", "concurrency": 1}, ttl=60)
    fetch(broker, "host-a:1:ab", ["default"], 1)
    page = f"{BASE}jobs/{job.job_id}/?where=running"
    assert client.post(BASE + "busy/", {"cancel": job.job_id, "next": page})["Location"] == page
    assert client.post(BASE + "busy/", {"cancel": job.job_id, "next": "https://evil.example/"})["Location"] == BASE + "busy/"
    assert client.post(BASE + "busy/", {"cancel": job.job_id, "next": "//evil.example/"})["Location"] == BASE + "busy/"


def test_dead_jobs_are_found_by_an_arguments_text(client, broker):
    client.force_login(User.objects.create_superuser("root", "root@example.com", "pw"))
    for i, email in enumerate(["ana@example.com", "bo@example.com"]):
        DeadJob.objects.create(dead_id=f"d{i}", job_id=f"j{i}", died_at="2026-12-05T22:55:07Z", reason="killed",
                               payload=encode_payload({"jid": f"j{i}", "job": "J", "queue": "q", "args": [email]}))
    response = client.get(reverse("admin:django_async_jobs_deadjob_changelist"), {"q": "ana@example"})
    assert [row.job_id for row in response.context["cl"].result_list] == ["j0"]


# -- batches ------------------------------------------------------------------------------------


def test_the_batches_page_shows_progress_callbacks_and_failures_and_cancels(client, broker, manager):
    from django_async_jobs.batches import Batch

    batch = Batch(description="Import #7")
    batch.on("complete", IncrJob, "report")
    with batch.jobs():
        first = IncrJob.perform_later("a")
        IncrJob.perform_later("b")
    html = client.get(BASE + "batches/").content.decode()
    row = html.split(f'data-batch="{batch.bid}"')[1].split("</tr>")[0]
    assert "Import #7" in row and "0/2" in row and "running" in row
    assert "complete: <span" in row and IncrJob.job_name in row and "not yet" in row
    # A member's page links its batch; the link shows that batch alone.
    job_html = job_page(client, first.job_id).content.decode()
    link = job_html.split('class="aj-batch-link"')[0].rsplit('href="', 1)[1].split('"')[0]
    assert link == f"{BASE}batches/?bid={batch.bid}" and "Import #7" in client.get(link).content.decode()
    assert client.get(BASE + "batches/?bid=nosuchbatch").status_code == 404
    response = client.post(BASE + "batches/", {"cancel": batch.bid}, follow=True)
    assert "Cancelled batch" in [str(m) for m in response.context["messages"]][0]
    assert api.batch(batch.bid)["cancelled"]
    assert "cancelled" in client.get(BASE + "batches/").content.decode().split(f'data-batch="{batch.bid}"')[1]


def test_batches_need_the_manage_permission_to_cancel(client, broker, viewer):
    from django_async_jobs.batches import Batch

    batch = Batch(description="x")
    with batch.jobs():
        IncrJob.perform_later("a")
    assert 'name="cancel"' not in client.get(BASE + "batches/").content.decode()
    assert client.post(BASE + "batches/", {"cancel": batch.bid}).status_code == 403
    assert not api.batch(batch.bid)["cancelled"]


# -- metrics ------------------------------------------------------------------------------------


def test_the_metrics_page_shows_percentiles_charts_and_deploy_marks_over_72_hours(client, broker, manager, prefix):
    from django_async_jobs import metrics as job_metrics
    from django_async_jobs.retries import SUCCEEDED

    buffer = job_metrics.Buffer()  # what the worker layer appends for three runs of 20 ms
    now = time.time()
    for _ in range(3):
        buffer.events.append((IncrJob.job_name, "default", SUCCEEDED, now - 0.02, now, now - 1))
    job_metrics.flush(broker, buffer)
    api.mark_deploy("v1.2")
    response = client.get(BASE + "metrics/", {"minutes": 4320})
    html = response.content.decode()
    assert response.context["minutes"] == 4320 and f'data-class="{IncrJob.job_name}"' in html and "v1.2" in html
    [row] = response.context["rows"]
    assert row["metrics"].total_runs == 3 and row["p50"].endswith("ms") and row["p99"].endswith("ms")
    one = client.get(BASE + "metrics/", {"class": IncrJob.job_name, "minutes": 4320})
    chart = one.context["chart"]
    assert len(chart["points"]) in (72, 73) and chart["minutes_a_point"] == 60  # a point an hour
    assert "(per hour)" in one.content.decode() and chart["points"][-1]["label"].endswith(":00")
    assert sum(p["processed"] for p in chart["points"]) == 3 and all("p99" in p for p in chart["points"])
    assert chart["histogram"] and [m["label"] for m in chart["marks"]] == ["v1.2"]
    assert chart["marks"][0]["index"] == len(chart["points"]) - 1  # now: the last point
    assert 'id="aj-metrics-times"' in one.content.decode() and 'id="aj-metrics-histogram"' in one.content.decode()
    hour = client.get(BASE + "metrics/", {"class": IncrJob.job_name, "minutes": 60})
    assert len(hour.context["chart"]["points"]) == 60 and "(per minute)" in hour.content.decode()
    assert sum(p["processed"] for p in hour.context["chart"]["points"]) == 3
    assert client.get(BASE + "metrics/", {"minutes": "7"}).context["minutes"] == 60  # only the offered windows
