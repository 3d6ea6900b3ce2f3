"""The six scenarios. Each takes the run's size (``Size``) and returns its ``Outcome``."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import redis

from chaos.harness import Database, Outcome, World
from chaos.jobs import ChaosJob, DoomedJob
from tests.helpers import registered, wait_for


@dataclass(frozen=True)
class Size:
    name: str
    kill_jobs: int  # jobs of the kill -9 scenario
    kill_workers: int
    min_kills: int
    restart_seconds: float  # how long the producer runs through the Redis restarts
    restarts: int
    freeze_jobs: int  # jobs enqueued before each freeze
    freezes: tuple[str, ...]
    doomed: int  # jobs that die while the database is away
    db_outage: float
    normal: int  # normal jobs beside the doomed and the crafted ones
    crafted_copies: int


FULL = Size(
    name="full", kill_jobs=10_000, kill_workers=3, min_kills=5, restart_seconds=14.0, restarts=2,
    freeze_jobs=1500, freezes=("client-pause", "debug-sleep", "sigstop"), doomed=500, db_outage=10.0,
    normal=2000, crafted_copies=3,
)
SHORT = Size(
    name="short", kill_jobs=3000, kill_workers=2, min_kills=2, restart_seconds=7.0, restarts=1,
    freeze_jobs=500, freezes=("client-pause", "debug-sleep"), doomed=150, db_outage=5.0,
    normal=400, crafted_copies=1,
)
MAX_KILLS = 200  # a bound, should the queue never run dry

JOB_SECONDS = 0.002  # long enough for a kill or a freeze to catch jobs in flight
KILL_JOB_SECONDS = 0.01  # the kills come while the workers still have jobs to do


@dataclass
class Env:
    workdir: Path
    ledger_url: str
    db: Database
    size: Size

    def world(self, name: str, **options) -> World:
        return World(name, self.workdir, self.ledger_url, self.db, **options)


def enqueue(world: World, count: int, seconds: float = JOB_SECONDS) -> list[str]:
    jobs = [ChaosJob(seconds) for _ in range(count)]
    ChaosJob.perform_all_later(jobs)
    ids = [job.job_id for job in jobs]
    world.note_enqueued(ids)
    return ids


def produce_through_restarts(world: World, size: Size, produce: Callable[[threading.Event], None]) -> float:
    """The fault of the Redis restart scenarios: ``produce`` runs in a thread (until the event it
    is given is set) while Redis is killed with SIGKILL and started again ``size.restarts``
    times over ``size.restart_seconds``. Returns when the last restart ended."""
    stop = threading.Event()
    producer = threading.Thread(target=produce, args=(stop,), daemon=True)
    producer.start()
    pause = size.restart_seconds / (size.restarts + 1)
    fault_end = time.time()
    for _ in range(size.restarts):
        time.sleep(pause)
        world.redis.stop()  # SIGKILL
        time.sleep(1.5)
        world.redis.start()  # same port, the append-only file loaded
        fault_end = time.time()
    time.sleep(pause)
    stop.set()
    producer.join(10)
    return fault_end


# -- 1. kill -9 --------------------------------------------------------------------------------


def kill_workers(env: Env) -> Outcome:
    """Workers killed with SIGKILL, one every 0.3-0.8 s, each replaced by a new one, while they
    work through the jobs; the fault ends with the last kill, once the queue is empty."""
    size = env.size
    outcome = Outcome("kill -9 workers", "")
    with env.world("kill9") as world:
        began = world.start_workers(size.kill_workers)
        ids = enqueue(world, size.kill_jobs, KILL_JOB_SECONDS)
        kills = 0
        while kills < size.min_kills or (world.broker.queue_size("default") and kills < MAX_KILLS):
            time.sleep(random.uniform(0.3, 0.8))
            started = set(registered(world.broker).values())
            victims = [w for w in world.alive() if w.pid in started]  # past its start: holding jobs
            if not victims:
                continue
            victim = random.choice(victims)
            victim.send(signal.SIGKILL)
            victim.wait(10)
            kills += 1
            world.spawn()
        fault_end = time.time()
        outcome.fault = f"{kills} workers killed"
        world.await_runs(outcome, ids, fault_end)
        world.finish(outcome, began)
    return outcome


# -- 2. Redis killed and restarted --------------------------------------------------------------


def restart_redis(env: Env) -> Outcome:
    """Redis (append-only file, fsync every second) killed with SIGKILL and started again while
    a producer enqueues about 300 jobs a second and the workers run them. A job counts as
    enqueued when Redis acknowledged it; an enqueue that failed is not counted, and its job is
    not expected (it may still run: the command can have run before the connection broke)."""
    size = env.size
    outcome = Outcome("Redis killed and restarted", "")
    with env.world("restart", persist="everysec") as world:
        began = world.start_workers(2)
        acknowledged: list[str] = []
        refused = 0

        def produce(stop: threading.Event) -> None:
            nonlocal refused
            while not stop.is_set():
                job = ChaosJob(JOB_SECONDS)
                try:
                    job.enqueue()
                except redis.RedisError:
                    refused += 1
                    time.sleep(0.05)
                    continue
                world.note_enqueued([job.job_id])
                acknowledged.append(job.job_id)
                time.sleep(1 / 300)

        fault_end = produce_through_restarts(world, size, produce)
        outcome.fault = (
            f"{size.restarts} x SIGKILL, 1.5 s down; {refused} enqueue(s) refused, "
            f"{world.log_count('fetch failed')} fetch(es) failed"
        )
        world.await_runs(outcome, acknowledged, fault_end)
        world.finish(outcome, began)
    return outcome


# -- 2b. the same, with the outbox -----------------------------------------------------------------


class _Rollback(Exception):
    pass


def outbox_restart(env: Env) -> Outcome:
    """The outbox through Redis restarts: a producer commits transactions of three jobs (about
    300 jobs a second; one transaction in ten rolled back) while Redis is killed and started
    again, as in ``restart_redis``. Nothing is refused: every committed job must run once, and
    no rolled-back one."""
    from django.db import connection, transaction

    from django_async_jobs.models import OutboxJob

    size = env.size
    outcome = Outcome("Redis killed and restarted, outbox on", "")
    with env.world("outbox", persist="everysec", overrides={"OUTBOX": True}) as world:
        began = world.start_workers(2)
        committed: list[str] = []
        rolled_back: list[str] = []
        rng = random.Random(16)

        def produce(stop: threading.Event) -> None:
            try:
                while not stop.is_set():
                    jobs = [ChaosJob(JOB_SECONDS) for _ in range(3)]
                    ids = [job.job_id for job in jobs]
                    try:
                        with transaction.atomic():
                            for job in jobs:
                                job.enqueue()
                            if rng.random() < 0.1:
                                raise _Rollback
                    except _Rollback:
                        rolled_back.extend(ids)
                    else:
                        world.note_enqueued(ids)
                        committed.extend(ids)
                    time.sleep(3 / 300)
            finally:
                connection.close()

        fault_end = produce_through_restarts(world, size, produce)
        outcome.fault = (
            f"{size.restarts} x SIGKILL, 1.5 s down; {len(rolled_back) // 3} transaction(s) rolled back, "
            f"{world.log_count('outbox relay (default): Redis unavailable')} relay round(s) failed"
        )
        world.await_runs(outcome, committed, fault_end)
        ran = set(world.runs()) & set(rolled_back)
        if ran:
            outcome.problems.append(f"{len(ran)} job(s) of rolled-back transactions ran, e.g. {sorted(ran)[:3]}")
        waiting = OutboxJob.objects.count()
        if waiting:
            outcome.problems.append(f"left behind: {waiting} outbox row(s)")
        world.finish(outcome, began)
    return outcome


# -- 3. Redis frozen -------------------------------------------------------------------------------


def freeze_redis(env: Env) -> Outcome:
    """Redis frozen for 3 s, three times the workers' reply timeout (1 s, ``?socket_timeout=1``),
    by CLIENT PAUSE, DEBUG SLEEP and SIGSTOP, each while the workers have jobs in hand. A fetch
    cut by the timeout and run by Redis when it wakes must strand nothing. HEARTBEAT_TIMEOUT is
    8 s here, above the freeze, so that nobody is taken for dead."""
    size = env.size
    outcome = Outcome("Redis frozen", "")
    with env.world("freeze", debug=True, reply_timeout=1, overrides={"HEARTBEAT_TIMEOUT": 8}) as world:
        began = world.start_workers(2)
        admin = redis.Redis(port=world.redis.port, socket_timeout=30)
        ids: list[str] = []
        fault_end = time.time()
        for freeze in size.freezes:
            ids += enqueue(world, size.freeze_jobs, 0.005)
            time.sleep(0.3)  # the workers are busy with them
            if freeze == "client-pause":
                admin.client_pause(3000, all=True)
                time.sleep(3.2)
            elif freeze == "debug-sleep":
                admin.execute_command("DEBUG", "SLEEP", 3)  # returns when the server wakes
            else:
                world.redis.freeze()
                time.sleep(3)
                world.redis.thaw()
            fault_end = time.time()
            time.sleep(1.5)
        outcome.fault = (
            f"3 s each: {', '.join(size.freezes)}; reply timeout 1 s; "
            f"{world.log_count('fetch failed')} fetch(es) cut"
        )
        world.await_runs(outcome, ids, fault_end)
        world.finish(outcome, began)
    return outcome


# -- 4. the database away while jobs die ------------------------------------------------------------


def cut_database(env: Env) -> Outcome:
    """The database unreachable for the workers while jobs die (no retries left): their records
    wait in Redis; once it is back, every one must become a DeadJob row."""
    from django_async_jobs.models import DeadJob

    size = env.size
    outcome = Outcome("database unreachable", f"{env.db.kind} cut for {size.db_outage:.0f} s")
    with env.world("database") as world:
        began = world.start_workers(2)
        env.db.cut()
        try:
            doomed = [DoomedJob() for _ in range(size.doomed)]
            DoomedJob.perform_all_later(doomed)
            doomed_ids = [job.job_id for job in doomed]
            world.note_enqueued(doomed_ids)
            normal = enqueue(world, size.normal)
            wait_for(lambda: len(world.runs()) >= len(doomed_ids) + len(normal), 60, "every job run once")
            time.sleep(max(0.0, size.db_outage - (time.monotonic() - began)))
            staged = world.broker.redis.hlen(world.broker.keys.dead)
        finally:
            env.db.restore()
        fault_end = time.time()
        if staged != len(doomed_ids):
            outcome.problems.append(f"{staged} of {len(doomed_ids)} dead jobs staged: the cut did not hold")
        outcome.fault += f"; {world.log_count('database unavailable')} failed write(s)"
        world.await_runs(outcome, normal + doomed_ids, fault_end)
        world.await_rows(
            outcome, lambda: DeadJob.objects.filter(job_id__in=doomed_ids).count(), len(doomed_ids), fault_end,
            "jobs that died",
        )
        world.finish(outcome, began)
    return outcome


# -- 5. crafted payloads ----------------------------------------------------------------------------


def _payload(marker: str, **fields) -> bytes:
    job = {"jid": marker, "job": "chaos.jobs.DoomedJob", "queue": "default", "args": [], "kwargs": {}}
    return json.dumps({**job, **fields}).encode()


NESTED = 100_000
# Payloads written straight into Redis, as an attacker or a bug could; each takes a marker that
# its dead-job row keeps. They name DoomedJob (no retries), so a failure is a death at once.
CRAFTED: list[Callable[[str], bytes]] = [
    lambda m: f"{m} is not JSON".encode(),
    lambda m: b'{"jid":"' + m.encode() + b'","job":"\xff\xfe invalid UTF-8","queue":"default","args":[]}',
    lambda m: json.dumps([m, "a list"]).encode(),
    lambda m: json.dumps(f"{m}: a string").encode(),
    lambda m: _payload(m, job="chaos.jobs.NoSuchJob"),
    lambda m: _payload(m, args=[1, 2]),  # perform takes none
    lambda m: _payload(m, args=[{"__aj__": "decimal", "v": "x"}]),
    lambda m: _payload(m, args=[{"__aj__": "timedelta", "v": [10**10, 0, 0]}]),
    lambda m: _payload(m, args=[{"__aj__": "dict", "v": [1, 2]}]),
    lambda m: _payload(m, retry_count="x"),  # fails, and its retry count is no number
    lambda m: _payload(m, executions="many"),
    lambda m: _payload(m, args=[float("nan"), float("inf"), 10**400]),
    lambda m: _payload(m, args="not a list", kwargs=[]),
    lambda m: _payload(m, queue=7),
    lambda m: (f'{{"jid":"{m}","job":"chaos.jobs.DoomedJob","queue":"default","args":['
               + "[" * NESTED + "]" * NESTED + "]}").encode(),
]


def crafted(env: Env) -> Outcome:
    """Crafted payloads written straight into the queue, the retry set and the schedule among
    normal jobs: each must end as a dead-job row, none stay anywhere, every normal job runs."""
    from django_async_jobs.broker.client import score
    from django_async_jobs.models import DeadJob

    size = env.size
    outcome = Outcome("crafted payloads", "")
    with env.world("crafted") as world:
        began = world.start_workers(2)
        broker = world.broker
        k = broker.keys
        run = os.urandom(4).hex()
        markers: list[str] = []
        normal: list[str] = []
        between = size.normal // (size.crafted_copies * 3 * len(CRAFTED)) + 1
        for copy in range(size.crafted_copies):
            for place in ("queue", "retry", "schedule"):
                for n, make in enumerate(CRAFTED):
                    marker = f"crafted-{run}-{copy}-{place}-{n:02d}"
                    markers.append(marker)
                    normal += enqueue(world, between)
                    if place == "queue":
                        broker.redis.zadd(k.queue("default"), {make(marker): score(0)})
                    else:  # due now: the poller moves it, or buries what it cannot route
                        broker.redis.zadd(k.retry if place == "retry" else k.schedule, {make(marker): time.time()})
        fault_end = time.time()
        outcome.fault = f"{len(markers)} payloads of {len(CRAFTED)} kinds"
        world.await_runs(outcome, normal, fault_end)

        def rows() -> int:
            return sum(1 for marker in markers if DeadJob.objects.filter(payload__contains=marker).exists())

        world.await_rows(outcome, rows, len(markers), fault_end, "crafted payloads")
        world.finish(outcome, began)
    return outcome


SCENARIOS: dict[str, Callable[[Env], Outcome]] = {
    "kill9": kill_workers,
    "restart": restart_redis,
    "outbox": outbox_restart,
    "freeze": freeze_redis,
    "database": cut_database,
    "crafted": crafted,
}
