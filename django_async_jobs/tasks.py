"""A ``django.tasks`` backend: ``@task`` functions run on this project's Redis queues and workers.

::

    TASKS = {"default": {"BACKEND": "django_async_jobs.tasks.RedisTaskBackend", "QUEUES": []}}

    @task(priority=10, queue_name="notifications", max_retries=3)
    def send_report(report_id): ...

    result = send_report.enqueue(5)
    send_report.get_result(result.id).status

Each enqueue becomes one ``TaskJob`` whose payload names the task by its module path. A worker
never imports that path: it looks it up in a registry of ``Task`` objects this backend has
validated in the process, i.e. the tasks of modules already imported. The first time a path
is unknown, the ``tasks`` module of every installed app is imported (as ``jobs`` modules are at
start-up), and a task is only run if its function lives in an installed app. Keep ``@task``
functions in ``<app>/tasks.py`` (or import them from ``<app>/jobs.py``).

Results and errors live in Redis under ``result:<id>`` for ``RESULT_TTL`` seconds (one day by
default), refreshed at every state change. Failures follow the default retry policy
(``MAX_RETRIES``, Sidekiq's backoff, then a dead job); ``@task(max_retries=N)`` sets it per task.
Between attempts the result is READY again, with the error recorded; it is FAILED once the job
is dead. ``task_finished`` is sent on success and on the final failure.

Requires ``django.tasks`` (Django 6.0+). On older Django this module imports, and the backend
raises ``ImproperlyConfigured`` when it is configured.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.apps import apps
from django.core import checks
from django.core.exceptions import ImproperlyConfigured
from django.utils import timezone
from django.utils.module_loading import autodiscover_modules

from django_async_jobs import ApplicationJob, before_enqueue, signals
from django_async_jobs.broker.client import get_broker
from django_async_jobs.conf import (
    QUEUE_NAME_RULE,
    get_settings,
    valid_queue_name,
    validate_queue_name,
)

try:
    from django.tasks import Task, TaskContext, TaskResult, TaskResultStatus
    from django.tasks.backends.base import BaseTaskBackend
    from django.tasks.base import TaskError
    from django.tasks.exceptions import TaskResultDoesNotExist
    from django.tasks.signals import task_enqueued, task_finished, task_started
    from django.utils.json import normalize_json
except ImportError:  # Django < 6.0
    AVAILABLE = False
else:
    AVAILABLE = True

UNAVAILABLE = (
    "django_async_jobs.tasks.RedisTaskBackend needs django.tasks, which Django 6.0 added "
    "(this is Django {version}). Upgrade Django, or enqueue ApplicationJob classes instead."
)


class UnknownTask(LookupError):
    """A payload names a task no imported module of an installed app defines."""


_tasks: dict[str, Any] = {}
_discovered = threading.Event()
_discover_lock = threading.Lock()


def _register(task: Any) -> None:
    _tasks[task.module_path] = task


def find_task(path: str) -> Any:
    """The registered ``Task`` for ``path``; never imports ``path`` itself."""
    task = _tasks.get(path)
    if task is None and not _discovered.is_set():
        with _discover_lock:
            if not _discovered.is_set():
                autodiscover_modules("tasks")
                _discovered.set()
        task = _tasks.get(path)
    if task is None:
        raise UnknownTask(
            f"no @task named {path!r} is registered in this process; define it in an installed "
            f"app's tasks.py (or import it from its jobs.py)."
        )
    if apps.get_containing_app_config(task.func.__module__) is None:
        raise UnknownTask(f"task {path!r} is not defined in an installed app's module; it is not run.")
    return task


def _now() -> float:
    return round(timezone.now().timestamp(), 3)


def _when(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


# -- the result record in Redis --------------------------------------------------------------------


def _save(record: dict[str, Any]) -> None:
    broker = get_broker()
    ttl = max(1, int(get_settings().result_ttl))
    broker.redis.set(broker.keys.result(record["id"]), json.dumps(record), ex=ttl)


def _load(result_id: str) -> dict[str, Any] | None:
    broker = get_broker()
    raw = broker.redis.get(broker.keys.result(result_id))
    return None if raw is None else json.loads(raw)


def _to_result(record: dict[str, Any], task: Any) -> Any:
    result = TaskResult(
        task=task,
        id=record["id"],
        status=TaskResultStatus(record["status"]),
        enqueued_at=_when(record.get("enqueued_at")),
        started_at=_when(record.get("started_at")),
        finished_at=_when(record.get("finished_at")),
        last_attempted_at=_when(record.get("last_attempted_at")),
        args=record["args"],
        kwargs=record["kwargs"],
        backend=record["backend"],
        errors=[TaskError(**error) for error in record.get("errors", [])],
        worker_ids=list(record.get("worker_ids", [])),
    )
    object.__setattr__(result, "_return_value", record.get("return_value"))
    return result


# -- the job that runs a task -----------------------------------------------------------------------


class TaskJob(ApplicationJob):
    """Runs one ``@task`` call on a worker; its job id is the task result's id."""

    job_name = "django_async_jobs.tasks.TaskJob"

    def perform(self, path: str, backend: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        try:
            task = find_task(path)
        except UnknownTask:
            self.max_retries = 0  # type: ignore[misc]  # no retry makes an unknown task known
            raise
        if getattr(task, "max_retries", None) is not None:
            self.max_retries = task.max_retries  # type: ignore[misc]  # read by the retry policy
        record = _load(self.job_id) or self._fresh_record(path, backend, args, kwargs)
        now = _now()
        record.update(status="RUNNING", last_attempted_at=now, finished_at=None)
        record["started_at"] = record.get("started_at") or now
        record.setdefault("worker_ids", []).append(f"{socket.gethostname()}:{os.getpid()}")
        _save(record)
        result = _to_result(record, task)
        task_started.send(RedisTaskBackend, task_result=result)
        try:
            if task.takes_context:
                value = task.call(TaskContext(task_result=result), *args, **kwargs)
            else:
                value = task.call(*args, **kwargs)
            value = normalize_json(value)
        except Exception as exc:
            record.setdefault("errors", []).append({
                "exception_class_path": f"{type(exc).__module__}.{type(exc).__qualname__}",
                "traceback": "".join(traceback.format_exception(exc)),
            })
            record.update(status="FAILED", finished_at=_now())
            _save(record)  # READY again if the retry policy retries it (see _on_retried)
            raise
        record.update(status="SUCCESSFUL", finished_at=_now(), return_value=value)
        _save(record)
        finished = _to_result(record, task)
        task_finished.send(RedisTaskBackend, task_result=finished)
        return value

    def _fresh_record(self, path: str, backend: str, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
        return {"id": self.job_id, "task": path, "backend": backend, "status": "READY", "args": args,
                "kwargs": kwargs, "enqueued_at": self.enqueued_at, "errors": [], "worker_ids": []}

    @before_enqueue
    def _record_ready(self) -> None:
        # Before the push, so a fast worker's RUNNING is never overwritten by this READY.
        path, backend, args, kwargs = self.arguments
        record = self._fresh_record(path, backend, args, kwargs)
        record["enqueued_at"] = _now()
        _save(record)


def _on_retried(sender: Any, job: Any, **kwargs: Any) -> None:
    record = _load(job.job_id)
    if record is not None:
        record.update(status="READY", finished_at=None)
        _save(record)


def _on_died(sender: Any, job: Any, **kwargs: Any) -> None:
    if job is None:
        return
    record = _load(job.job_id)
    if record is None:
        return
    try:
        task = find_task(record["task"])
    except UnknownTask:
        return
    task_finished.send(RedisTaskBackend, task_result=_to_result(record, task))


signals.job_retried.connect(_on_retried, sender=TaskJob, dispatch_uid="django_async_jobs.tasks.retried")
signals.job_died.connect(_on_died, sender=TaskJob, dispatch_uid="django_async_jobs.tasks.died")


# -- the backend -----------------------------------------------------------------------------------

if AVAILABLE:

    @dataclass(frozen=True, slots=True, kw_only=True)
    class RedisTask(Task):
        """``@task(max_retries=N)``: N retries with the default backoff (0: none; None: the
        ``MAX_RETRIES`` setting)."""

        max_retries: int | None = None

    class RedisTaskBackend(BaseTaskBackend):
        task_class = RedisTask
        supports_defer = True
        supports_async_task = True
        supports_get_result = True
        supports_priority = True

        def validate_task(self, task: Any) -> None:
            from django.tasks.exceptions import InvalidTask

            super().validate_task(task)
            max_retries = getattr(task, "max_retries", None)
            if max_retries is not None and (isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0):
                raise InvalidTask(f"max_retries must be an integer >= 0 or None, got {max_retries!r}.")
            try:
                validate_queue_name(task.queue_name, "queue_name")
            except (TypeError, ValueError) as exc:
                raise InvalidTask(str(exc)) from None
            _register(task)

        def enqueue(self, task: Any, args: Any, kwargs: Any) -> Any:
            self.validate_task(task)
            args, kwargs = list(args), dict(kwargs)
            job = TaskJob(task.module_path, self.alias, args, kwargs)
            job.enqueue(queue=task.queue_name, priority=task.priority, wait_until=task.run_after)
            result = _to_result(
                {"id": job.job_id, "status": "READY", "args": args, "kwargs": kwargs,
                 "backend": self.alias, "enqueued_at": job.enqueued_at or _now()},
                task,
            )
            task_enqueued.send(type(self), task_result=result)
            return result

        def get_result(self, result_id: str) -> Any:
            record = _load(result_id)
            if record is None:
                raise TaskResultDoesNotExist(result_id)
            try:
                task = find_task(record["task"])
            except UnknownTask as exc:
                raise TaskResultDoesNotExist(f"{result_id}: {exc}") from exc
            return _to_result(record, task)

        def check(self, **kwargs: Any) -> Any:
            """Every queue this backend accepts must be one a worker reads."""
            yield from super().check(**kwargs)
            invalid = {name for name in self.queues if not valid_queue_name(name)}
            for name in sorted(invalid, key=repr):
                yield checks.Error(
                    f"TASKS[{self.alias!r}] accepts queue {name!r}, which is not a valid queue name.",
                    hint=f"Use {QUEUE_NAME_RULE}.",
                    id="async_jobs.E022",
                )
            read = set(get_settings().queues.names)
            for name in sorted(self.queues - read - invalid):
                yield checks.Error(
                    f"TASKS[{self.alias!r}] accepts queue {name!r}, which no worker reads.",
                    hint=f"Add {name!r} to ASYNC_JOBS['QUEUES'] (now {sorted(read)}) or remove it from QUEUES.",
                    id="async_jobs.E021",
                )

else:

    class RedisTaskBackend:  # type: ignore[no-redef]
        """Stands in on Django < 6.0, so the failure names the fix."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            import django

            raise ImproperlyConfigured(UNAVAILABLE.format(version=django.get_version()))
