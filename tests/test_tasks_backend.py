"""The django.tasks backend on real Redis with an in-process worker."""

import asyncio
import json
import sys
import time
from datetime import timedelta

import pytest
from asgiref.sync import async_to_sync
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone

from django_async_jobs import tasks as backend_module
from django_async_jobs.worker.launcher import Worker
from tests.helpers import wait_for
from tests.testapp import tasks as funcs

needs_tasks = pytest.mark.skipif(not backend_module.AVAILABLE, reason="django.tasks needs Django 6.0+")
if backend_module.AVAILABLE:
    from django.tasks import TaskResultStatus, task, task_backends
    from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started

BACKEND = "django_async_jobs.tasks.RedisTaskBackend"


@pytest.fixture
def tasks_setting(settings, prefix):
    settings.TASKS = {"default": {"BACKEND": BACKEND, "QUEUES": []}}


@pytest.fixture
def worker(broker, tasks_setting):
    w = Worker()
    w.start()
    yield w
    w.stop(timeout=2)


@pytest.fixture
def signals_seen():
    seen = []

    def receiver(signal_name):
        def record(sender, task_result, **kwargs):
            seen.append((signal_name, task_result.id, task_result.status))
        return record

    receivers = [(s, receiver(n)) for s, n in
                 ((task_enqueued, "enqueued"), (task_started, "started"), (task_finished, "finished"))]
    for signal, r in receivers:
        signal.connect(r)
    yield seen
    for signal, r in receivers:
        signal.disconnect(r)


def queued(broker, queue):
    return [json.loads(p) for p in broker.redis.zrange(broker.keys.queue(queue), 0, -1)]


@needs_tasks
def test_enqueue_puts_the_task_on_our_queue_with_its_priority(broker, tasks_setting):
    report = task(priority=10, queue_name="notifications")(funcs.add)
    result = report.enqueue(2, 3)
    [payload] = queued(broker, "notifications")
    assert payload["jid"] == result.id
    assert payload["priority"] == 10
    assert payload["args"] == ["tests.testapp.tasks.add", "default", [2, 3], {}]
    assert result.status == TaskResultStatus.READY
    assert report.get_result(result.id).status == TaskResultStatus.READY


@needs_tasks
def test_worker_runs_it_and_the_result_is_kept(broker, tasks_setting, signals_seen):
    add = task(funcs.add)
    # Enqueued before the worker starts: task_enqueued is sent once the push has returned,
    # so with a worker already running, a fast one's task_started could come first.
    result = add.enqueue(2, 3)
    assert signals_seen == [("enqueued", result.id, "READY")]
    worker = Worker()
    worker.start()
    try:
        # task_finished is sent just after the result is saved: wait for the signal itself.
        wait_for(lambda: len(signals_seen) == 3, 30, "the task's started and finished signals")
    finally:
        worker.stop(timeout=2)
    final = add.get_result(result.id)
    assert final.status == TaskResultStatus.SUCCESSFUL
    assert final.return_value == 5
    assert final.attempts == 1 and final.started_at and final.finished_at >= final.started_at
    assert [(name, status) for name, _, status in signals_seen] == [
        ("enqueued", "READY"), ("started", "RUNNING"), ("finished", "SUCCESSFUL"),
    ]
    ttl = broker.redis.ttl(broker.keys.result(result.id))
    assert 86000 < ttl <= 86400


@needs_tasks
def test_async_task_and_aget_result(broker, worker):
    add = task(funcs.async_add)

    async def scenario():
        result = await add.aenqueue(4, 5)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            final = await add.aget_result(result.id)
            if final.is_finished:
                return final
            await asyncio.sleep(0.02)
        raise AssertionError("the async task did not finish within 30s")

    assert async_to_sync(scenario)().return_value == 9


@needs_tasks
def test_run_after_defers(broker, tasks_setting):
    add = task(funcs.add)
    when = timezone.now() + timedelta(minutes=5)
    result = add.using(run_after=when).enqueue(1, 1)
    [(payload, score)] = broker.redis.zrange(broker.keys.schedule, 0, -1, withscores=True)
    assert json.loads(payload)["jid"] == result.id
    assert abs(score - when.timestamp()) < 0.01


@needs_tasks
def test_context_attempt_and_retry_then_success(broker, worker, prefix, signals_seen):
    flaky = task(takes_context=True, max_retries=2)(funcs.attempts)
    key = f"{prefix}:attempts"
    result = flaky.enqueue(key, 1)
    [entry] = wait_for(lambda: broker.redis.zrange(broker.keys.retry, 0, -1))
    between = flaky.get_result(result.id)
    assert between.status == TaskResultStatus.READY  # it will run again
    assert [e.exception_class for e in between.errors] == [funcs.Boom]
    broker.redis.zadd(broker.keys.retry, {entry: 0})  # due now: the poller moves it
    # task_finished is sent just after the result is saved: wait for the signal, not the status.
    wait_for(lambda: ("finished", result.id, "SUCCESSFUL") in signals_seen, 30, "the second attempt finished")
    final = flaky.get_result(result.id)
    assert final.status == TaskResultStatus.SUCCESSFUL
    assert final.return_value == result.id
    assert final.attempts == 2
    assert broker.redis.lrange(key, 0, -1) == [b"1", b"2"]
    assert [name for name, _, _ in signals_seen].count("finished") == 1  # none for the failed attempt


@needs_tasks
def test_a_task_that_runs_out_of_retries_is_failed_and_dead(broker, worker, signals_seen):
    boom = task(max_retries=0)(funcs.boom)
    result = boom.enqueue()
    wait_for(lambda: boom.get_result(result.id).status == TaskResultStatus.FAILED)
    [dead] = wait_for(lambda: broker.redis.hvals(broker.keys.dead))
    assert json.loads(dead)["job_id"] == result.id
    assert "Boom: always" in boom.get_result(result.id).errors[0].traceback
    assert ("finished", result.id, "FAILED") in wait_for(lambda: signals_seen if len(signals_seen) == 3 else None)


@needs_tasks
def test_payload_paths_are_never_imported(broker, worker):
    from django_async_jobs.tasks import TaskJob

    job = TaskJob.perform_later("tests.testapp.never_imported.run", "default", [], {})
    [dead] = wait_for(lambda: broker.redis.hvals(broker.keys.dead))
    dead = json.loads(dead)
    assert dead["job_id"] == job.job_id
    assert dead["error_class"] == "django_async_jobs.tasks.UnknownTask"
    assert "tests.testapp.never_imported" not in sys.modules


def local_function():
    return "not in an installed app"


@needs_tasks
def test_tasks_outside_installed_apps_are_refused(tasks_setting):
    outside = task(local_function)  # tests.test_tasks_backend is not an installed app
    with pytest.raises(backend_module.UnknownTask, match="installed app"):
        backend_module.find_task(outside.module_path)


@needs_tasks
def test_unknown_result(tasks_setting):
    add = task(funcs.add)
    with pytest.raises(TaskResultDoesNotExist):
        add.get_result("nope")


@needs_tasks
def test_invalid_options(tasks_setting):
    with pytest.raises(InvalidTask, match="max_retries"):
        task(max_retries=-1)(funcs.add)


@needs_tasks
def test_check_names_queues_no_worker_reads(settings, tasks_setting):
    settings.TASKS = {"default": {"BACKEND": BACKEND, "QUEUES": ["default", "reports"]}}
    errors = list(task_backends["default"].check())
    assert [e.id for e in errors] == ["async_jobs.E021"]
    assert "'reports'" in errors[0].msg


def test_unavailable_backend_message():
    assert "Django 6.0" in backend_module.UNAVAILABLE
    if not backend_module.AVAILABLE:  # Django < 6.0: the module imports, the backend says why not
        with pytest.raises(ImproperlyConfigured, match="needs django.tasks"):
            backend_module.RedisTaskBackend("default", {})


@needs_tasks
def test_result_ttl_setting_is_checked_and_used(settings, broker, tasks_setting):
    from django_async_jobs.checks import check_settings

    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "RESULT_TTL": 0}
    assert [e.id for e in check_settings() if "RESULT_TTL" in e.msg] == ["async_jobs.E005"]
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "RESULT_TTL": 60}
    result = task(funcs.add).enqueue(1, 2)
    assert 0 < broker.redis.ttl(broker.keys.result(result.id)) <= 60
