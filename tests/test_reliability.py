"""Real worker processes killed, stopped, quieted and cut off from Redis: no job is lost.

Every worker here is a ``runworker`` subprocess on the test's key prefix; jobs report through
Redis lists named by the test, so each side effect is counted exactly.
"""

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import redis

from django_async_jobs.conf import QueueSpec
from django_async_jobs.serialization import decode_payload
from django_async_jobs.worker.launcher import Worker
from tests.helpers import free_port, registered, wait_for
from tests.testapp.jobs import IncrJob, SlowOnceJob, SuicideJob, TraceJob

START_TIMEOUT = 20  # a cold Django start on a busy 2-core machine


def events(broker, key: str) -> list[str]:
    return [e.decode() for e in broker.redis.lrange(key, 0, -1)]


def count(broker, key: str, kind: str) -> Counter:
    """How many times each job name reached ``kind`` ("start" or "done")."""
    return Counter(e.split(":")[1] for e in events(broker, key) if e.startswith(kind + ":"))


def where(broker, key: str, kind: str, name: str) -> list[int]:
    return [int(e.split(":")[2]) for e in events(broker, key) if e.startswith(f"{kind}:{name}:")]


def wait_registered(broker, *procs, timeout: float = START_TIMEOUT) -> dict[int, str]:
    """Wait until every given worker has beaten once; returns pid -> process id."""
    pids = {p.pid for p in procs}
    found = wait_for(
        lambda: pids <= set(registered(broker).values()) and registered(broker),
        timeout, f"workers {sorted(pids)} registered",
    )
    return {pid: process_id for process_id, pid in found.items()}


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def queued_ids(broker, queue: str = "default") -> list[str]:
    return [decode_payload(raw)["jid"] for raw in broker.redis.zrange(broker.keys.queue(queue), 0, -1)]


def test_kill_9_mid_job_is_recovered_by_another_worker(spawn, broker, prefix):
    key = f"{prefix}:trace"
    a = spawn("-c", "2")
    b = spawn("-c", "2")
    process_ids = wait_registered(broker, a, b)
    names = [f"j{i}" for i in range(6)]
    gate = f"{key}:gate"
    for name in names:
        TraceJob.perform_later(key, name, gate=gate)  # none ends before A is killed
    wait_for(lambda: where_any(broker, key, "start", a.pid), START_TIMEOUT, "worker A started a job")
    a.send(signal.SIGKILL)
    killed_at = time.monotonic()
    assert a.wait(30) == -signal.SIGKILL
    broker.redis.rpush(gate, *[1] * 2 * len(names))  # enough for every run (a token A took is lost)
    killed = {e.split(":")[1] for e in events(broker, key) if e.startswith("start:") and e.endswith(f":{a.pid}")}
    assert killed
    # Not before the heartbeat timeout (3s, less the beats A may have been late with).
    wait_for(lambda: all(count(broker, key, "start")[n] == 2 for n in killed), 30, "the killed jobs rerun")
    assert time.monotonic() - killed_at >= 2.0
    # B recovers A's jobs after the heartbeat timeout and runs them: every job done exactly once.
    wait_for(lambda: count(broker, key, "done") == Counter(names), 30, "every job done")
    time.sleep(0.3)
    assert count(broker, key, "done") == Counter(names)
    starts = count(broker, key, "start")
    for name in names:
        assert starts[name] == (2 if name in killed else 1), (name, events(broker, key))
        assert where(broker, key, "done", name) == [b.pid]
    assert broker.queue_size("default") == 0
    wait_for(lambda: not broker.redis.exists(broker.keys.inflight(process_ids[b.pid])), 30, "B settled")
    assert not broker.redis.exists(broker.keys.inflight(process_ids[a.pid]))
    assert process_ids[a.pid] not in registered(broker)
    assert broker.redis.hlen(broker.keys.recoveries) == 0  # counts go once the job is done
    b.send(signal.SIGTERM)
    assert b.wait(10) == 0


def where_any(broker, key: str, kind: str, pid: int) -> bool:
    return any(e.startswith(kind + ":") and e.endswith(f":{pid}") for e in events(broker, key))


def test_sigterm_hands_a_long_job_back_to_the_head_of_its_queue(spawn, broker, prefix):
    key = f"{prefix}:trace"
    a = spawn("-c", "1", overrides={"SHUTDOWN_TIMEOUT": 1})
    process_id = wait_registered(broker, a)[a.pid]
    long = SlowOnceJob.perform_later(key, "long", 60)  # far longer than the stop may take
    behind = [TraceJob.perform_later(key, f"after{i}") for i in range(2)]
    wait_for(lambda: where(broker, key, "start", "long") == [a.pid], START_TIMEOUT, "the long job started")
    # One job behind it may wait in A's prefetch buffer (PREFETCH defaults to CONCURRENCY);
    # wherever they are, neither has started.
    held = {decode_payload(raw)["jid"] for raw in broker.inflight(process_id).values()}
    assert held | set(queued_ids(broker)) == {long.job_id} | {j.job_id for j in behind}
    assert count(broker, key, "start") == {"long": 1}
    stopped_at = time.monotonic()
    a.send(signal.SIGTERM)
    assert a.wait(30) == 0, a.output()
    assert time.monotonic() - stopped_at < 30, "waited for the job instead of SHUTDOWN_TIMEOUT"
    assert where(broker, key, "done", "long") == []
    assert queued_ids(broker) == [long.job_id] + [j.job_id for j in behind]
    assert not registered(broker)
    b = spawn("-c", "1")
    wait_for(lambda: len(count(broker, key, "done")) == 3, START_TIMEOUT, "all three jobs done on B")
    assert where(broker, key, "start", "long") == [a.pid, b.pid]
    assert where(broker, key, "done", "long") == [b.pid]
    starts_on_b = [e.split(":")[1] for e in events(broker, key) if e.startswith("start:") and e.endswith(f":{b.pid}")]
    assert starts_on_b == ["long", "after0", "after1"]  # it kept its turn
    b.send(signal.SIGTERM)
    assert b.wait(10) == 0


def test_sigterm_lets_a_short_job_finish(spawn, broker, prefix):
    key = f"{prefix}:trace"
    a = spawn("-c", "1")
    process_id = wait_registered(broker, a)[a.pid]
    TraceJob.perform_later(key, "short", 1.0)
    wait_for(lambda: where(broker, key, "start", "short"), START_TIMEOUT, "the job started")
    a.send(signal.SIGTERM)
    assert a.wait(30) == 0, a.output()
    assert where(broker, key, "done", "short") == [a.pid]
    assert broker.queue_size("default") == 0
    assert not broker.redis.exists(broker.keys.inflight(process_id))
    assert broker.stat("processed") == 1
    assert not registered(broker)


def test_sigtstp_quiets_the_worker(spawn, broker, prefix):
    key = f"{prefix}:trace"
    a = spawn("-c", "1")
    process_id = wait_registered(broker, a)[a.pid]
    gate = f"{key}:gate"
    TraceJob.perform_later(key, "first", gate=gate)  # runs until the worker is quiet
    second = TraceJob.perform_later(key, "second")
    wait_for(lambda: where(broker, key, "start", "first"), START_TIMEOUT, "the first job started")
    a.send(signal.SIGTSTP)
    wait_for(
        lambda: broker.redis.hget(broker.keys.process(process_id), "quiet") == b"1", 10, "quiet in the heartbeat"
    )
    broker.redis.rpush(gate, 1)
    wait_for(lambda: where(broker, key, "done", "first"), 10, "the running job finished")
    time.sleep(0.5)  # several fetch and poll beats, in which the second must not start
    assert where(broker, key, "start", "second") == []
    assert queued_ids(broker) == [second.job_id]
    assert a.alive()
    a.send(signal.SIGTERM)
    assert a.wait(30) == 0
    assert queued_ids(broker) == [second.job_id]


def test_second_sigint_exits_at_once_and_the_job_stays_recoverable(spawn, broker, prefix, settings):
    key = f"{prefix}:trace"
    # A long stop timeout and a longer job: the first INT surely still waits at the second.
    a = spawn("-c", "1", overrides={"SHUTDOWN_TIMEOUT": 30})
    process_id = wait_registered(broker, a)[a.pid]
    job = SlowOnceJob.perform_later(key, "long", 60)
    wait_for(lambda: where(broker, key, "start", "long"), START_TIMEOUT, "the job started")
    a.send(signal.SIGINT)
    time.sleep(0.3)
    assert a.alive()  # the first INT waits for the job
    second = time.monotonic()
    a.send(signal.SIGINT)
    assert a.wait(10) == 1
    assert time.monotonic() - second < 10  # at once: not after the job or SHUTDOWN_TIMEOUT
    held = broker.inflight(process_id)
    assert [decode_payload(p)["jid"] for p in held.values()] == [job.job_id]
    assert process_id in registered(broker)  # left for recovery, not released
    # Another worker recovers it once the heartbeat is stale (a shorter timeout for this one).
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "HEARTBEAT_TIMEOUT": 2}
    rescuer = Worker()
    rescuer.start()
    try:
        wait_for(lambda: where(broker, key, "done", "long"), 30, "the recovered job done")
    finally:
        rescuer.stop(timeout=2)
    assert where(broker, key, "done", "long") == [os.getpid()]
    assert not broker.redis.exists(broker.keys.inflight(process_id))


def test_poison_pill_is_staged_dead_after_max_recoveries(spawn, broker, prefix, settings):
    key = f"{prefix}:trace"
    victims = [spawn("-c", "1", overrides={"HEARTBEAT_TIMEOUT": 1.5, "MAX_RECOVERIES": 1}) for _ in range(2)]
    wait_registered(broker, *victims)
    # The rescuer only recovers: it works a queue nobody uses, so it never takes the pill itself.
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "HEARTBEAT_TIMEOUT": 1.5, "MAX_RECOVERIES": 1}
    rescuer = Worker(queues=QueueSpec(("idle",), (1,), True))
    rescuer.start()
    try:
        job = SuicideJob.perform_later(key)
        wait_for(lambda: broker.redis.hlen(broker.keys.dead) == 1, 30, "the pill staged dead")
    finally:
        rescuer.stop(timeout=2)
    for victim in victims:
        assert victim.wait(30) == -signal.SIGKILL
    assert sorted(int(e.split(":")[1]) for e in events(broker, key)) == sorted(v.pid for v in victims)
    [record] = [json.loads(r) for r in broker.redis.hvals(broker.keys.dead)]
    assert record["reason"] == "poison_pill"
    assert json.loads(record["payload"])["jid"] == job.job_id
    assert record["job_id"] == job.job_id
    assert broker.queue_size("default") == 0
    assert broker.redis.hlen(broker.keys.recoveries) == 0


def test_worker_survives_a_redis_restart(redis_server, spawn, broker, prefix, settings):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "REDIS_URL": redis_server.url}
    from django_async_jobs.broker.client import get_broker

    private = get_broker()
    assert private.redis.connection_pool.connection_kwargs["port"] == redis_server.port
    key = f"{prefix}:n"
    a = spawn("-c", "2", redis_url=redis_server.url)
    wait_registered(private, a)
    IncrJob.perform_later(key)
    wait_for(lambda: private.redis.get(key) == b"1", 30, "a job before the restart")
    redis_server.stop()
    time.sleep(0.5)
    redis_server.start()  # same port, empty: nothing persisted

    def enqueue() -> bool:
        try:
            IncrJob.perform_later(key, 5)
            return True
        except redis.ConnectionError:
            return False

    wait_for(enqueue, 20, "enqueue after the restart")
    wait_for(lambda: private.redis.get(key) == b"5", 30, "a job after the restart")
    assert a.alive()
    wait_registered(private, a)  # the heartbeat is back too
    a.send(signal.SIGTERM)
    assert a.wait(10) == 0, a.output()


def test_supervisor_runs_restarts_and_stops_its_children(spawn, broker, prefix):
    key = f"{prefix}:trace"
    sup = spawn("--processes", "2", "-c", "1")
    found = wait_for(lambda: len(registered(broker)) == 2 and registered(broker), START_TIMEOUT, "two children")
    children = set(found.values())
    assert sup.pid not in children
    assert all(parent_of(pid) == sup.pid for pid in children)
    names = [f"j{i}" for i in range(6)]
    gate = f"{key}:gate"
    for name in names:
        TraceJob.perform_later(key, name, gate=gate)
    # A child holds two jobs at most (one running, one prefetched), and none ends before the
    # gate opens: so both children start one, whichever fetches first.
    wait_for(lambda: {int(e.split(":")[2]) for e in events(broker, key)} == children, START_TIMEOUT, "both working")
    broker.redis.rpush(gate, *[1] * len(names))
    wait_for(lambda: count(broker, key, "done") == Counter(names), 30, "jobs done")
    victim = min(children)
    os.kill(victim, signal.SIGKILL)
    replacement = wait_for(
        lambda: {pid for pid in registered(broker).values() if pid not in children},
        START_TIMEOUT, "a replacement child",
    )
    [new_pid] = replacement
    assert parent_of(new_pid) == sup.pid
    assert parent_of(victim) is None  # reaped
    survivors = (children - {victim}) | {new_pid}
    more = [f"k{i}" for i in range(4)]
    for name in more:
        TraceJob.perform_later(key, name, 0.3)
    wait_for(lambda: all(count(broker, key, "done")[n] == 1 for n in more), 30, "jobs after the restart")
    sup.send(signal.SIGTERM)
    assert sup.wait(10) == 0, sup.output()
    for pid in survivors:
        assert parent_of(pid) is None, f"child {pid} outlived the supervisor"


def test_sigterm_stops_a_worker_that_never_reached_redis(spawn, broker):
    """A worker started while Redis is away waits for it, but a TERM must still stop it."""
    a = spawn("-c", "1", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    wait_for(lambda: "cannot reach Redis" in a.output(), START_TIMEOUT, "the worker waiting for Redis")
    sent = time.monotonic()
    a.send(signal.SIGTERM)
    assert a.wait(5) == 0, a.output()
    assert time.monotonic() - sent < 2
    assert "stopped before it could reach Redis" in a.output()


def test_jobs_finishing_while_redis_is_down_are_settled_once_it_is_back(tmp_path, spawn, prefix, settings):
    """The acker keeps a finished job's settlement until Redis returns: with Redis's data kept
    (append-only file), nothing is lost and nothing runs twice."""
    from django_async_jobs.broker.client import get_broker
    from tests.helpers import RedisServer
    from tests.testapp.jobs import FileJob

    server = RedisServer(tmp_path, persist=True)
    server.start()
    shared = settings.ASYNC_JOBS
    try:
        settings.ASYNC_JOBS = {**shared, "REDIS_URL": server.url}
        private = get_broker()
        out = tmp_path / "done.txt"
        a = spawn("-c", "2", redis_url=server.url)
        process_id = wait_registered(private, a)[a.pid]
        gates = {name: tmp_path / f"gate-{name}" for name in ("x", "y")}
        for name, gate in gates.items():
            FileJob.perform_later(str(out), name, str(gate))  # neither ends while Redis is up
        # Both running, not only fetched: Redis goes away in the middle of both jobs.
        wait_for(lambda: all(Path(f"{gate}.started").exists() for gate in gates.values()), 30, "both jobs running")
        assert len(private.inflight(process_id)) == 2
        server.stop()  # kill -9, mid-job
        for gate in gates.values():
            gate.touch()
        wait_for(lambda: out.exists() and len(out.read_text().split()) == 2, 30, "both jobs done, Redis down")
        wait_for(lambda: "failed, retrying" in a.output(), 30, "the acker meeting the outage")
        server.start()
        wait_for(lambda: private.stat("processed") == 2, 30, "the settlements after the restart")
        assert private.inflight(process_id) == {}
        assert private.queue_size("default") == 0
        time.sleep(0.5)
        assert sorted(line.split(":")[0] for line in out.read_text().split()) == ["x", "y"]  # once each
        assert a.alive()
        a.send(signal.SIGTERM)
        assert a.wait(10) == 0, a.output()
    finally:
        settings.ASYNC_JOBS = shared  # the prefix fixture cleans up where the other tests live
        server.stop()


def test_a_paused_worker_cannot_settle_a_job_recovered_from_it(spawn, broker, prefix, settings):
    """SIGSTOP makes a live worker look dead; its job is recovered and fails on the rescuer.
    When the paused worker resumes and its copy fails too, that second failure must neither add
    a second retry nor count in the stats: a settlement applies only while the job is still in
    the worker's hands."""
    from tests.testapp.jobs import SlowFailJob

    key = f"{prefix}:trace"
    a = spawn("-c", "1")
    wait_registered(broker, a)
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "HEARTBEAT_TIMEOUT": 1.5}
    gate = f"{key}:gate"
    SlowFailJob.perform_later(key, gate)  # every copy fails once the gate is set
    wait_for(lambda: broker.redis.llen(key) == 1, START_TIMEOUT, "the job started on A")
    a.send(signal.SIGSTOP)
    try:
        rescuer = Worker(concurrency=1)
        rescuer.start()
        try:
            wait_for(lambda: broker.redis.llen(key) == 2, 30, "the rescuer's copy started")
            broker.redis.set(gate, 1)  # A is paused: only the rescuer's copy can fail now
            wait_for(lambda: broker.redis.zcard(broker.keys.retry) == 1, 30, "the rescuer's retry")
        finally:
            rescuer.stop(timeout=2)
    finally:
        a.send(signal.SIGCONT)
    assert [e.decode() for e in broker.redis.lrange(key, 0, -1)] == [f"start:{a.pid}", f"start:{os.getpid()}"]
    # A graceful stop lets A's copy finish (and fail) and settles it before A exits.
    a.send(signal.SIGTERM)
    assert a.wait(10) == 0, a.output()
    assert broker.redis.zcard(broker.keys.retry) == 1
    assert broker.redis.hlen(broker.keys.dead) == 0
    assert broker.stat("failed") == 1  # the failure that no longer applied is not counted
    assert broker.stat("processed") == 1


def test_connecting_to_redis_gives_up_after_a_bounded_time():
    """A host that drops packets must not hold a worker (and its stop) for the kernel's minutes;
    a timeout in the URL still wins."""
    from django_async_jobs.broker.client import connect
    from django_async_jobs.conf import build

    default = connect(build({"REDIS_URL": "redis://127.0.0.1:6379/9"}))
    assert default.connection_pool.connection_kwargs["socket_connect_timeout"] == 5
    tuned = connect(build({"REDIS_URL": "redis://127.0.0.1:6379/9?socket_connect_timeout=0.5"}))
    assert tuned.connection_pool.connection_kwargs["socket_connect_timeout"] == 0.5
