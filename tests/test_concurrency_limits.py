"""Concurrency limits (Solid Queue's ``limits_concurrency``): at most ``to`` jobs with one key run
at once across processes; a job over the limit is blocked (or discarded) and released when a
place frees, in the settle step that ends the job holding it; places of dead processes free."""

import json
import signal
import time

import pytest
from django.contrib.auth.models import Permission, User

from django_async_jobs import ApplicationJob, api, flow, limit_concurrency
from django_async_jobs.worker import processor
from tests.helpers import fetch, registered, wait_for
from tests.testapp.flow_jobs import (
    AccountJob,
    DiscardingAccountJob,
    ExpiringAccountJob,
    GatedAccountJob,
    WholeClassLimitJob,
)

BASE = "/admin/django_async_jobs/dashboard/"


@pytest.fixture
def key(prefix):
    return f"{prefix}:out"


def texts(broker, name):
    return [v.decode() for v in broker.redis.lrange(name, 0, -1)]


def limit_of(job):
    return job.payload["cc"]["id"]


# -- the payload ---------------------------------------------------------------------------------


def test_the_enqueue_stamps_the_limit(broker, key):
    job = GatedAccountJob.perform_later("acct-1", key)
    [member] = broker.redis.zrange(broker.keys.queue("default"), 0, -1)
    cc = json.loads(member)["cc"]
    assert cc["id"].startswith(GatedAccountJob.job_name + ":") and len(cc["id"].rpartition(":")[2]) == 40
    assert (cc["h"], cc["b"]) == (broker.keys.concurrency(cc["id"]), broker.keys.concurrency_blocked(cc["id"]))
    assert (cc["to"], cc["ttl"]) == (1, 60_000)
    assert limit_of(GatedAccountJob.perform_later("acct-1", key)) == limit_of(job)
    assert limit_of(GatedAccountJob.perform_later("acct-2", key)) != limit_of(job)
    assert limit_of(WholeClassLimitJob.perform_later("a")) == limit_of(WholeClassLimitJob.perform_later("b"))


def test_a_key_that_is_not_json_fails_the_enqueue(broker):
    class ObjectKeyJob(ApplicationJob):
        limits_concurrency = limit_concurrency(key=lambda job: object())

        def perform(self):
            ...

    with pytest.raises(TypeError, match="key\\(job\\) must return a JSON-like value"):
        ObjectKeyJob.perform_later()
    assert broker.queue_size("default") == 0


@pytest.mark.parametrize("options, error", [
    ({"to": 0}, "to="), ({"to": True}, "to="), ({"key": "account"}, "key="),
    ({"duration": 0.5}, "duration="), ({"duration": "5m"}, "duration"), ({"on_conflict": "log"}, "on_conflict="),
])
def test_bad_limits_are_refused_naming_the_argument(options, error):
    with pytest.raises((TypeError, ValueError), match=error):
        limit_concurrency(**options)


def test_a_class_whose_limit_is_not_a_limit_is_refused():
    from django.core.exceptions import ImproperlyConfigured

    with pytest.raises(ImproperlyConfigured, match="limit_concurrency"):
        type("NotALimitJob", (ApplicationJob,), {"limits_concurrency": 2, "perform": lambda self: None,
                                                  "__module__": __name__})


# -- the steps, one by one -----------------------------------------------------------------------


def in_flight(broker, process_id, job):
    """The job fetched by ``process_id`` (registered) as a worker would: its in-flight field."""
    [(field, raw)] = fetch(broker, process_id, [job.queue_name], 1)
    return field.decode(), raw


def acquire(broker, job, field, process_id="p1"):
    cc = job.payload["cc"]
    return broker.concurrency_acquire(cc["id"], field, job.job_id, process_id, cc["to"], cc["ttl"])


def test_places_are_taken_up_to_the_limit_and_the_settle_step_frees_them(broker, key):
    jobs = [AccountJob.perform_later("a", key) for _ in range(3)]
    fields = [in_flight(broker, "p1", job)[0] for job in jobs]
    holders = broker.keys.concurrency(limit_of(jobs[0]))
    assert [acquire(broker, j, f) for j, f in zip(jobs, fields, strict=True)] == [True, True, False]
    assert sorted(k.decode() for k in broker.redis.hkeys(holders)) == sorted(fields[:2])
    # The third is blocked; the first finishes: its place goes to the third, kept for it.
    limit = (holders, broker.keys.concurrency_blocked(limit_of(jobs[0])))
    broker.settle("p1", [("block", fields[2], "", "", 0)], limit)
    assert broker.redis.zcard(limit[1]) == 1 and broker.queue_size("default") == 0
    assert broker.redis.zscore(broker.keys.blocked, limit_of(jobs[0])) is not None
    broker.settle("p1", [("ack", fields[0], "", "", 0)], limit)
    assert broker.redis.zcard(limit[1]) == 0 and broker.queue_size("default") == 1
    assert broker.redis.zscore(broker.keys.blocked, limit_of(jobs[0])) is None
    assert sorted(k.decode() for k in broker.redis.hkeys(holders)) == sorted([fields[1], f"@{jobs[2].job_id}"])
    # A new job finds the limit full (one running, one place kept); the kept one takes its place.
    newcomer = AccountJob.perform_later("a", key)
    late_field = in_flight(broker, "p1", jobs[2])[0]
    assert not acquire(broker, newcomer, "other:1")
    assert acquire(broker, jobs[2], late_field)
    assert broker.stat("processed") == 1  # the ack; a block is not processed


def test_a_job_put_back_by_a_rate_limit_frees_its_place(broker, key):
    jobs = [AccountJob.perform_later("a", key) for _ in range(2)]
    fields = [in_flight(broker, "p1", job)[0] for job in jobs]
    assert all(acquire(broker, j, f) for j, f in zip(jobs, fields, strict=True))
    holders = broker.keys.concurrency(limit_of(jobs[0]))
    later = json.dumps({**jobs[0].payload, "jid": jobs[0].job_id, "job": AccountJob.job_name, "queue": "default",
                        "args": ["a", key]})
    broker.settle("p1", [("reschedule", fields[0], time.time() + 60, later, 0)],
                  (holders, broker.keys.concurrency_blocked(limit_of(jobs[0]))))
    assert broker.redis.hkeys(holders) == [fields[1].encode()]
    assert broker.redis.zcard(broker.keys.schedule) == 1


@pytest.mark.parametrize("cc", [
    "x", {"id": 1, "to": 1, "ttl": 60_000}, {"id": "a:b", "to": "2", "ttl": 60_000},
    {"id": "a:b", "to": 1, "ttl": 60_000, "h": "QUEUE", "b": "QUEUE"},  # keys that are not the limit's
])
def test_a_payload_whose_limit_is_not_ours_runs_unlimited_and_touches_no_other_key(broker, key, worker, cc):
    if isinstance(cc, dict) and cc.get("h") == "QUEUE":
        cc = {**cc, "h": broker.keys.queue("unread"), "b": broker.keys.queue("unread")}
    broker.redis.zadd(broker.keys.queue("unread"), {"keep me": 1})
    payload = {"jid": "crafted01", "job": GatedAccountJob.job_name, "queue": "default", "args": ["a", key], "cc": cc}
    broker.push([json.dumps(payload)])
    wait_for(lambda: texts(broker, f"{key}:end") == ["crafted01"], 30, "the job to run")
    wait_for(lambda: broker.inflight(worker.process_id) == {}, 10, "settled")
    assert broker.redis.zrange(broker.keys.queue("unread"), 0, -1) == [b"keep me"]
    assert broker.stat("processed") == 1


def test_a_block_with_a_place_free_meanwhile_goes_back_to_its_queue(broker, key):
    job = AccountJob.perform_later("a", key)
    field, _ = in_flight(broker, "p1", job)
    limit = (broker.keys.concurrency(limit_of(job)), broker.keys.concurrency_blocked(limit_of(job)))
    broker.settle("p1", [("block", field, "", "", 0)], limit)  # the limit emptied after its try
    assert broker.redis.zcard(limit[1]) == 0 and broker.queue_size("default") == 1
    assert broker.redis.hkeys(limit[0]) == [f"@{job.job_id}".encode()]


def test_a_place_counts_while_its_process_is_registered_and_its_duration_lasts(broker, key):
    jobs = [AccountJob.perform_later("a", key) for _ in range(3)]
    broker.heartbeat("live", {}, ttl=60)
    assert acquire(broker, jobs[0], "f0:1", process_id="live")
    assert acquire(broker, jobs[1], "f1:1", process_id="gone")  # a process not (or no longer) registered
    assert acquire(broker, jobs[2], "f2:1", process_id="live")  # the place of "gone" did not count
    holders = broker.keys.concurrency(limit_of(jobs[0]))
    assert sorted(broker.redis.hkeys(holders)) == [b"f0:1", b"f2:1"]
    broker.redis.hset(holders, "f0:1", f"{int(time.time() * 1000) - 1} live")  # its duration is up
    assert acquire(broker, AccountJob.perform_later("a", key), "f3:1", process_id="live")
    assert broker.redis.pttl(holders) > 50_000  # the hash lives as long as its longest place


def test_only_a_job_that_took_a_place_hands_keys_to_the_settle_step():
    from tests.testapp.jobs import IncrJob

    job = IncrJob("k")
    job.fetched_as, job.outcome = "f:1", processor.retries.SUCCEEDED
    assert processor.settle(job, b"").keys == ()
    job.outcome = processor.retries.Outcome("ok", keys=("h", "b"))
    assert processor.settle(job, b"") == processor.Settlement("ack", "f:1", keys=("h", "b"))


# -- in a worker ---------------------------------------------------------------------------------


def test_a_job_over_the_limit_waits_blocked_and_runs_when_a_place_frees(broker, key, worker):
    gate = f"{key}:gate"
    first = GatedAccountJob.perform_later("a", key, gate)
    wait_for(lambda: texts(broker, f"{key}:start") == [first.job_id], 30, "the first job to start")
    second = GatedAccountJob.perform_later("a", key, gate)
    other = GatedAccountJob.perform_later("b", key)  # another key: not held back
    blocked = broker.keys.concurrency_blocked(limit_of(second))
    wait_for(lambda: broker.redis.zcard(blocked) == 1, 30, "the second job to be blocked")
    wait_for(lambda: other.job_id in texts(broker, f"{key}:end"), 30, "the other account's job")
    assert second.job_id not in texts(broker, f"{key}:start")
    broker.redis.rpush(gate, "go", "go")
    wait_for(lambda: texts(broker, f"{key}:end")[-1:] == [second.job_id], 30, "the second job, after the first")
    starts, ends = texts(broker, f"{key}:start"), texts(broker, f"{key}:end")
    assert starts.index(second.job_id) > starts.index(first.job_id) and ends.index(first.job_id) < ends.index(second.job_id)
    assert broker.redis.zcard(blocked) == 0
    wait_for(lambda: broker.inflight(worker.process_id) == {}, 10, "settled")
    assert broker.stat("processed") == 3 and broker.stat("failed") == 0
    assert not broker.redis.exists(broker.keys.concurrency(limit_of(second)))  # every place freed


def test_discard_drops_a_job_over_the_limit_with_a_log_line(broker, key, worker, caplog):
    gate = f"{key}:gate"
    first = DiscardingAccountJob.perform_later("a", key, gate)
    wait_for(lambda: texts(broker, f"{key}:start") == [first.job_id], 30, "the first job to start")
    with caplog.at_level("INFO", logger="django_async_jobs.job"):
        dropped = DiscardingAccountJob.perform_later("a", key, gate)
        wait_for(lambda: broker.stat("processed") == 1, 30, "the second job to be dropped")
    broker.redis.rpush(gate, "go")
    wait_for(lambda: texts(broker, f"{key}:end") == [first.job_id], 30, "the first job to end")
    assert texts(broker, f"{key}:start") == [first.job_id]
    assert any(r.getMessage().startswith(f"discarded {DiscardingAccountJob.job_name} {dropped.job_id} queue=default: 1 already running")
               for r in caplog.records)
    assert broker.redis.zcard(broker.keys.concurrency_blocked(limit_of(dropped))) == 0


def test_places_of_a_dead_process_free_and_the_sweep_moves_blocked_jobs(broker, key, worker):
    """A place held by a process that is gone, with a job blocked behind it and no job left to
    finish: the heartbeat's sweep moves the blocked job once the place no longer counts."""
    job = GatedAccountJob.set(wait=3600).perform_later("a", key)  # in the schedule: out of the worker's reach
    member = broker.redis.zpopmin(broker.keys.schedule)[0][0]
    ident = limit_of(job)
    broker.redis.hset(broker.keys.concurrency(ident), "lost:1", f"{int(time.time() * 1000) + 60_000} gone-process")
    broker.redis.zadd(broker.keys.concurrency_blocked(ident), {member: 1})
    broker.redis.zadd(broker.keys.blocked, {ident: 0})
    wait_for(lambda: texts(broker, f"{key}:end") == [job.job_id], 30, "the blocked job to run")
    assert broker.redis.zscore(broker.keys.blocked, ident) is None


def test_a_job_that_expires_frees_the_place_kept_for_it(broker, key, worker):
    job = ExpiringAccountJob("a", key)
    holders = broker.keys.concurrency(flow.limit_id(job, ExpiringAccountJob.limits_concurrency))
    broker.redis.hset(holders, f"@{job.job_id}", f"{int(time.time() * 1000) + 60_000} -")
    job.enqueue(wait_until=time.time() - 120)  # past its deadline
    wait_for(lambda: broker.stat("expired") == 1, 30, "the job to expire")
    assert not broker.redis.hexists(holders, f"@{job.job_id}")


def test_an_async_limited_job_runs_on_a_thread():
    class AsyncLimitedJob(ApplicationJob):
        limits_concurrency = limit_concurrency(to=3)

        async def perform(self):
            ...

    assert processor.worker_chain(AsyncLimitedJob).arun is None


def test_kill_9_frees_the_place_once_the_heartbeat_expires(broker, key, spawn):
    """Worker A runs the job that holds the account's one place, another waits blocked; A is
    killed with -9. B takes A for dead after its heartbeat timeout: the place frees, and the
    first job (it was cut) and the blocked one both run, one at a time. Which goes first is a
    race the limit does not decide: the recovery hands the first back to its queue while the
    blocked list's watcher may already have kept the free place for the second."""
    overrides = {"HEARTBEAT_TIMEOUT": 2, "CONCURRENCY": 2}
    gate = f"{key}:gate"
    a = spawn("-c", "2", overrides=overrides)
    first = GatedAccountJob.perform_later("a", key, gate)
    wait_for(lambda: texts(broker, f"{key}:start") == [first.job_id], 60, "the first job to start on A")
    second = GatedAccountJob.perform_later("a", key)
    blocked = broker.keys.concurrency_blocked(limit_of(second))
    wait_for(lambda: broker.redis.zcard(blocked) == 1, 60, "the second job to be blocked")
    holders = broker.keys.concurrency(limit_of(first))
    assert broker.redis.hlen(holders) == 1
    a.send(signal.SIGKILL)
    a.wait(30)
    broker.redis.rpush(gate, "go")  # the first job's second run goes through
    b = spawn("-c", "2", overrides=overrides)
    wait_for(lambda: sorted(texts(broker, f"{key}:end")) == sorted([first.job_id, second.job_id]), 60,
             "the first job again and the blocked one")
    log = texts(broker, f"{key}:log")
    assert log[0] == f"start {first.job_id}"  # the run A was killed in: no end
    runs = log[1:]
    assert sorted(runs) == sorted(f"{e} {j}" for e in ("start", "end") for j in (first.job_id, second.job_id))
    assert [entry.split()[0] for entry in runs] == ["start", "end", "start", "end"], runs  # never both at once
    assert runs[0].split()[1] == runs[1].split()[1], runs
    wait_for(lambda: not broker.redis.exists(holders) and broker.redis.zcard(blocked) == 0, 30, "every place freed")
    assert list(registered(broker).values()) == [b.pid]


# -- the dashboard -------------------------------------------------------------------------------


@pytest.fixture
def viewer(client, db):
    user = User.objects.create_user("viewer", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_deadjob"))
    client.force_login(user)
    return user


def test_blocked_jobs_are_visible_in_the_dashboard(client, broker, key, viewer):
    job = GatedAccountJob.perform_later("acct-7", key)
    member = broker.redis.zpopmin(broker.keys.queue("default"))[0][0]
    ident = limit_of(job)
    broker.redis.zadd(broker.keys.concurrency_blocked(ident), {member: time.time() * 1000})
    broker.redis.zadd(broker.keys.blocked, {ident: 0})
    broker.redis.hset(broker.keys.concurrency(ident), "f:1", f"{int(time.time() * 1000) + 60_000} p")
    [limit] = api.blocked_limits()
    assert (limit.limit_id, limit.job_class, limit.blocked, limit.holding) == (ident, GatedAccountJob.job_name, 1, 1)
    listing = client.get(BASE + "blocked/")
    assert listing.status_code == 200 and GatedAccountJob.job_name.encode() in listing.content
    page = client.get(BASE + f"blocked/{ident}/")
    assert page.status_code == 200 and job.job_id.encode() in page.content and b"acct-7" in page.content
    assert client.get(BASE + "blocked/nope:123/").status_code == 404


def test_blocked_pages_need_staff(client, broker):
    assert client.get(BASE + "blocked/").status_code == 302
