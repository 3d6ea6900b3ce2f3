"""A Redis that stops answering for longer than the reply timeout: the worker gives up on its
fetch, Redis runs it anyway when it wakes (and the copy the client sent again on a new
connection). No job may stay in a live worker's in-flight hash that none of its threads holds.

Each test has a redis-server of its own that it freezes (SIGSTOP, DEBUG SLEEP, CLIENT PAUSE);
the worker's URL sets a one-second reply timeout.
"""

import signal
import threading
import time
from collections import Counter

import pytest
import redis

from django_async_jobs.broker.client import Broker
from django_async_jobs.conf import build
from django_async_jobs.serialization import decode_payload
from tests.helpers import RedisServer, registered, wait_for
from tests.testapp.jobs import FileJob, IncrJob

START_TIMEOUT = 20


@pytest.fixture
def frozen_redis(tmp_path, settings, prefix):
    """A private redis-server that allows DEBUG SLEEP, with the test's broker on it."""
    from django_async_jobs.broker.client import get_broker

    server = RedisServer(tmp_path, debug=True)
    server.start()
    original = settings.ASYNC_JOBS
    settings.ASYNC_JOBS = {**original, "REDIS_URL": server.url}
    try:
        yield server, get_broker()
    finally:
        settings.ASYNC_JOBS = original
        server.stop()


def ids(items) -> list[str]:
    return [decode_payload(raw)["jid"] for _, raw in items]


def queued(broker) -> list[str]:
    return [decode_payload(raw)["jid"] for raw in broker.redis.zrange(broker.keys.queue("default"), 0, -1)]


# -- the fetch step, attempt by attempt ----------------------------------------------------------


def test_an_attempt_whose_reply_was_lost_is_returned_by_the_next_one(broker):
    jobs = [IncrJob.perform_later(f"k{i}") for i in range(5)]
    broker.heartbeat("p", {}, ttl=60)
    lost = broker.fetch("p", ["default"], 2, attempt=1, received=0)  # ran; its reply never came
    assert ids(lost) == [j.job_id for j in jobs[:2]]
    got = broker.fetch("p", ["default"], 3, attempt=2, received=0)
    assert ids(got) == [j.job_id for j in jobs[:3]]  # the lost two first, one new for the slot left
    assert got[:2] == lost
    assert queued(broker) == [j.job_id for j in jobs[3:]]
    assert len(broker.inflight("p")) == 3
    # Read: the next attempt owes nothing.
    assert ids(broker.fetch("p", ["default"], 1, attempt=3, received=2)) == [jobs[3].job_id]


def test_a_copy_of_an_attempt_returns_the_same_jobs_and_moves_none(broker):
    jobs = [IncrJob.perform_later(f"k{i}") for i in range(4)]
    broker.heartbeat("p", {}, ttl=60)
    first = broker.fetch("p", ["default"], 2, attempt=1, received=0)
    again = broker.fetch("p", ["default"], 2, attempt=1, received=0)  # the client sent it again
    assert again == first
    assert queued(broker) == [j.job_id for j in jobs[2:]]


def test_a_late_copy_of_an_older_attempt_moves_nothing(broker):
    jobs = [IncrJob.perform_later(f"k{i}") for i in range(4)]
    broker.heartbeat("p", {}, ttl=60)
    assert ids(broker.fetch("p", ["default"], 1, attempt=2, received=0)) == [jobs[0].job_id]
    assert broker.fetch("p", ["default"], 2, attempt=1, received=0) == []  # Redis ran it last
    assert queued(broker) == [j.job_id for j in jobs[1:]]
    # Whether attempt 1 ever ran or not, attempt 3 owes what attempt 2 moved if its reply was lost.
    assert ids(broker.fetch("p", ["default"], 1, attempt=3, received=1)) == [jobs[0].job_id]


def test_only_a_registered_process_fetches(broker):
    jobs = [IncrJob.perform_later(f"k{i}") for i in range(3)]
    with pytest.raises(redis.ResponseError, match="NOPROCESS"):
        broker.fetch("never-beat", ["default"], 1, attempt=1, received=0)
    broker.heartbeat("p", {}, ttl=60)
    broker.fetch("p", ["default"], 1, attempt=1, received=0)
    assert broker.release("p", max_recoveries=3) == (1, 0)
    # A copy that Redis runs after the process stopped would put jobs where nobody recovers them.
    with pytest.raises(redis.ResponseError, match="NOPROCESS"):
        broker.fetch("p", ["default"], 1, attempt=2, received=0)
    assert queued(broker) == [j.job_id for j in jobs]
    assert not broker.redis.exists(broker.keys.inflight("p"), broker.keys.fetched("p"))


def test_a_process_taken_for_dead_keeps_the_order_of_its_attempts(broker):
    """A stalled process is recovered while a copy of a fetch it had the reply of is still on its
    way; it beats again, and the copy runs: it must not move jobs the process never hears of."""
    jobs = [IncrJob.perform_later(f"k{i}") for i in range(4)]
    broker.heartbeat("p", {}, ttl=60)
    broker.fetch("p", ["default"], 1, attempt=1, received=0)
    broker.redis.zadd(broker.keys.processes, {"p": 0})  # its last beat, long ago
    assert broker.recover(timeout=1, max_recoveries=3) == (1, 1, 0)
    assert 0 < broker.redis.ttl(broker.keys.fetched("p"))  # kept for a while, then gone
    broker.heartbeat("p", {}, ttl=60)  # it was only stalled
    assert broker.redis.ttl(broker.keys.fetched("p")) == -1
    assert broker.fetch("p", ["default"], 1, attempt=1, received=0) == []  # the late copy
    assert queued(broker) == [j.job_id for j in jobs]
    assert ids(broker.fetch("p", ["default"], 1, attempt=2, received=1)) == [jobs[0].job_id]


def test_a_fetch_that_times_out_on_a_frozen_redis_is_owed_to_the_next(frozen_redis):
    """The real thing: the reply timeout cuts the fetch, the client sends it again on a fresh
    connection, and Redis runs both copies when it wakes."""
    server, broker = frozen_redis
    jobs = [IncrJob.perform_later(f"k{i}") for i in range(6)]
    broker.heartbeat("p", {}, ttl=60)
    impatient = Broker(build({"REDIS_URL": f"{server.url}?socket_timeout=0.3", "KEY_PREFIX": broker.keys.prefix}))
    # Connected, and the script loaded: the fetch itself is what the frozen server gets.
    assert impatient.fetch("p", ["idle"], 1, attempt=1, received=0) == []
    server.freeze()
    try:
        with pytest.raises(redis.TimeoutError):
            impatient.fetch("p", ["default"], 2, attempt=2, received=1)
    finally:
        server.thaw()
    wait_for(lambda: len(broker.inflight("p")) == 2, 5, "the copies ran once Redis woke")
    assert ids(impatient.fetch("p", ["default"], 2, attempt=3, received=1)) == [j.job_id for j in jobs[:2]]
    assert queued(broker) == [j.job_id for j in jobs[2:]]


def test_a_queue_that_cannot_be_read_does_not_strand_the_jobs_of_the_others(broker):
    job = IncrJob.perform_later("k")
    broker.redis.set(broker.keys.queue("broken"), "not a sorted set")
    broker.heartbeat("p", {}, ttl=60)
    got = broker.fetch("p", ["default", "broken"], 2, attempt=1, received=0)
    assert ids(got) == [job.job_id]
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):  # nothing else to give
        broker.fetch("p", ["broken", "default"], 2, attempt=2, received=1)
    assert list(broker.inflight("p")) == [got[0][0]]


# -- a worker ------------------------------------------------------------------------------------


def runs(path) -> Counter:
    return Counter(line.split(":")[0] for line in path.read_text().split()) if path.exists() else Counter()


def debug_sleep(server: RedisServer, seconds: float) -> None:
    """DEBUG SLEEP from a client of its own: the whole server blocks, not only that client."""
    def run() -> None:
        client = redis.Redis(port=server.port, socket_timeout=seconds + 30)
        client.execute_command("DEBUG", "SLEEP", seconds)
        client.close()

    threading.Thread(target=run, daemon=True).start()


@pytest.mark.parametrize("freeze", ["sigstop", "debug-sleep", "client-pause"])
def test_fetches_whose_replies_were_lost_strand_no_job(frozen_redis, spawn, tmp_path, freeze):
    server, broker = frozen_redis
    out = tmp_path / "runs.txt"
    worker = spawn(
        "-c", "1", redis_url=f"{server.url}?socket_timeout=1",
        overrides={"PREFETCH": 0, "HEARTBEAT_TIMEOUT": 60},
    )
    [process_id] = wait_for(lambda: registered(broker), START_TIMEOUT, "the worker registered")
    gate = tmp_path / "gate"
    FileJob.perform_later(str(out), "slow", str(gate))
    names = [f"j{i}" for i in range(8)]
    for name in names:
        FileJob.perform_later(str(out), name)
    wait_for(lambda: broker.queue_size("default") == 8, 10, "the slow job fetched")
    wait_for(lambda: (tmp_path / "gate.started").exists(), 10, "the slow job started")
    # Frozen while the slow job runs: it ends meanwhile, and the thread's next fetches time out.
    if freeze == "sigstop":
        server.freeze()
        gate.touch()
        time.sleep(4)
        server.thaw()
    elif freeze == "debug-sleep":
        debug_sleep(server, 4)
        time.sleep(0.5)  # the server is asleep before the job ends and the thread fetches
        gate.touch()
        time.sleep(4.5)
    else:  # Redis drops a paused command whose client gave up: the reply timeout alone
        redis.Redis(port=server.port).client_pause(4000, all=True)
        gate.touch()
        time.sleep(4.5)
    wait_for(lambda: runs(out) == Counter(["slow", *names]), 20, "every job run once")
    wait_for(lambda: broker.inflight(process_id) == {}, 10, "nothing left in flight")
    assert broker.queue_size("default") == 0
    time.sleep(1)
    assert runs(out) == Counter(["slow", *names]), out.read_text()
    assert worker.alive()
    assert "fetch failed" in worker.output()  # the fault did reach the fetch
    worker.send(signal.SIGTERM)
    assert worker.wait(15) == 0, worker.output()


def test_a_worker_quieted_while_it_owes_an_attempt_takes_its_jobs_back(frozen_redis, spawn, tmp_path):
    server, broker = frozen_redis
    out = tmp_path / "runs.txt"
    worker = spawn(
        "-c", "1", redis_url=f"{server.url}?socket_timeout=1",
        overrides={"PREFETCH": 0, "HEARTBEAT_TIMEOUT": 60},
    )
    [process_id] = wait_for(lambda: registered(broker), START_TIMEOUT, "the worker registered")
    gate = tmp_path / "gate"
    FileJob.perform_later(str(out), "slow", str(gate))
    names = [f"j{i}" for i in range(5)]
    for name in names:
        FileJob.perform_later(str(out), name)
    wait_for(lambda: broker.queue_size("default") == 5, 10, "the slow job fetched")
    # Running, not only fetched: a fetched job the quiet finds unstarted goes back to its queue.
    wait_for(lambda: (tmp_path / "gate.started").exists(), 10, "the slow job started")
    server.freeze()
    gate.touch()
    time.sleep(3)  # the job ends, the next fetches time out
    worker.send(signal.SIGTSTP)
    time.sleep(0.5)
    server.thaw()
    # Quiet: it fetches no new job, and the jobs a lost reply left in its hash go back untouched.
    wait_for(lambda: broker.inflight(process_id) == {}, 15, "nothing left in flight")
    wait_for(lambda: broker.queue_size("default") + len(runs(out)) == 6, 10, "every job queued or run")
    assert runs(out)["slow"] == 1
    assert set(runs(out)) - {"slow"} <= set(names)  # run before the freeze, if any
    assert worker.alive()
    assert not broker.redis.hlen(broker.keys.recoveries)  # never started: not counted
    worker.send(signal.SIGTERM)
    assert worker.wait(15) == 0, worker.output()

