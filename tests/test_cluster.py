"""Redis Cluster: ``redis+cluster://`` URLs read and checked, keys tagged into one slot, and the
library's work (workers, the poller, retries, dead jobs, unique jobs, batches, recovery, the
outbox relay, the dashboard) on a real 3-master cluster of the session's own (``ClusterGroup``).
"""

import json
import signal
import threading
import time
from io import StringIO

import pytest
import redis
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import transaction
from django.test import override_settings
from redis.cluster import RedisCluster
from redis.crc import key_slot

from django_async_jobs import Batch, api
from django_async_jobs.broker import cluster
from django_async_jobs.broker.client import Broker, Partitioned, connect, get_broker, open_broker
from django_async_jobs.broker.keys import Keys
from django_async_jobs.checks import check_settings
from django_async_jobs.conf import QueueSpec, build, redact_url
from django_async_jobs.models import DeadJob, OutboxJob
from django_async_jobs.serialization import decode_payload
from django_async_jobs.worker import dead_writer
from django_async_jobs.worker.fetcher import Fetcher, QueueOrder
from django_async_jobs.worker.launcher import Worker
from tests.helpers import ClusterGroup, registered, wait_for
from tests.testapp.batch_jobs import CallbackRecordJob, MemberJob
from tests.testapp.jobs import IncrJob, TraceJob
from tests.testapp.retry_jobs import FailingJob, NoRetryJob
from tests.testapp.unique_jobs import UntilExecutedJob

DEFAULTS = {"socket_timeout": 30.0, "socket_connect_timeout": 5, "health_check_interval": 30}
SECRET = "S3cretPW"
START_TIMEOUT = 20  # a cold Django start on a busy 2-core machine

# -- reading URLs ------------------------------------------------------------------------------


def test_a_url_gives_the_nodes_the_credentials_and_the_options():
    config = cluster.parse(f"redis+cluster://app:{SECRET}@h1:7000,h2:7001,[::1]/?socket_timeout=2", DEFAULTS)
    assert config.nodes == [("h1", 7000), ("h2", 7001), ("::1", 6379)]
    # The URL's timeout wins over the library's.
    assert config.options == {
        "username": "app", "password": SECRET, "socket_timeout": 2.0, "socket_connect_timeout": 5,
        "health_check_interval": 30,
    }
    assert SECRET not in repr(config)
    assert cluster.parse("redis+cluster://h1:7000").nodes == [("h1", 7000)]  # no path at all
    tls = cluster.parse("redis+cluster://h1/?ssl=true&ssl_ca_certs=/ca.pem&ssl_cert_reqs=required").options
    assert tls == {"ssl": True, "ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": "required"}


BAD_URLS = [
    (f"redis+cluster://:{SECRET}@/", "it names no node: use redis+cluster://"),
    ("redis+cluster://h1:7000/3", "a cluster has no databases: its path must be / or nothing"),
    ("redis+cluster://h1:seven/", "the port of the node 'h1:seven' is not a number"),
    ("redis+cluster://h1,,h2/", "the node address '' has no host"),
    (f"redis+cluster://h1/?password={SECRET}", "unknown option 'password'; the options are health_check_interval, "),
    ("redis+cluster://h1/?socket_timeout=0", "the option socket_timeout='0' must be a positive number of seconds"),
    ("redis+cluster://h1/?ssl=maybe", "the option ssl='maybe' must be true or false"),
    ("redis+cluster://h1/?ssl_ca_certs=/ca.pem", "ssl_ca_certs needs ssl=true"),
]


@pytest.mark.parametrize("url, message", BAD_URLS)
def test_a_bad_url_is_refused_with_what_is_wrong(url, message):
    with pytest.raises(ValueError) as info:
        cluster.parse(url)
    assert message in str(info.value)
    assert SECRET not in str(info.value)


@pytest.mark.parametrize("url", ["redis+cluster://h1:7000,h2:7001,h3:7002/", f"redis+cluster://:{SECRET}@h1/?ssl=1"])
def test_the_check_accepts_cluster_urls(url):
    with override_settings(ASYNC_JOBS={"REDIS_URL": url}):
        assert [e for e in check_settings() if e.id == "async_jobs.E003"] == []


@pytest.mark.parametrize("url, message", BAD_URLS)
def test_the_check_names_what_is_wrong_and_hides_the_password(url, message):
    with override_settings(ASYNC_JOBS={"REDIS_URL": url}):
        [error] = [e for e in check_settings() if e.id == "async_jobs.E003"]
    assert error.msg.startswith("ASYNC_JOBS['REDIS_URL'] = 'redis+cluster://")
    assert "is not a Redis Cluster URL: " in error.msg and message in error.msg
    assert SECRET not in error.msg
    assert cluster.FORM in error.hint


def test_a_printed_url_hides_the_password():
    assert redact_url(f"redis+cluster://app:{SECRET}@h1:7000,h2:7001/") == "redis+cluster://app:***@h1:7000,h2:7001/"


def test_an_unreachable_cluster_is_a_connection_error():
    with pytest.raises(redis.ConnectionError):
        connect(build({"REDIS_URL": "redis+cluster://127.0.0.1:1/?socket_connect_timeout=0.5"}))


# -- keys --------------------------------------------------------------------------------------


def test_a_single_redis_keeps_its_keys_and_a_cluster_tags_every_key():
    plain, tagged = Keys("app"), Keys.cluster("app")
    assert (plain.queue("default"), plain.stat("processed", "2026-01-01")) == ("app:queue:default", "app:stat:processed:2026-01-01")
    assert (tagged.queue("default"), tagged.inflight("h:1:x")) == ("{app}:queue:default", "{app}:inflight:h:1:x")
    built = [
        tagged.queue("q"), tagged.queues, tagged.seq, tagged.dead, tagged.schedule, tagged.retry, tagged.processes,
        tagged.process("p"), tagged.inflight("p"), tagged.fetched("p"), tagged.recoveries, tagged.stat("failed"),
        tagged.lock("J", "d"), tagged.run_lock("J", "d"), tagged.cron("c"), tagged.concurrency("J:d"),
        tagged.concurrency_blocked("J:d"), tagged.blocked, tagged.limiter("window", "api"), tagged.cancel("j"),
        tagged.batch("b"), tagged.batches, tagged.metrics(1), tagged.metrics_hour(1), tagged.metrics_marks, tagged.result("r"),
        tagged.outbox_lease("default"), tagged.outbox_relayed, tagged.notify,
        tagged.queue_base + "x", tagged.inflight_base + "p", tagged.process_base + "p", tagged.fetched_base + "p",
        tagged.lock_base + "x", tagged.batch_base + "x",
    ]
    assert {key_slot(key.encode()) for key in built} == {key_slot(b"app")}


# -- a real cluster ----------------------------------------------------------------------------


@pytest.fixture
def on_the_cluster(redis_cluster, settings, prefix):
    """The broker on the cluster, with the test's prefix."""
    original = settings.ASYNC_JOBS
    settings.ASYNC_JOBS = {**original, "REDIS_URL": redis_cluster.url()}
    yield get_broker()
    settings.ASYNC_JOBS = original


@pytest.fixture
def start(spawn, redis_cluster):
    """``runworker`` subprocesses on the cluster."""
    return lambda *args: spawn(*args, redis_url=redis_cluster.url())


@pytest.fixture
def worker(on_the_cluster):
    w = Worker()
    w.start()
    yield w
    w.stop(timeout=2)


def slots(broker):
    """The slots of every key of the test's prefix, on whichever master holds them."""
    return {key_slot(key) for key in broker.redis.scan_iter(match=broker.keys.pattern)}


def test_the_hot_path_goes_straight_to_the_master_of_the_keys_slot(on_the_cluster, redis_cluster):
    assert isinstance(on_the_cluster.redis, RedisCluster) and on_the_cluster.cluster
    assert {node.port for node in on_the_cluster.redis.get_primaries()} == {s.port for s in redis_cluster.servers}
    assert on_the_cluster.keys.prefix.startswith("{")
    home = redis_cluster.serving(on_the_cluster.keys.queues)
    assert on_the_cluster.own_connection().port == home.port
    IncrJob.perform_later("k")
    assert on_the_cluster._connection().port == home.port  # the push went that way


def test_a_connection_to_a_master_that_no_longer_serves_the_slot_is_pointed_to_the_one_that_does(
    on_the_cluster, redis_cluster
):
    home = redis_cluster.serving(on_the_cluster.keys.queues)
    other = next(s for s in redis_cluster.servers if s is not home)
    stray = on_the_cluster._connection()
    stray.disconnect()
    stray.port = other.port  # as after a failover or a resharding: MOVED from there
    job = IncrJob.perform_later("k")
    assert [decode_payload(p)["jid"] for p in on_the_cluster.redis.zrange(on_the_cluster.keys.queue("default"), 0, -1)] == [job.job_id]
    assert stray.port == home.port  # the next command goes straight to the right master


def test_runworker_drains_jobs_of_every_queue_and_each_step_stays_in_one_slot(on_the_cluster, start, prefix):
    key = f"{prefix}:n"
    a, b = start("-c", "3"), start("-c", "3")
    wait_for(lambda: len(registered(on_the_cluster)) == 2, START_TIMEOUT, "both workers registered")
    for queue in ("critical", "default", "low"):
        IncrJob.perform_bulk([(key,)] * 30, queue=queue)
    for _ in range(10):
        IncrJob.perform_later(key)  # the single push
    wait_for(lambda: on_the_cluster.stat("processed") == 100, 60, "100 jobs run")
    assert int(on_the_cluster.redis.get(key)) == 100
    assert sum(on_the_cluster.queue_size(q) for q in ("critical", "default", "low")) == 0
    assert slots(on_the_cluster) == {key_slot(on_the_cluster.keys.prefix.encode())}
    for proc in (a, b):
        proc.send(signal.SIGTERM)
        assert proc.wait(15) == 0
    assert registered(on_the_cluster) == {}


def test_scheduled_jobs_and_retries_come_due(on_the_cluster, worker, prefix):
    IncrJob.set(wait=0.3).perform_later(f"{prefix}:later")
    FailingJob.perform_later(f"{prefix}:failing", "connection", stop_after=3)  # two retries at once
    wait_for(lambda: on_the_cluster.redis.get(f"{prefix}:later") == b"1", 20, "the delayed job ran")
    wait_for(lambda: on_the_cluster.redis.get(f"{prefix}:failing") == b"3", 20, "retried twice, then done")
    wait_for(lambda: on_the_cluster.stat("processed") == 4 and on_the_cluster.stat("failed") == 2, 10, "counted")


@pytest.mark.django_db(transaction=True)
def test_a_dead_job_reaches_the_database(on_the_cluster, monkeypatch, prefix):
    monkeypatch.setattr(dead_writer, "INTERVAL", 0.1)
    w = Worker()
    w.start()
    try:
        job = NoRetryJob.perform_later(f"{prefix}:effects")
        row = wait_for(lambda: DeadJob.objects.filter(job_id=job.job_id).first(), 20, "the dead job's row")
    finally:
        w.stop(timeout=2)
    assert row.reason == "retries_exhausted"
    assert on_the_cluster.redis.hlen(on_the_cluster.keys.dead) == 0


def test_a_unique_job_is_enqueued_once_until_it_ran(on_the_cluster, prefix):
    key = f"{prefix}:effects"
    first = UntilExecutedJob.perform_later(key, "a")
    assert first and not UntilExecutedJob.perform_later(key, "b")
    assert on_the_cluster.queue_size("default") == 1
    w = Worker()
    w.start()
    try:
        wait_for(lambda: on_the_cluster.redis.lindex(key, -1) == b"done:a", 20, "the job ran")
        wait_for(lambda: UntilExecutedJob.perform_later(key, "c"), 20, "its lock released")
    finally:
        w.stop(timeout=2)


@pytest.mark.django_db(transaction=True)
def test_a_batch_fires_its_callbacks(on_the_cluster, worker, prefix):
    key = f"{prefix}:runs"
    batch = Batch(description="on a cluster")
    for event in ("complete", "success", "death"):
        batch.on(event, CallbackRecordJob, key, event)
    with batch.jobs():
        MemberJob.perform_bulk([(key, f"j{i}") for i in range(5)])
        MemberJob.perform_later(key, "flaky", fail=1)
    wait_for(lambda: on_the_cluster.redis.llen(f"{key}:callbacks") == 2, 20, "complete and success")
    assert Batch.status(batch.bid)["pending"] == 0


def test_a_killed_workers_jobs_are_recovered(on_the_cluster, start, prefix):
    key = f"{prefix}:trace"
    gate = f"{key}:gate"
    a = start("-c", "2")
    wait_for(lambda: registered(on_the_cluster), START_TIMEOUT, "worker A registered")
    for name in ("x", "y"):
        TraceJob.perform_later(key, name, gate=gate)
    wait_for(lambda: on_the_cluster.redis.llen(key) == 2, START_TIMEOUT, "A started both jobs")
    a.send(signal.SIGKILL)
    a.wait(30)
    on_the_cluster.redis.rpush(gate, *[1] * 4)
    b = start("-c", "2")
    wait_for(
        lambda: sorted(e for e in on_the_cluster.redis.lrange(key, 0, -1) if e.startswith(b"done:")) == [
            f"done:x:{b.pid}".encode(), f"done:y:{b.pid}".encode(),
        ],
        START_TIMEOUT + 10, "B recovered and ran both",
    )
    assert on_the_cluster.queue_size("default") == 0
    b.send(signal.SIGTERM)
    assert b.wait(15) == 0


@pytest.mark.django_db(transaction=True)
def test_the_outbox_relay_pushes_a_transactions_jobs(on_the_cluster, settings, prefix):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "OUTBOX": True}
    with transaction.atomic():
        IncrJob.perform_later(f"{prefix}:relayed")
        IncrJob.set(wait=0.2).perform_later(f"{prefix}:relayed")
    assert OutboxJob.objects.count() == 2
    w = Worker()  # with the outbox in use: it relays
    w.start()
    try:
        wait_for(lambda: on_the_cluster.redis.get(f"{prefix}:relayed") == b"2", 30, "both relayed and run")
        wait_for(lambda: not OutboxJob.objects.exists(), 10, "the rows deleted")
    finally:
        w.stop(timeout=2)


def test_a_script_the_cluster_forgot_is_loaded_again(on_the_cluster, prefix):
    IncrJob.perform_bulk([(f"{prefix}:n",)] * 3)  # loads the push script
    on_the_cluster.redis.script_flush()  # every master's, as after failovers
    IncrJob.perform_bulk([(f"{prefix}:n",)] * 3)
    IncrJob.set(wait=60).perform_later(f"{prefix}:n")
    later = IncrJob(f"{prefix}:n")
    later.scheduled_at = time.time() + 60
    IncrJob.perform_all_later([IncrJob(f"{prefix}:n"), later])  # pushed and scheduled together
    assert on_the_cluster.queue_size("default") == 7 and on_the_cluster.redis.zcard(on_the_cluster.keys.schedule) == 2


@pytest.mark.django_db
def test_the_dashboard_and_the_jobs_command_read_the_cluster(on_the_cluster, client, redis_cluster, prefix):
    for i in range(3):
        IncrJob.set(queue="low").perform_later(f"{prefix}:k{i}")
    IncrJob.set(wait=60).perform_later(f"{prefix}:later")
    client.force_login(User.objects.create_superuser("admin"))
    base = "/admin/django_async_jobs/dashboard/"
    for page in ("", "stats.json", "queues/", "queues/low/", "busy/", "scheduled/", "retries/", "recurring/",
                 "blocked/", "batches/", "metrics/", "metrics/?minutes=4320"):
        assert client.get(base + page).status_code == 200, page
    stats = client.get(base + "stats.json").json()
    assert stats["redis"]["servers"] == len(redis_cluster.servers) and stats["redis"]["keys"] >= 2
    out = StringIO()
    call_command("jobs", "queues", "--json", stdout=out, stderr=StringIO())
    assert {q["name"]: q["size"] for q in json.loads(out.getvalue())}["low"] == 3
    assert on_the_cluster.clear_queue("low") == 3
    assert not on_the_cluster.redis.sismember(on_the_cluster.keys.queues, "low")


def test_flush_finds_the_keys_on_whichever_master_holds_them(on_the_cluster, prefix):
    IncrJob.perform_bulk([(f"{prefix}:n",)] * 3)
    on_the_cluster.pause_queue("low")
    assert on_the_cluster.flush() >= 3
    assert slots(on_the_cluster) == set()


def test_a_broker_built_on_a_plain_client_keeps_the_plain_keys():
    """The tag comes with the cluster client only: a single Redis keeps today's keys."""
    broker = Broker(build({"REDIS_URL": "redis://127.0.0.1:1/0", "KEY_PREFIX": "app"}))
    assert not broker.cluster and broker.keys == Keys("app")


def test_a_master_that_dies_is_replaced_and_the_work_goes_on(tmp_path, settings, prefix):
    """kill -9 of the master holding the deployment's slot, with a worker running: its replica
    takes over (cluster-node-timeout 1 s); an enqueue meanwhile waits in RedisCluster's retries
    or raises a redis.RedisError, and the worker goes on on the new master by itself."""
    group = ClusterGroup(tmp_path / "failover", masters=3, replicas=1, node_timeout_ms=1000)
    group.start()
    errors: list[Exception] = []

    def enqueued() -> bool:
        try:
            return bool(IncrJob.perform_later(key))
        except Exception as exc:
            errors.append(exc)
            time.sleep(0.05)
            return False

    original = settings.ASYNC_JOBS
    try:
        settings.ASYNC_JOBS = {**original, "REDIS_URL": group.url()}
        broker = get_broker()
        key = f"{broker.keys.prefix}:n"  # on the same master as the jobs
        w = Worker()
        w.start()
        try:
            IncrJob.perform_bulk([(key,)] * 20)
            wait_for(lambda: broker.redis.get(key) == b"20", 30, "20 jobs run")
            old = group.serving(broker.keys.queues)
            assert old.client().execute_command("WAIT", 1, 5000) == 1  # the replica has it all
            old.stop()
            wait_for(enqueued, 60, "an enqueue after the failover")
            assert group.serving(broker.keys.queues) is not old
            IncrJob.perform_bulk([(key,)] * 9)
            # Seconds when the machine is idle; once over a minute with the machine loaded (load
            # average 5 on 2 cores), so the bound is wide: what is tested is that it goes on at all.
            wait_for(lambda: broker.redis.get(key) == b"30", 180, "the jobs enqueued after the failover run")
        finally:
            w.stop(timeout=5)
    finally:
        settings.ASYNC_JOBS = original  # the prefix's clean-up: on the usual Redis, not this cluster
        group.stop()
    assert all(isinstance(exc, redis.RedisError) for exc in errors), errors


def test_with_the_jobs_master_gone_for_good_an_enqueue_raises_a_redis_error(tmp_path, settings, prefix):
    """No replica to take over: the slot stays uncovered. Whatever RedisCluster meets (a
    refused connection, CLUSTERDOWN, a slot it knows no master for), the caller gets a
    redis.RedisError, which code written for a single Redis catches."""
    group = ClusterGroup(tmp_path / "lost", masters=3, node_timeout_ms=1000)
    group.start()
    original = settings.ASYNC_JOBS
    raised: list[Exception] = []
    try:
        settings.ASYNC_JOBS = {**original, "REDIS_URL": group.url("socket_connect_timeout=0.5")}
        broker = get_broker()
        IncrJob.perform_later("k")
        group.serving(broker.keys.queues).stop()
        deadline = time.monotonic() + 6  # past the node timeout: the cluster marks the slot down
        while time.monotonic() < deadline:
            try:
                IncrJob.perform_later("k")
            except Exception as exc:
                raised.append(exc)
    finally:
        settings.ASYNC_JOBS = original
        group.stop()
    assert raised and all(isinstance(exc, redis.RedisError) for exc in raised), {type(e) for e in raised}


# -- partitions --------------------------------------------------------------------------------


def test_partition_zero_keeps_the_tag_and_each_other_partition_has_a_slot_of_its_own():
    assert Keys.cluster("app", 0) == Keys.cluster("app")
    tags = [Keys.cluster("app", p) for p in range(3)]
    assert [k.queue("q") for k in tags] == ["{app}:queue:q", "{app:1}:queue:q", "{app:2}:queue:q"]
    assert len({key_slot(k.queues.encode()) for k in tags}) == 3
    assert {key_slot(k.inflight("p").encode()) for k in tags} == {key_slot(k.queues.encode()) for k in tags}


@pytest.mark.parametrize("url, partitions, refused", [
    ("redis+cluster://h:7000/", 3, False),
    ("redis+cluster://h:7000/", 1, False),
    ("redis://h:6379/0", 1, False),
    ("redis://h:6379/0", 2, True),  # one server: partitions would only cost round trips
    ("redis+sentinel://h:26379/m/0", 2, True),
    ("redis+cluster://h:7000/", 0, True),
    ("redis+cluster://h:7000/", "2", True),
    ("redis+cluster://h:7000/", cluster.MAX_PARTITIONS + 1, True),
])
def test_the_check_takes_partitions_only_on_a_cluster(url, partitions, refused):
    with override_settings(ASYNC_JOBS={"REDIS_URL": url, "CLUSTER_PARTITIONS": partitions}):
        found = [e for e in check_settings() if e.id == "async_jobs.E017"]
    assert bool(found) == refused


def test_a_single_redis_gets_one_broker_whatever_the_setting():
    broker = open_broker(build({"REDIS_URL": "redis://127.0.0.1:1/0", "CLUSTER_PARTITIONS": 3}))
    assert type(broker) is Broker and broker.partitions == [broker]


@pytest.fixture
def partitioned(on_the_cluster, settings):
    """The broker over three partitions of the test's prefix; all their keys go after."""
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "CLUSTER_PARTITIONS": 3}
    broker = get_broker()
    yield broker
    broker.flush()


def partition_slots(broker):
    return {key_slot(part.keys.queues.encode()) for part in broker.partitions}


def where(broker, queue):
    """The partitions whose queue ``queue`` holds jobs."""
    return [i for i, part in enumerate(broker.partitions) if broker.redis.zcard(part.keys.queue(queue))]


@pytest.mark.django_db(transaction=True)
def test_queues_spread_over_partitions_and_a_worker_drains_them_all(partitioned, monkeypatch, prefix):
    assert isinstance(partitioned, Partitioned) and len(partitioned.partitions) == 3
    key = f"{prefix}:n"
    for queue in ("critical", "default", "low"):
        IncrJob.perform_bulk([(key,)] * 20, queue=queue)
    for _ in range(10):
        IncrJob.perform_later(key)  # the single push
    IncrJob.set(wait=0.3).perform_later(key)
    assert (where(partitioned, "default"), where(partitioned, "critical"), where(partitioned, "low")) == ([1], [2], [2])
    assert partitioned.queue_size("default") == 30 and partitioned.redis.zcard(partitioned.partitions[1].keys.schedule) == 1
    assert {q.name: q.size for q in api.queues(partitioned)}["default"] == 30
    assert api.stats(partitioned).enqueued == 70 and api.stats(partitioned).scheduled == 1
    monkeypatch.setattr(dead_writer, "INTERVAL", 0.1)
    w = Worker()
    w.start()
    try:
        FailingJob.perform_later(f"{prefix}:failing", "connection", stop_after=3)  # two retries
        dead = NoRetryJob.perform_later(f"{prefix}:effects")
        wait_for(lambda: partitioned.redis.get(key) == b"71", 30, "every job of every partition ran")
        wait_for(lambda: partitioned.redis.get(f"{prefix}:failing") == b"3", 20, "retried twice, then done")
        row = wait_for(lambda: DeadJob.objects.filter(job_id=dead.job_id).first(), 20, "the dead job's row")
        assert row.reason == "retries_exhausted"
        wait_for(lambda: partitioned.stat("processed") == 75, 10, "counted over the partitions")
        assert partitioned.stat("failed") == 3 and api.stats(partitioned).processed == 75
        assert sum(day["processed"] for day in api.history(2, partitioned)) == 75
        assert [p.process_id for p in api.processes(broker=partitioned)] == [w.process_id]
        assert all(partitioned.redis.zscore(part.keys.processes, w.process_id) for part in partitioned.partitions)
    finally:
        w.stop(timeout=2)
    used = {key_slot(name) for name in _keys_of(partitioned)}
    assert used <= partition_slots(partitioned) and len(used) > 1  # each step in one partition's slot
    assert all(partitioned.redis.hlen(part.keys.inflight(w.process_id)) == 0 for part in partitioned.partitions)
    assert not partitioned.staged_dead()


def _keys_of(broker):
    return [key for part in broker.partitions for key in broker.redis.scan_iter(match=part.keys.pattern)]


def test_jobs_that_name_shared_keys_stay_in_partition_zero(partitioned, prefix):
    """A unique job's lock, a batch's keys are partition 0's: their settle step must reach them."""
    assert UntilExecutedJob.perform_later(f"{prefix}:u", "a")
    batch = Batch(description="partitioned")
    with batch.jobs():
        MemberJob.perform_later(f"{prefix}:runs", "j0")
    IncrJob.perform_later(f"{prefix}:n")
    assert where(partitioned, "default") == [0, 1]
    assert partitioned.redis.zcard(partitioned.keys.queue("default")) == 2


def test_a_killed_workers_jobs_in_another_partition_are_recovered(partitioned, spawn, redis_cluster, prefix):
    key = f"{prefix}:trace"
    gate = f"{key}:gate"
    start = lambda: spawn("-c", "2", redis_url=redis_cluster.url(), overrides={"CLUSTER_PARTITIONS": 3})  # noqa: E731
    a = start()
    wait_for(lambda: registered(partitioned), START_TIMEOUT, "worker A registered")
    for name in ("x", "y"):
        TraceJob.perform_later(key, name, gate=gate)  # "default": partition 1
    wait_for(lambda: partitioned.redis.llen(key) == 2, START_TIMEOUT, "A started both jobs")
    assert partitioned.redis.hlen(partitioned.partitions[1].keys.inflight(next(iter(registered(partitioned))))) == 2
    a.send(signal.SIGKILL)
    a.wait(30)
    partitioned.redis.rpush(gate, *[1] * 4)
    b = start()
    wait_for(
        lambda: sorted(e for e in partitioned.redis.lrange(key, 0, -1) if e.startswith(b"done:")) == [
            f"done:x:{b.pid}".encode(), f"done:y:{b.pid}".encode(),
        ],
        START_TIMEOUT + 10, "B recovered and ran both",
    )
    b.send(signal.SIGTERM)
    assert b.wait(15) == 0
    assert registered(partitioned) == {} and partitioned.queue_size("default") == 0


@pytest.mark.django_db
def test_the_lists_and_their_actions_cover_every_partition(partitioned, client, prefix):
    """The dashboard's and the api's job lists merge each partition's set in score order."""
    jobs = [  # partitions 1, 2, 1, 2
        IncrJob.set(queue=queue, wait=60 + i).perform_later(f"{prefix}:k{i}")
        for i, queue in enumerate(("default", "critical", "default", "critical"))
    ]
    key = api.set_key("scheduled", partitioned)
    assert [partitioned.redis.zcard(each) for each in partitioned.twins(key)] == [0, 2, 2]
    page = api.page_of(key, 1, 3, partitioned)
    assert page.total == 4 and [e.job_id for e in page.entries] == [j.job_id for j in jobs[:3]]
    assert [e.job_id for e in api.page_of(key, 2, 3, partitioned).entries] == [jobs[3].job_id]
    found, cursor, calls = [], 0, 0
    while True:  # a page a call, the cursor walking the partitions
        result = api.search(key, api.Filters(text="k"), cursor, 1, partitioned)
        found += [e.job_id for e in result.entries]
        cursor, calls = result.cursor, calls + 1
        if not cursor:
            break
    assert sorted(found) == sorted(j.job_id for j in jobs) and calls >= 2
    assert api.find_ref(key, page.entries[1].ref, partitioned).job_id == jobs[1].job_id
    assert [p.kind for p in api.locate(jobs[2].job_id, broker=partitioned)] == ["scheduled"]
    assert api.cancel(jobs[2].job_id, partitioned).removed == ["scheduled"]
    assert api.act(key, "enqueue", [page.entries[0].ref, page.entries[1].ref], partitioned) == 2
    assert (where(partitioned, "default"), where(partitioned, "critical")) == ([1], [2])
    assert api.act_matching(key, "delete", api.Filters(), partitioned) == 1
    client.force_login(User.objects.create_superuser("admin"))
    base = "/admin/django_async_jobs/dashboard/"
    for page_name in ("", "stats.json", "queues/", "queues/default/", "queues/critical/", "busy/", "scheduled/", "retries/"):
        assert client.get(base + page_name).status_code == 200, page_name
    assert jobs[1].job_id in client.get(base + "queues/critical/").content.decode()
    assert client.get(base + "stats.json").json()["stats"]["enqueued"] == 2


def test_the_fetch_takes_the_partitions_in_turn_and_each_keeps_its_own_attempts(partitioned, prefix):
    """Each partition has its own fetch record: an attempt of partition 2 whose reply was lost is
    owed there, and a stopping process takes those jobs back from there alone."""
    partitioned.heartbeat("w", {}, ttl=60)
    IncrJob.set(queue="default").perform_later(f"{prefix}:a")  # partition 1
    IncrJob.set(queue="critical").perform_later(f"{prefix}:b")  # partition 2
    stopping = threading.Event()
    fetcher = Fetcher(partitioned, "w", QueueOrder(QueueSpec(("critical", "default"), (1, 1), strict=True)), 1, stopping, prefetch=0)
    lanes = fetcher._lanes
    assert [lane.broker for lane in lanes] == partitioned.partitions
    assert [lane.connection.port for lane in lanes] == [partitioned.redis.get_node_from_key(p.keys.queues).port for p in partitioned.partitions]
    field, raw = fetcher.take()  # partition 0 is empty: the turn goes on to partition 1
    assert decode_payload(raw)["queue"] == "default" and lanes[0].dry and not lanes[1].dry
    assert partitioned.redis.hexists(partitioned.partitions[1].keys.inflight("w"), field)
    partitioned.settle("w", [("ack", field, "", "", 0)])
    assert partitioned.redis.hlen(partitioned.partitions[1].keys.inflight("w")) == 0
    lost = partitioned.partitions[2].fetch("w", ["critical"], 1, attempt=1, received=0)  # its reply never came
    lanes[2].attempt = 1
    stopping.set()
    assert fetcher.owed and [lane.owed for lane in lanes] == [False, False, True]
    assert fetcher.take() == (lost[0][0].decode(), lost[0][1])  # the owed attempt, from partition 2
    assert not fetcher.owed
    assert partitioned.release("w", 3, fetcher.unstarted() + [lost[0][0].decode()]) == (1, 0)
    assert partitioned.queue_size("critical") == 1
