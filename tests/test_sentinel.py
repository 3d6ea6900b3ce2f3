"""Redis Sentinel: ``redis+sentinel://`` URLs read and checked, and jobs through real failovers.

The servers are the test's own (``SentinelGroup``: a master, replicas and three sentinels on
free ports, with passwords), so killing a master never touches the shared Redis.
"""

import json
import re
import signal
import threading
from io import StringIO

import pytest
import redis
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import override_settings
from redis.connection import SSLConnection
from redis.sentinel import SentinelConnectionPool

from django_async_jobs.broker import sentinel
from django_async_jobs.broker.client import Broker, connect
from django_async_jobs.checks import check_settings
from django_async_jobs.conf import build
from django_async_jobs.worker.launcher import Worker
from tests.helpers import registered, wait_for
from tests.testapp.jobs import FileJob, IncrJob

DEFAULTS = {"socket_timeout": 30.0, "socket_connect_timeout": 5, "health_check_interval": 30}
SECRET = "S3cretPW"

# -- reading URLs ------------------------------------------------------------------------------


def test_a_url_gives_the_sentinels_the_service_the_database_and_both_passwords():
    url = f"redis+sentinel://:{SECRET}@h1:26379,h2:26380,[::1]/mymaster/2?sentinel_password=Other&socket_timeout=2"
    config = sentinel.parse(url, DEFAULTS)
    assert config.sentinels == [("h1", 26379), ("h2", 26380), ("::1", 26379)]
    assert (config.service, config.db, config.min_other_sentinels) == ("mymaster", 2, 0)
    # The URL's timeout wins over the library's; both reach the sentinels too.
    assert config.master == {
        "password": SECRET, "socket_timeout": 2.0, "socket_connect_timeout": 5, "health_check_interval": 30,
    }
    assert config.sentinel == {"password": "Other", "socket_timeout": 2.0, "socket_connect_timeout": 5}
    assert SECRET not in repr(config)


def test_user_names_escapes_and_the_default_database():
    config = sentinel.parse(
        "redis+sentinel://app:p%40ss%2Fw@h1/my%2Dmaster/?sentinel_username=watch&sentinel_password=x%26y"
        "&min_other_sentinels=1&socket_keepalive=yes"
    )
    assert (config.service, config.db, config.min_other_sentinels) == ("my-master", 0, 1)
    assert config.master == {"username": "app", "password": "p@ss/w", "socket_keepalive": True}
    assert config.sentinel == {"username": "watch", "password": "x&y", "socket_keepalive": True}


def test_tls_options_go_to_the_sides_that_use_tls():
    tls = "ssl_ca_certs=/ca.pem&ssl_cert_reqs=required&ssl_check_hostname=true"
    expected = {"ssl": True, "ssl_ca_certs": "/ca.pem", "ssl_cert_reqs": "required", "ssl_check_hostname": True}
    both = sentinel.parse(f"redis+sentinel://h1/m?ssl=true&{tls}")
    assert both.master == expected and both.sentinel == expected
    master_only = sentinel.parse(f"redis+sentinel://h1/m?ssl=true&sentinel_ssl=false&{tls}")
    assert master_only.master == expected and master_only.sentinel == {}
    sentinels_only = sentinel.parse(f"redis+sentinel://h1/m?sentinel_ssl=on&{tls}")
    assert sentinels_only.master == {} and sentinels_only.sentinel == expected


BAD_URLS = [
    (f"redis+sentinel://:{SECRET}@/mymaster", "it names no sentinel: use redis+sentinel://"),
    (f"redis+sentinel://:{SECRET}@h1:26379", "its path must be /service_name or /service_name/db"),
    ("redis+sentinel://h1/a/0/b", "its path must be /service_name or /service_name/db"),
    ("redis+sentinel://h1/mymaster/zero", "the database 'zero' after the service name is not a number"),
    ("redis+sentinel://h1:sixty/m", "the port of the sentinel 'h1:sixty' is not a number"),
    ("redis+sentinel://h1,,h2/m", "the sentinel address '' has no host"),
    (f"redis+sentinel://h1/m?password={SECRET}", "unknown option 'password'; the options are health_check_interval, "),
    (f"redis+sentinel://h1/m?sentinel_password={SECRET}&sentinel_password=x", "the option 'sentinel_password' is given twice"),
    ("redis+sentinel://h1/m?socket_timeout=0", "the option socket_timeout='0' must be a positive number of seconds"),
    ("redis+sentinel://h1/m?socket_connect_timeout=soon", "socket_connect_timeout='soon' must be a positive number"),
    ("redis+sentinel://h1/m?ssl=maybe", "the option ssl='maybe' must be true or false"),
    ("redis+sentinel://h1/m?min_other_sentinels=-1", "min_other_sentinels='-1' must be an integer of at least 0"),
    ("redis+sentinel://h1/m?ssl=1&ssl_cert_reqs=all", "ssl_cert_reqs='all' must be none, optional or required"),
    ("redis+sentinel://h1/m?ssl_ca_certs=/ca.pem", "ssl_ca_certs needs ssl=true (or sentinel_ssl=true)"),
]


@pytest.mark.parametrize("url, message", BAD_URLS)
def test_a_bad_url_is_refused_with_what_is_wrong(url, message):
    with pytest.raises(ValueError) as info:
        sentinel.parse(url)
    assert message in str(info.value)
    assert SECRET not in str(info.value)


def test_the_client_keeps_the_library_timeouts_and_the_direct_path_is_off():
    """Nothing connects yet: the client asks the sentinels on its first command."""
    url = "redis+sentinel://:pw@127.0.0.1:1,127.0.0.1:2/mymaster/3?sentinel_password=spw"
    client = connect(build({"REDIS_URL": url}))
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "mymaster"
    assert pool.connection_class is sentinel.MasterConnection
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"]) == (3, "pw")
    assert (kwargs["socket_connect_timeout"], kwargs["socket_timeout"], kwargs["health_check_interval"]) == (5, 30.0, 30)
    watchers = [w.connection_pool.connection_kwargs for w in pool.sentinel_manager.sentinels]
    assert [(w["port"], w["password"], w["socket_connect_timeout"]) for w in watchers] == [(1, "spw", 5), (2, "spw", 5)]
    # Per-thread direct connections would keep talking to whatever master they first met.
    assert Broker(build({"REDIS_URL": url})).own_connection() is None
    tls = connect(build({"REDIS_URL": url + "&ssl=true&ssl_cert_reqs=none"})).connection_pool
    assert tls.connection_class is sentinel.SSLMasterConnection
    assert tls.connection_kwargs["ssl_cert_reqs"] == "none"
    assert all(w.connection_pool.connection_class is SSLConnection for w in tls.sentinel_manager.sentinels)


# -- the system check --------------------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "redis+sentinel://h1:26379,h2:26379,h3:26379/mymaster/0",
    "redis+sentinel://:pw@h1/mymaster?sentinel_password=spw&ssl=true&ssl_ca_certs=/etc/ca.pem",
])
def test_the_check_accepts_sentinel_urls(url):
    with override_settings(ASYNC_JOBS={"REDIS_URL": url}):
        assert [e for e in check_settings() if e.id == "async_jobs.E003"] == []


@pytest.mark.parametrize("url, message", BAD_URLS)
def test_the_check_names_what_is_wrong_and_hides_the_passwords(url, message):
    with override_settings(ASYNC_JOBS={"REDIS_URL": url}):
        [error] = [e for e in check_settings() if e.id == "async_jobs.E003"]
    assert error.msg.startswith("ASYNC_JOBS['REDIS_URL'] = 'redis+sentinel://")
    assert "is not a Sentinel URL: " in error.msg and message in error.msg
    assert SECRET not in error.msg
    assert "redis+sentinel://[:password@]host:26379,host2:26379/service_name/0" in error.hint


# -- real servers ------------------------------------------------------------------------------


def test_jobs_round_trip_through_the_sentinels(sentinel_group, sentinel_broker, prefix):
    key = f"{prefix}:n"
    worker = Worker()
    worker.start()
    try:
        IncrJob.perform_later(key, 2)
        IncrJob.set(wait=0.2).perform_later(key, 3)  # through the poller
        master = sentinel_group.master().client(db=9)
        wait_for(lambda: master.get(key) == b"5", 30, "both jobs run on the group's master")
    finally:
        worker.stop(timeout=2)
    assert sentinel_broker.stat("processed") == 2


@pytest.mark.django_db
def test_the_dashboard_and_the_jobs_command_read_through_the_sentinels(sentinel_group, sentinel_broker, client):
    for i in range(3):
        IncrJob.set(queue="low").perform_later(f"k{i}")
    assert sentinel_group.master().client(db=9).zcard(sentinel_broker.keys.queue("low")) == 3
    out = StringIO()
    call_command("jobs", "queues", "--json", stdout=out, stderr=StringIO())
    assert {q["name"]: q["size"] for q in json.loads(out.getvalue())}["low"] == 3
    client.force_login(User.objects.create_user("viewer", is_staff=True))
    response = client.get("/admin/django_async_jobs/dashboard/queues/")
    assert {q.name: q.size for q, *_ in response.context["rows"]}["low"] == 3


def test_a_master_turned_replica_is_left_for_the_new_one(sentinel_group, sentinel_broker, prefix):
    """After a coordinated failover Sentinel turns the old master, still running, into a replica
    (REPLICAOF, done here at once rather than seconds later). A connection still open to it gets
    READONLY: it is dropped and the command sent again to the master the sentinels name now,
    where the scripts are not loaded yet. (redis-py 5.0 resends no pipeline, so the script goes
    first: the single enqueue, pipelined, then finds the connection on the new master.)"""
    key = f"{prefix}:n"
    IncrJob.perform_later(key, 1)  # pipelined
    IncrJob.perform_bulk([(key, 2), (key, 4)])  # the push script: loaded on A
    old = sentinel_group.failover()
    new = sentinel_group.wait_promoted(old)
    old.client().replicaof("127.0.0.1", new.port)
    wait_for(lambda: old.client().info("replication")["master_link_status"] == "up", 30, "A a replica of B")
    IncrJob.perform_bulk([(key, 8), (key, 16)])  # READONLY on A, then NOSCRIPT on B
    IncrJob.perform_later(key, 32)
    assert new.client(db=9).zcard(sentinel_broker.keys.queue("default")) == 6
    worker = Worker()
    worker.start()
    try:
        wait_for(lambda: new.client(db=9).get(key) == b"63", 30, "every job run on the new master")
    finally:
        worker.stop(timeout=2)


@pytest.mark.parametrize(
    "sentinel_group", [{"replicas": 2, "args": ["--min-replicas-to-write", "1"]}], indirect=True
)
def test_with_min_replicas_to_write_no_enqueue_is_lost_to_the_old_master(sentinel_group, sentinel_broker, prefix):
    """A coordinated failover leaves the old master running as master, without replicas, for
    the seconds until Sentinel turns it into a replica; a write it took then would be lost. With
    ``min-replicas-to-write 1`` it refuses them (NOREPLICAS), which sends the connection to the
    new master. redis-py 5.0 does not resend a pipeline (the single enqueue) after a connection
    error: there that enqueue fails once, the next one goes to the new master."""
    key = f"{prefix}:n"
    queue = sentinel_broker.keys.queue("default")
    IncrJob.perform_later(key, 1)
    old = sentinel_group.failover()
    new = sentinel_group.wait_promoted(old)
    errors = []
    for amount in (2, 4):
        try:
            IncrJob.perform_later(key, amount)
        except redis.ConnectionError as exc:
            errors.append(str(exc))
    IncrJob.perform_bulk([(key, 8), (key, 16)])  # the push script: resent on every redis-py
    if redis.VERSION >= (8,):
        assert errors == []
    else:  # redis-py 5.0, the oldest allowed
        assert len(errors) <= 1 and all("NOREPLICAS" in e for e in errors)
    jobs = new.client(db=9).zrange(queue, 0, -1)
    assert sum(json.loads(job)["args"][1] for job in jobs) == 31 - (2 if errors else 0)
    assert set(old.client(db=9).zrange(queue, 0, -1)) <= set(jobs)  # none on A alone


def test_killing_the_master_under_load(sentinel_group, sentinel_broker, spawn, prefix, tmp_path):
    """kill -9 of the master while an enqueuer pushes and a worker process runs jobs. Enqueues
    fail while no master is reachable, then go on; the worker finds the new master by itself
    (fetch, settle, heartbeat, poller, notify channel), with no restart.

    Replication is asynchronous, so the last writes before the kill may be lost: only the jobs
    acknowledged before a mark the replica is known to have reached, and those acknowledged
    after the failover, must run. A fetch or settlement cut by the kill may leave a job in the
    live worker's in-flight hash: it is handed back when the worker stops."""
    out = tmp_path / "ran.txt"
    out.touch()
    # Jobs must not be recovered from a live worker while the failover runs (about 3 s here).
    worker = spawn("-c", "4", redis_url=sentinel_group.url(), overrides={"HEARTBEAT_TIMEOUT": 30})
    wait_for(lambda: worker.pid in registered(sentinel_broker).values(), 30, "the worker registered")
    [process_id] = [p for p, pid in registered(sentinel_broker).items() if pid == worker.pid]
    events: list[tuple[str, str]] = []  # ("o", job name), ("e", error) and the mark, in order
    stop = threading.Event()

    def enqueue():
        number = 0
        while not stop.is_set():
            number += 1
            try:
                FileJob.perform_later(str(out), f"j{number}")
                events.append(("o", f"j{number}"))
            except redis.RedisError as exc:
                events.append(("e", repr(exc)))
            stop.wait(0.005)

    def ran() -> set[str]:
        return {line.split(":")[0] for line in out.read_text().split()}

    thread = threading.Thread(target=enqueue, daemon=True)
    thread.start()
    try:
        wait_for(lambda: len(ran()) >= 50, 30, "jobs running before the kill")
        old = sentinel_group.master()
        events.append(("K", ""))
        sentinel_group.wait_replicated()  # every job acknowledged before the mark
        old.stop()  # kill -9
        new = sentinel_group.wait_promoted(old)
        after = len(events)
        wait_for(lambda: sum(1 for kind, _ in events[after:] if kind == "o") >= 100, 30, "enqueues on the new master")
    finally:
        stop.set()
        thread.join(10)
    # Errors only once the master was gone, then none once enqueues went through again.
    codes = "".join(kind for kind, _ in events)
    assert re.fullmatch(r"o+Ko*e+o+", codes), re.sub(r"(.)\1+", r"\1...", codes)
    mark, last_error = codes.index("K"), codes.rindex("e")
    must_run = {name for kind, name in events[:mark] + events[last_error:] if kind == "o"}
    FileJob.set(wait=0.5).perform_later(str(out), "scheduled")  # the poller's turn
    must_run.add("scheduled")
    master = new.client(db=9)
    inflight = sentinel_broker.keys.inflight(process_id)

    def held() -> set[str]:
        return {json.loads(payload)["args"][1] for payload in master.hvals(inflight)}

    wait_for(lambda: must_run <= ran() | held() and not master.zcard(sentinel_broker.keys.queue("default")), 30, "jobs run")
    assert worker.alive()
    beat = master.zscore(sentinel_broker.keys.processes, process_id) or 0
    wait_for(lambda: (master.zscore(sentinel_broker.keys.processes, process_id) or 0) > beat, 30, "a heartbeat")
    channel = sentinel_broker.keys.notify
    wait_for(lambda: dict(master.pubsub_numsub(channel)).get(channel.encode()), 30, "the notify subscription")
    stranded = held() - ran()
    worker.send(signal.SIGTERM)
    assert worker.wait(15) == 0, worker.output()
    assert not master.exists(inflight)
    queued = {json.loads(payload)["args"][1] for payload in master.zrange(sentinel_broker.keys.queue("default"), 0, -1)}
    assert (must_run | stranded) - ran() <= queued  # handed back by the stop
