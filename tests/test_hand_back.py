"""What a worker hands back, and what that counts: a job that never started goes back as it was;
one that was cut by a stop, or that no thread holds any more, counts a recovery (and ends as a
poison pill past MAX_RECOVERIES). A stop that cannot hand back says so and exits non-zero."""

import json
import signal
import time

from django_async_jobs.conf import QueueSpec
from django_async_jobs.serialization import decode_payload
from django_async_jobs.worker.launcher import Worker
from tests.helpers import RedisServer, registered, wait_for
from tests.testapp.jobs import ExitJob, FileJob, IncrJob, SlowOnceJob

START_TIMEOUT = 20


def recoveries(broker) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in broker.redis.hgetall(broker.keys.recoveries).items()}


def test_a_stop_counts_the_job_it_cut_and_not_the_one_that_never_started(broker, settings, prefix, caplog):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "PREFETCH": 1}
    long = SlowOnceJob.perform_later(f"{prefix}:trace", "long", 10)
    waiting = IncrJob.perform_later(f"{prefix}:n")
    worker = Worker(concurrency=1)
    worker.start()
    try:
        wait_for(lambda: broker.redis.llen(f"{prefix}:trace") == 1, 10, "the long job started")
        wait_for(lambda: len(broker.inflight(worker.process_id)) == 2, 5, "the next job waiting in the buffer")
    finally:
        with caplog.at_level("INFO", "django_async_jobs.worker"):
            assert worker.stop(timeout=0) is True
    assert recoveries(broker) == {long.job_id: 1}
    queued = [decode_payload(raw)["jid"] for raw in broker.redis.zrange(broker.keys.queue("default"), 0, -1)]
    assert queued == [long.job_id, waiting.job_id]  # both keep their turn
    assert "1 job(s) still running after SHUTDOWN_TIMEOUT" in caplog.text
    assert "2 job(s) handed back" in caplog.text


def test_a_job_no_thread_holds_goes_back_at_the_next_beat_and_ends_a_poison_pill(broker, settings, prefix):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "MAX_RECOVERIES": 1}
    key = f"{prefix}:exits"
    job = ExitJob.perform_later(key)
    worker = Worker(concurrency=1)
    worker.start()
    try:
        # Run, handed back (1 recovery), run again, handed back once more: past MAX_RECOVERIES.
        wait_for(lambda: broker.redis.hlen(broker.keys.dead) == 1, 15, "the job set aside")
        assert broker.inflight(worker.process_id) == {}  # while the worker lives on
        assert worker.fetcher is not None and not worker.stopped.is_set()
    finally:
        worker.stop(timeout=2)
    assert broker.redis.get(key) == b"2"
    [record] = [json.loads(r) for r in broker.redis.hvals(broker.keys.dead)]
    assert (record["reason"], record["job_id"]) == ("poison_pill", job.job_id)
    assert broker.queue_size("default") == 0
    assert recoveries(broker) == {}


def test_a_stop_without_redis_says_so_and_exits_1(tmp_path, spawn, settings, prefix):
    """Redis goes away under a running job; the stop cannot settle it nor hand anything back. The
    job stays in flight (Redis keeps its data) and another worker recovers and runs it again."""
    from django_async_jobs.broker.client import get_broker

    server = RedisServer(tmp_path, persist=True)
    server.start()
    shared = settings.ASYNC_JOBS
    try:
        settings.ASYNC_JOBS = {**shared, "REDIS_URL": server.url, "HEARTBEAT_TIMEOUT": 2}
        broker = get_broker()
        out = tmp_path / "runs.txt"
        a = spawn("-c", "1", redis_url=server.url, overrides={"SHUTDOWN_TIMEOUT": 5})
        [process_id] = wait_for(lambda: registered(broker), START_TIMEOUT, "the worker registered")
        gate = tmp_path / "gate"
        FileJob.perform_later(str(out), "x", str(gate))
        # Started, not only fetched: a job fetched ahead and not started goes back untouched.
        wait_for(lambda: (tmp_path / "gate.started").exists(), 10, "the job running")
        assert len(broker.inflight(process_id)) == 1
        server.stop()
        a.send(signal.SIGTERM)
        gate.touch()  # the job finishes during the stop, with Redis away
        assert a.wait(30) == 1, a.output()
        assert "without handing its jobs back" in a.output()
        assert "every running job finished" not in a.output()
        assert out.read_text().split() == [f"x:{a.pid}"]
        server.start()  # the append-only file brings the in-flight hash back
        assert len(broker.inflight(process_id)) == 1
        rescuer = Worker(queues=QueueSpec(("default",), (1,), True), concurrency=1)
        rescuer.start()
        try:
            wait_for(lambda: len(out.read_text().split()) == 2, 15, "the job recovered and run again")
            wait_for(lambda: broker.inflight(rescuer.process_id) == {}, 5, "settled")
        finally:
            assert rescuer.stop(timeout=2) is True
        assert not broker.redis.exists(broker.keys.inflight(process_id))
    finally:
        settings.ASYNC_JOBS = shared  # the prefix fixture cleans up where the other tests live
        server.stop()


def test_the_supervisor_passes_a_failed_stop_on(private_redis, redis_server, spawn):
    broker = private_redis
    sup = spawn("--processes", "2", "-c", "1", redis_url=redis_server.url)
    wait_for(lambda: len(registered(broker)) == 2, START_TIMEOUT, "two children")
    wait_for(lambda: sup.output().count(" started: queues=") == 2, 5, "both children running")
    redis_server.stop()
    started = time.monotonic()
    sup.send(signal.SIGTERM)
    assert sup.wait(30) == 1, sup.output()
    assert time.monotonic() - started < 20
    assert sup.output().count("without handing its jobs back") == 2
    assert "exited with status 1" in sup.output()
