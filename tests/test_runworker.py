"""``runworker`` options as a real process sees them: -q, -c, --processes, and TSTP through a supervisor."""

import json
import logging
import signal
import time

import pytest
from django.core.management import CommandError, call_command

from django_async_jobs.management.commands.runworker import _configure_logging
from tests.helpers import registered, wait_for
from tests.testapp.jobs import IncrJob, SlowOnceJob, TraceJob

START_TIMEOUT = 20


def infos(broker) -> list[dict[str, str]]:
    out = []
    for process_id in registered(broker):
        raw = broker.redis.hgetall(broker.keys.process(process_id))
        out.append({k.decode(): v.decode() for k, v in raw.items()})
    return out


def test_queue_and_concurrency_options_through_a_supervisor(spawn, broker, prefix):
    key = f"{prefix}:n"
    sup = spawn("--processes", "2", "-q", "low,2", "-q", "critical", "-c", "3")
    wait_for(lambda: len(registered(broker)) == 2, START_TIMEOUT, "two children")
    for info in infos(broker):
        assert info["queues"] == "low,critical"
        assert info["concurrency"] == "3"
        assert info["quiet"] == "0"
    IncrJob.set(queue="default").perform_later(key, 100)
    IncrJob.set(queue="low").perform_later(key, 1)
    IncrJob.set(queue="critical").perform_later(key, 10)
    wait_for(lambda: broker.redis.get(key) == b"11", 30, "the low and critical jobs")
    time.sleep(0.5)
    assert broker.redis.get(key) == b"11"  # nobody reads "default"
    assert broker.queue_size("default") == 1
    # TSTP reaches every child through the supervisor: all quiet, all still alive.
    sup.send(signal.SIGTSTP)
    wait_for(lambda: [i["quiet"] for i in infos(broker)] == ["1", "1"], 30, "both children quiet")
    IncrJob.set(queue="low").perform_later(key, 1000)
    time.sleep(0.6)
    assert broker.redis.get(key) == b"11"
    assert sup.alive() and len(registered(broker)) == 2
    sup.send(signal.SIGTERM)
    assert sup.wait(10) == 0, sup.output()
    assert registered(broker) == {}
    assert broker.queue_size("low") == 1  # the job that came while quiet waits for the next worker


@pytest.mark.parametrize(
    "args, message",
    [
        (["-q", "default,0"], "weight after the comma must be a positive integer"),
        (["-q", ""], "'' is not a valid queue name"),
        (["-c", "0"], "--concurrency must be at least 1"),
        (["--processes", "0"], "--processes must be at least 1"),
    ],
)
def test_bad_options_fail_before_anything_starts(prefix, broker, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("runworker", *args)
    assert registered(broker) == {}


def test_ctrl_c_in_a_terminal_stops_the_children_gracefully(spawn, broker, prefix):
    """A terminal sends INT to the whole process group: supervisor and children alike. The
    children must take it as one graceful stop, not as the second INT that means "at once"."""
    import os

    key = f"{prefix}:trace"
    sup = spawn("--processes", "2", "-c", "1")
    wait_for(lambda: len(registered(broker)) == 2, START_TIMEOUT, "two children")
    TraceJob.perform_later(key, "running", 1.0)
    wait_for(lambda: broker.redis.llen(key) == 1, START_TIMEOUT, "the job started")
    os.killpg(sup.pid, signal.SIGINT)  # the group is this test's own session
    assert sup.wait(10) == 0, sup.output()
    assert [e.decode().split(":")[0] for e in broker.redis.lrange(key, 0, -1)] == ["start", "done"]
    assert "exiting at once" not in sup.output()
    assert sup.output().count("exited (0)") == 2
    assert registered(broker) == {}


def test_second_sigint_to_the_supervisor_stops_the_children_at_once(spawn, broker, prefix):
    key = f"{prefix}:trace"
    # A long stop timeout and a longer job: the first INT surely still waits at the second.
    sup = spawn("--processes", "2", "-c", "1", overrides={"SHUTDOWN_TIMEOUT": 30})
    wait_for(lambda: len(registered(broker)) == 2, START_TIMEOUT, "two children")
    job = SlowOnceJob.perform_later(key, "long", 60)
    wait_for(lambda: broker.redis.llen(key) == 1, START_TIMEOUT, "the job started")
    [holder] = [process_id for process_id in registered(broker) if broker.inflight(process_id)]
    sup.send(signal.SIGINT)
    time.sleep(0.3)
    assert sup.alive()  # the first INT waits for the running job
    second = time.monotonic()
    sup.send(signal.SIGINT)
    assert sup.wait(10) == 1, sup.output()  # its children were killed: jobs left for recovery
    assert time.monotonic() - second < 10  # at once: not after the job or SHUTDOWN_TIMEOUT
    # Left in flight for recovery, as a single worker's second INT leaves it.
    assert [json.loads(p)["jid"] for p in broker.inflight(holder).values()] == [job.job_id]


def test_verbosity_2_logs_job_starts_when_the_project_gives_no_handler(spawn, broker, prefix):
    key = f"{prefix}:n"
    worker = spawn("-v", "2")
    wait_for(lambda: registered(broker), START_TIMEOUT, "the worker")
    job = IncrJob.perform_later(key)
    wait_for(lambda: broker.redis.get(key) == b"1", 10, "the job")
    worker.send(signal.SIGTERM)
    assert worker.wait(10) == 0
    assert f"start {IncrJob.job_name} {job.job_id} queue=default" in worker.output()


def test_verbosity_leaves_a_project_logging_handler_alone():
    """What configuration.md says: with a handler from LOGGING, -v does not set levels."""
    ours, root = logging.getLogger("django_async_jobs"), logging.getLogger()
    handler = logging.NullHandler()
    root.addHandler(handler)
    level, handlers = ours.level, list(ours.handlers)
    try:
        _configure_logging(2)
        assert ours.level == level and ours.handlers == handlers
        assert not logging.getLogger("django_async_jobs.job").isEnabledFor(logging.DEBUG)
    finally:
        root.removeHandler(handler)
