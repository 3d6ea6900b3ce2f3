"""The public job API: enqueue, set(), perform_now, queue_as, and errors raised at enqueue time."""

import json
import time
from datetime import UTC, datetime, timedelta

import pytest

from django_async_jobs import ApplicationJob, ConfiguredJob, around_perform
from django_async_jobs.serialization import decode_payload


class AddJob(ApplicationJob):
    queue_as = "low"

    def perform(self, a, b=0, *, scale=1):
        return (a + b) * scale


class RoutedJob(ApplicationJob):
    """queue_as as a method: the queue follows the arguments."""

    def queue_as(self):
        return "critical" if self.arguments[0] == "urgent" else "low"

    def perform(self, kind):
        return kind


class CountingJob(ApplicationJob):
    def perform(self):
        return self.executions


def queued(broker, queue):
    """Decoded payloads of a queue, in the order a worker would take them."""
    return [decode_payload(raw) for raw in broker.redis.zrange(broker.keys.queue(queue), 0, -1)]


def test_perform_later_returns_the_job_with_an_id(broker):
    job = AddJob.perform_later(1, 2)
    assert isinstance(job, AddJob)
    assert job
    assert isinstance(job.job_id, str) and len(job.job_id) == 24
    assert job.queue_name == "low"
    assert job.successfully_enqueued is True
    assert [p["jid"] for p in queued(broker, "low")] == [job.job_id]
    other = AddJob.perform_later(1, 2)
    assert other.job_id != job.job_id


def test_payload_fields(broker):
    before = time.time()
    job = AddJob.perform_later(1, b=2, scale=3)
    raw = broker.redis.zrange(broker.keys.queue("low"), 0, -1)[0]
    assert raw.startswith(b'{"jid":"' + job.job_id.encode() + b'"')  # fetch.lua reads it there
    data = json.loads(raw)
    assert data["job"] == "tests.test_job_api.AddJob"
    assert data["queue"] == "low"
    assert data["args"] == [1]
    assert data["kwargs"] == {"b": 2, "scale": 3}
    assert before - 0.01 <= data["enqueued_at"] <= time.time() + 0.01
    # Defaults are left out of the payload.
    for absent in ("priority", "executions", "tagged", "at"):
        assert absent not in data
    assert broker.redis.sismember(broker.keys.queues, "low")


def test_arguments_and_kwargs(broker):
    job = AddJob.perform_later(5, b=6, scale=2)
    assert job.arguments == [5]
    assert job.kwargs == {"b": 6, "scale": 2}
    rebuilt = AddJob.deserialize(queued(broker, "low")[0])
    assert rebuilt.arguments == [5] and rebuilt.kwargs == {"b": 6, "scale": 2}
    assert rebuilt.job_id == job.job_id
    assert rebuilt.perform_now() == 22


def test_set_queue_and_priority(broker):
    configured = AddJob.set(queue="critical", priority=7)
    assert isinstance(configured, ConfiguredJob)
    job = configured.perform_later(1)
    assert job.queue_name == "critical" and job.priority == 7
    (data,) = queued(broker, "critical")
    assert data["queue"] == "critical" and data["priority"] == 7
    assert broker.queue_size("low") == 0


def test_set_wait_schedules_instead_of_queueing(broker):
    before = time.time()
    job = AddJob.set(wait=30).perform_later(1)
    assert broker.queue_size("low") == 0
    [(raw, score)] = broker.redis.zrange(broker.keys.schedule, 0, -1, withscores=True)
    data = json.loads(raw)
    assert data["jid"] == job.job_id
    assert before + 30 <= score <= time.time() + 30
    assert data["at"] == pytest.approx(score, abs=0.001)
    AddJob.set(wait=timedelta(minutes=2)).perform_later(2)
    scores = [s for _, s in broker.redis.zrange(broker.keys.schedule, 0, -1, withscores=True)]
    assert scores[1] == pytest.approx(time.time() + 120, abs=2)


def test_set_wait_until_datetime_and_epoch(broker):
    at = datetime.now(UTC) + timedelta(hours=1)
    AddJob.set(wait_until=at).perform_later(1)
    AddJob.set(wait_until=at.timestamp() + 60).perform_later(2)
    scores = [s for _, s in broker.redis.zrange(broker.keys.schedule, 0, -1, withscores=True)]
    assert scores == [pytest.approx(at.timestamp(), abs=0.001), pytest.approx(at.timestamp() + 60, abs=0.001)]


def test_perform_now_class_and_instance_forms(broker):
    assert AddJob.perform_now(2, b=3, scale=10) == 50
    job = AddJob(4)
    assert job.executions == 0
    assert job.perform_now() == 4
    assert job.perform_now() == 4
    assert job.executions == 2
    assert CountingJob.perform_now() == 1
    assert AddJob.set(queue="critical").perform_now(1, 1) == 2
    # perform_now runs in this process and pushes nothing.
    assert broker.queue_size("low") == 0 and broker.queue_size("critical") == 0


def test_queue_as_method_reads_arguments(broker):
    assert RoutedJob.perform_later("urgent").queue_name == "critical"
    assert RoutedJob.perform_later("later").queue_name == "low"
    assert broker.queue_size("critical") == 1 and broker.queue_size("low") == 1
    # set(queue=...) wins over queue_as.
    assert RoutedJob.set(queue="default").perform_later("urgent").queue_name == "default"


def test_default_queue_and_class_priority(broker):
    class Prioritised(ApplicationJob):
        priority = 5

        def perform(self):
            pass

    job = Prioritised.perform_later()
    assert job.queue_name == "default" and job.priority == 5
    assert queued(broker, "default")[0]["priority"] == 5


@pytest.mark.parametrize("priority", [101, -101, 1.5, "1", True])
def test_bad_priority_raises_at_enqueue(broker, priority):
    with pytest.raises(ValueError, match=r"priority must be an integer from -100 to 100"):
        AddJob.set(priority=priority).perform_later(1)
    assert broker.queue_size("low") == 0


def test_priority_bounds_are_inclusive(broker):
    AddJob.set(priority=100).perform_later(1)
    AddJob.set(priority=-100).perform_later(1)
    assert broker.queue_size("low") == 2


@pytest.mark.parametrize("wait", ["10", [1], True, datetime.now()])
def test_wait_of_wrong_type_raises(broker, wait):
    with pytest.raises(TypeError, match="wait must be a number of seconds or a timedelta"):
        AddJob.set(wait=wait).perform_later(1)
    assert broker.redis.zcard(broker.keys.schedule) == 0


def test_wait_until_of_wrong_type_raises(broker):
    with pytest.raises(TypeError, match="wait_until must be a datetime or an epoch timestamp"):
        AddJob.set(wait_until="tomorrow").perform_later(1)


def test_wait_and_wait_until_together_raise(broker):
    with pytest.raises(TypeError, match="either wait= or wait_until=, not both"):
        AddJob.set(wait=1, wait_until=time.time() + 5).perform_later(1)
    assert broker.redis.zcard(broker.keys.schedule) == 0


@pytest.mark.parametrize(
    "args, kwargs",
    [((), {}), ((1, 2, 3), {}), ((1,), {"nope": 1}), ((1,), {"a": 2})],
)
def test_arguments_that_do_not_fit_perform_raise(broker, args, kwargs):
    with pytest.raises(TypeError, match=r"AddJob\.perform\(\) cannot take these arguments"):
        AddJob.perform_later(*args, **kwargs)
    with pytest.raises(TypeError, match=r"AddJob\.perform\(\) cannot take these arguments"):
        AddJob.perform_now(*args, **kwargs)
    assert broker.queue_size("low") == 0


@pytest.mark.parametrize("queue, error", [("", ValueError), (5, TypeError)])
def test_bad_queue_raises(broker, queue, error):
    with pytest.raises(error, match=f"queue = {queue!r} is not a valid queue name"):
        AddJob.set(queue=queue).perform_later(1)


def test_queue_as_giving_no_name_raises(broker):
    class Nameless(ApplicationJob):
        def queue_as(self):
            return None

        def perform(self):
            pass

    with pytest.raises(TypeError, match=r"Nameless\.queue_as\(\) = None is not a valid queue name"):
        Nameless.perform_later()


def test_perform_not_defined(broker):
    class Empty(ApplicationJob):
        pass

    with pytest.raises(NotImplementedError, match="Empty must define perform"):
        Empty.perform_now()


def test_async_perform(broker):
    class AsyncJob(ApplicationJob):
        async def perform(self, x):
            return x * 2

    assert AsyncJob.perform_now(21) == 42


def test_ready_and_delayed_jobs_share_one_round_trip(redis_server, broker, settings):
    """dispatch.send pipelines a push and a schedule; it must survive a script cache flush
    (what a Redis restart does), so it runs on a Redis of this test's own."""
    from django_async_jobs import dispatch
    from django_async_jobs.broker.client import get_broker

    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "REDIS_URL": redis_server.url}
    private = get_broker()
    for _ in range(2):
        ready, later = AddJob(1), AddJob(2)
        for job in (ready, later):
            job.queue_name = "low"
        later.scheduled_at = time.time() + 60
        dispatch.send([ready, later])
        assert [p["jid"] for p in queued(private, "low")][-1] == ready.job_id
        assert json.loads(private.redis.zrange(private.keys.schedule, -1, -1)[0])["jid"] == later.job_id
        private.redis.script_flush()
    assert private.queue_size("low") == 2 and private.redis.zcard(private.keys.schedule) == 2


def test_custom_job_name_is_the_payload_name(broker):
    from django_async_jobs import registry

    class Renamed(ApplicationJob):
        job_name = "billing.charge"

        def perform(self):
            pass

    try:
        Renamed.perform_later()
        assert queued(broker, "default")[0]["job"] == "billing.charge"
        assert registry.lookup("billing.charge") is Renamed
    finally:
        registry._jobs.pop("billing.charge", None)


def test_two_classes_with_one_job_name_are_refused(broker):
    from django.core.exceptions import ImproperlyConfigured

    from django_async_jobs import registry

    class First(ApplicationJob):
        job_name = "shared.name"

        def perform(self):
            pass

    try:
        with pytest.raises(ImproperlyConfigured, match="Two job classes are named 'shared.name'"):

            class Second(ApplicationJob):
                job_name = "shared.name"

                def perform(self):
                    pass

        assert registry.lookup("shared.name") is First
    finally:
        registry._jobs.pop("shared.name", None)


def test_proceed_returns_what_the_next_around_perform_returns(broker):
    """job-structure.md: an inner around_perform's value is what proceed() gives the outer one;
    perform_now returns perform's value whatever the callbacks return."""
    seen = []

    class Wrapped(ApplicationJob):
        @around_perform
        def outer(self, proceed):
            seen.append(("outer got", proceed()))
            return "outer's own"

        @around_perform
        def inner(self, proceed):
            seen.append(("inner got", proceed()))
            return "inner's own"

        def perform(self):
            return "performed"

    assert Wrapped.perform_now() == "performed"
    assert seen == [("inner got", "performed"), ("outer got", "inner's own")]
