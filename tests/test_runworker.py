"""``runworker`` options as a real process sees them: -q, -c, --processes, and TSTP through a supervisor."""

import signal
import time

import pytest
from django.core.management import CommandError, call_command

from tests.helpers import registered, wait_for
from tests.testapp.jobs import IncrJob

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
    wait_for(lambda: broker.redis.get(key) == b"11", 5, "the low and critical jobs")
    time.sleep(0.5)
    assert broker.redis.get(key) == b"11"  # nobody reads "default"
    assert broker.queue_size("default") == 1
    # TSTP reaches every child through the supervisor: all quiet, all still alive.
    sup.send(signal.SIGTSTP)
    wait_for(lambda: [i["quiet"] for i in infos(broker)] == ["1", "1"], 5, "both children quiet")
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
        (["-q", ""], "a queue name must be non-empty"),
        (["-c", "0"], "--concurrency must be at least 1"),
        (["--processes", "0"], "--processes must be at least 1"),
    ],
)
def test_bad_options_fail_before_anything_starts(prefix, broker, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("runworker", *args)
    assert registered(broker) == {}
