"""The two middleware chains (docs/middleware.md): their order, halting, options and metadata,
exceptions, async jobs, the built-ins' places, and request context carried into jobs."""

import json
import time

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.http import HttpResponse
from django.test import override_settings
from django.urls import path

from django_async_jobs import ApplicationJob, SerializationError, signals
from django_async_jobs.checks import check_middleware
from django_async_jobs.cron import Entry, enqueue_tick
from django_async_jobs.worker.launcher import Worker
from tests.helpers import wait_for
from tests.testapp import middleware_jobs as m

OUTER = "tests.testapp.middleware_jobs.Outer"
INNER = "tests.testapp.middleware_jobs.Inner"
CONTEXT = ["tests.testapp.middleware_jobs.request_id"]


@pytest.fixture
def key(prefix):
    return f"{prefix}:trace"


@pytest.fixture
def chain_settings(settings):
    """MIDDLEWARE = [Outer, Inner]: two layers of the project around each class's own."""
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "MIDDLEWARE": [OUTER, INNER]}
    return settings


def traced(broker, key):
    return [item.decode() for item in broker.redis.lrange(key, 0, -1)]


def queued(broker, queue="default"):
    return [json.loads(p) for p in broker.redis.zrange(broker.keys.queue(queue), 0, -1)]


# -- order -------------------------------------------------------------------------------------------


def test_enqueue_order_settings_then_class_then_callbacks_then_push(broker, key, chain_settings):
    job = m.TracedJob.perform_later(key)
    assert job and queued(broker)[0]["jid"] == job.job_id
    assert traced(broker, key) == [
        "outer enqueue in", "inner enqueue in", "class enqueue in", "before_enqueue",
        "class enqueue out", "inner enqueue out", "outer enqueue out",
    ]


def test_perform_order_in_the_worker(broker, key, chain_settings, worker):
    m.TracedJob.perform_later(key)
    wait_for(lambda: "outer perform out" in traced(broker, key), 20, "the job")
    # The worker may start the job before the enqueue chain has written its last lines.
    assert [line for line in traced(broker, key) if "enqueue" not in line] == [
        "outer perform in", "inner perform in", "class perform in", "before_perform", "perform",
        "class perform out", "inner perform out", "outer perform out",
    ]


def test_perform_now_runs_the_perform_chain_too(broker, key, chain_settings):
    assert m.TracedJob.perform_now(key) == "done"
    assert traced(broker, key) == [
        "outer perform in", "inner perform in", "class perform in", "before_perform", "perform",
        "class perform out", "inner perform out", "outer perform out",
    ]


def test_a_middleware_listed_once_runs_once_per_chain(broker, key, settings):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "MIDDLEWARE": [OUTER]}
    m.TracedJob.perform_now(key)
    assert traced(broker, key).count("outer perform in") == 1


# -- halting ---------------------------------------------------------------------------------------


def test_an_enqueue_middleware_that_does_not_call_next_halts(broker, key, chain_settings):
    seen = []
    signals.job_enqueued.connect(receiver := lambda sender, job, **kw: seen.append(job), weak=False)
    try:
        job = m.HaltedAtEnqueueJob.perform_later(key)
    finally:
        signals.job_enqueued.disconnect(receiver)
    assert not job and job.successfully_enqueued is False
    assert queued(broker) == [] and seen == []
    # Layers outside it saw the enqueue come back; the callbacks inside it never ran.
    assert traced(broker, key) == [
        "outer enqueue in", "inner enqueue in", "halted enqueue", "inner enqueue out", "outer enqueue out",
    ]


def test_a_perform_middleware_that_does_not_call_next_skips_the_job(broker, key, chain_settings, worker):
    m.HaltedAtPerformJob.perform_later(key)
    wait_for(lambda: "outer perform out" in traced(broker, key), 20, "the job")
    assert "perform" not in traced(broker, key) and "before_perform" not in traced(broker, key)
    wait_for(lambda: broker.inflight(worker.process_id) == {}, 10, "settled")
    assert broker.redis.zcard(broker.keys.retry) == 0 and broker.stat("failed") == 0
    assert broker.stat("processed") == 1


def test_a_halting_middleware_drops_a_job_from_a_bulk(broker, key):
    jobs = [m.TracedJob(key, 1), m.HaltedAtEnqueueJob(key, 2), m.TracedJob(key, 3)]
    assert ApplicationJob.perform_all_later(jobs) == 2
    assert [j["jid"] for j in queued(broker)] == [jobs[0].job_id, jobs[2].job_id]
    assert [bool(job) for job in jobs] == [True, False, True]


# -- options and metadata --------------------------------------------------------------------------


def test_a_middleware_changes_the_queue_and_priority(broker, key):
    job = m.RoutedJob(key)
    job.meta["route"] = "low"
    job.enqueue()
    [payload] = queued(broker, "low")
    assert (payload["jid"], payload["priority"]) == (job.job_id, 7)


def test_a_queue_a_middleware_sets_follows_the_queue_name_rule(broker, key):
    job = m.RoutedJob(key)
    job.meta["route"] = "tenant/1"
    with pytest.raises(ValueError, match="the queue a middleware set"):
        job.enqueue()
    assert queued(broker, "default") == []


def test_meta_travels_in_the_payload_and_back(broker, key):
    token = m.tenant.set("acme")
    try:
        assert m.TenantJob.perform_later(key)
    finally:
        m.tenant.reset(token)
    assert queued(broker)[0]["meta"] == {"tenant": "acme"}
    worker = Worker()
    worker.start()
    try:
        assert wait_for(lambda: traced(broker, key), 20, "the job") == ['tenant acme meta {"tenant": "acme"}']
    finally:
        worker.stop(timeout=5)


def test_meta_is_strict_json_like_arguments(broker, key):
    job = m.TracedJob(key)
    job.meta["when"] = object()
    with pytest.raises(SerializationError, match="job.meta"):
        job.enqueue()


def test_a_payload_whose_meta_is_not_an_object_is_dead(broker, worker):
    broker.redis.zadd(broker.keys.queue("default"), {json.dumps(
        {"jid": "bad-meta", "job": m.ContextJob.job_name, "queue": "default", "args": ["k"], "meta": [1]}
    ): 0})
    broker.redis.publish(broker.keys.notify, "ready")
    wait_for(lambda: broker.redis.hlen(broker.keys.dead), 20, "the job set aside")
    [record] = [json.loads(r) for r in broker.redis.hvals(broker.keys.dead)]
    assert record["reason"] == "arguments_mismatch" and "meta" in record["error_message"]


# -- exceptions --------------------------------------------------------------------------------------


def test_an_enqueue_middleware_exception_reaches_the_caller(broker, key):
    with pytest.raises(ValueError, match="refused by a middleware"):
        m.BoomJob.perform_later(key)
    assert queued(broker) == []


def test_a_perform_middleware_exception_is_the_jobs_and_its_rules_apply(broker, key, worker):
    job = m.BoomJob(key)
    job.queue_name = "default"
    from django_async_jobs import dispatch

    dispatch.send([job])  # past the enqueue chain, whose Boom refuses every job
    [member] = wait_for(lambda: broker.redis.zrange(broker.keys.retry, 0, -1), 20, "the retry")
    retried = json.loads(member)
    assert retried["error_class"] == "ConnectionError" and retried["retries"]
    assert traced(broker, key) == []  # perform never ran


def test_a_middleware_may_catch_the_jobs_exception(broker, key, worker):
    m.SwallowJob.perform_later(key)
    wait_for(lambda: traced(broker, key) == ["perform", "swallowed boom"], 20, "the job")
    wait_for(lambda: broker.inflight(worker.process_id) == {}, 10, "settled")
    assert broker.redis.zcard(broker.keys.retry) == 0 and broker.stat("failed") == 0


# -- the built-ins' places ---------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_idempotency_markers_are_inside_the_users_middleware(broker, key):
    m.MarkedJob.perform_now(key)
    assert traced(broker, key) == ["atomic outside False", "atomic inside True"]


def test_callbacks_are_the_innermost_layer(broker, key, chain_settings):
    m.TracedJob.perform_now(key)
    trace = traced(broker, key)
    assert trace.index("class perform in") < trace.index("before_perform") < trace.index("perform")


def test_retry_job_recurring_ticks_and_bulk_go_through_the_chain(broker, key, chain_settings):
    job = m.TracedJob(key)
    job.enqueue()
    job.retry_job(wait=60)
    assert traced(broker, key).count("outer enqueue in") == 2
    m.TracedJob.perform_bulk([(key, 1), (key, 2)])
    assert traced(broker, key).count("outer enqueue in") == 4
    entry = Entry(name="traced", cron="* * * * *", job=m.TracedJob.job_name, args=(key,))
    assert enqueue_tick(entry, time.time(), broker)
    assert traced(broker, key).count("outer enqueue in") == 5


@pytest.mark.django_db(transaction=True)
def test_the_enqueue_chain_runs_at_the_call_and_the_push_waits_for_the_commit(broker, key, chain_settings):
    with transaction.atomic():
        job = m.TracedJob.perform_later(key)
        assert "outer enqueue out" in traced(broker, key)
        assert queued(broker) == [] and job.successfully_enqueued is None
    assert [p["jid"] for p in queued(broker)] == [job.job_id]


# -- async jobs --------------------------------------------------------------------------------------


def test_an_async_job_whose_layers_have_aperform_stays_on_the_event_loop(broker, key, one_thread_worker):
    m.AsyncWhereJob.perform_later(key)
    trace = wait_for(lambda: len(traced(broker, key)) == 2 and traced(broker, key), 20, "the job")
    assert trace == ["where aperform async-jobs-event-loop", "perform async-jobs-event-loop"]


def test_an_async_job_with_a_thread_only_middleware_runs_on_a_processor_thread(broker, key, one_thread_worker):
    m.AsyncThreadOnlyJob.perform_later(key)
    trace = wait_for(lambda: len(traced(broker, key)) == 2 and traced(broker, key), 20, "the job")
    assert trace[0] == "thread-only async-jobs-processor-0"
    assert trace[1].startswith("perform ") and "event-loop" not in trace[1]


def test_a_class_middleware_that_cannot_serve_the_class_is_refused_at_definition():
    with pytest.raises(ImproperlyConfigured, match="RefuseAsync cannot serve async jobs"):
        class Refused(ApplicationJob):  # noqa: F841
            middleware = [m.RefuseAsync]

            async def perform(self):
                pass


def test_a_project_middleware_that_cannot_serve_a_class_fails_the_system_check(settings):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "MIDDLEWARE": ["tests.testapp.middleware_jobs.RefuseAsync"]}
    errors = check_middleware()
    assert {e.id for e in errors} == {"async_jobs.E032"}
    assert any(e.obj is m.AsyncWhereJob for e in errors)


@pytest.mark.parametrize("setting,value,code", [
    ("MIDDLEWARE", ["tests.testapp.nowhere.Missing"], "async_jobs.E030"),
    ("MIDDLEWARE", ["tests.testapp.middleware_jobs.TracedJob.perform"], "async_jobs.E030"),
    ("MIDDLEWARE", "tests.testapp.middleware_jobs.Outer", "async_jobs.E030"),
    ("CONTEXT", ["tests.testapp.middleware_jobs.trace"], "async_jobs.E031"),
    ("CONTEXT", ["tests.testapp.nowhere.var"], "async_jobs.E031"),
])
def test_bad_middleware_and_context_settings_fail_the_system_check(settings, setting, value, code):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, setting: value}
    assert [e.id for e in check_middleware()] == [code]


def test_the_default_settings_pass_the_check():
    assert check_middleware() == []


# -- context carried into jobs -----------------------------------------------------------------------


def enqueue_view(request):
    """What a view does in a project whose request middleware sets the request id."""
    token = m.request_id.set(request.headers["X-Request-Id"])
    try:
        job = m.ContextJob.perform_later(request.GET["key"])
    finally:
        m.request_id.reset(token)
    return HttpResponse(job.job_id)


urlpatterns = [path("enqueue/", enqueue_view)]


@pytest.fixture
def carried(settings):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "CONTEXT": CONTEXT}
    return settings


@override_settings(ROOT_URLCONF=__name__)
def test_a_value_set_in_a_view_reaches_the_job(client, broker, key, carried):
    response = client.get("/enqueue/", {"key": key}, headers={"X-Request-Id": "req-42"})
    assert response.status_code == 200
    assert queued(broker)[0]["context"] == {CONTEXT[0]: "req-42"}
    assert m.request_id.get() is None  # the view's value did not stay in the test's context
    worker = Worker()
    worker.start()
    try:
        assert wait_for(lambda: traced(broker, key), 20, "the job") == ["request_id req-42"]
    finally:
        worker.stop(timeout=5)


def test_two_jobs_on_one_thread_never_see_each_others_values(broker, key, carried, one_thread_worker):
    token = m.request_id.set("first")
    try:
        m.LeakyContextJob.perform_later(key)  # sets the variable itself, too
    finally:
        m.request_id.reset(token)
    m.ContextJob.perform_later(key)  # enqueued with no value
    token = m.request_id.set("third")
    try:
        m.ContextJob.perform_later(key)
    finally:
        m.request_id.reset(token)
    trace = wait_for(lambda: len(traced(broker, key)) == 3 and traced(broker, key), 20, "the jobs")
    assert trace == ["request_id leaked", "request_id None", "request_id third"]


def test_async_jobs_on_the_event_loop_get_their_context_and_leak_none(broker, key, carried, one_thread_worker):
    token = m.request_id.set("loop")
    try:
        m.AsyncContextJob.perform_later(key)
    finally:
        m.request_id.reset(token)
    m.AsyncContextJob.perform_later(key)
    trace = wait_for(lambda: len(traced(broker, key)) == 2 and traced(broker, key), 20, "the jobs")
    assert sorted(trace) == ["request_id None", "request_id loop"]


def test_context_values_are_strict_json(broker, key, carried):
    token = m.request_id.set(object())
    try:
        with pytest.raises(SerializationError, match="context"):
            m.ContextJob.perform_later(key)
    finally:
        m.request_id.reset(token)


def test_a_payload_cannot_set_a_variable_the_settings_do_not_name(broker, key, carried, worker):
    broker.redis.zadd(broker.keys.queue("default"), {json.dumps({
        "jid": "ctx1", "job": m.ContextJob.job_name, "queue": "default", "args": [key],
        "context": {"tests.testapp.middleware_jobs.tenant": "intruder"},
    }): 0})
    broker.redis.publish(broker.keys.notify, "ready")
    assert wait_for(lambda: traced(broker, key), 20, "the job") == ["request_id None"]
    assert m.tenant.get() == "public"


def test_without_context_settings_nothing_is_carried(broker, key):
    token = m.request_id.set("unused")
    try:
        m.ContextJob.perform_later(key)
    finally:
        m.request_id.reset(token)
    assert "context" not in queued(broker)[0]


def test_the_signals_layer_is_left_out_until_a_receiver_connects(broker, key):
    """``job_started``/``job_succeeded`` go to every job: while nobody listens the worker's
    chains leave their layer out, and a receiver connected after a chain was built (or gone)
    is seen by the next job."""
    from django_async_jobs.worker import processor
    from tests.testapp.jobs import IncrJob

    def run(jid: str) -> None:
        job = IncrJob.deserialize({"jid": jid, "job": IncrJob.job_name, "queue": "default", "args": [key], "enqueued_at": 1.0})
        processor.worker_chain(IncrJob).run(job)

    assert not processor.JobSignals().applies_to(IncrJob)
    run("s0")  # the chain is built without the layer
    seen: list[str] = []
    receiver = lambda sender, job, **kw: seen.append(job.job_id)  # noqa: E731
    signals.job_started.connect(receiver, weak=False)
    try:
        assert processor.JobSignals().applies_to(IncrJob)
        run("s1")
    finally:
        signals.job_started.disconnect(receiver)
    run("s2")
    assert seen == ["s1"]
