"""Middleware and jobs for the middleware tests. Every layer writes what it sees to a Redis list
named by the job's first argument, so a test reads the order things happened in, whichever
thread or process ran them."""

import contextvars
import json
import threading

from django.core.exceptions import ImproperlyConfigured

from django_async_jobs import ApplicationJob, before_enqueue, before_perform, retry
from django_async_jobs.broker.client import get_broker

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant", default="public")


def trace(job, text):
    get_broker().redis.rpush(job.arguments[0], text)


class Recorder:
    """Writes ``<name> enqueue|perform in|out`` around the rest of the chain."""

    name = "?"

    def enqueue(self, job, call_next):
        trace(job, f"{self.name} enqueue in")
        result = call_next(job)
        trace(job, f"{self.name} enqueue out")
        return result

    def perform(self, job, call_next):
        trace(job, f"{self.name} perform in")
        result = call_next(job)
        trace(job, f"{self.name} perform out")
        return result


class Outer(Recorder):
    name = "outer"


class Inner(Recorder):
    name = "inner"


class ClassLevel(Recorder):
    name = "class"


class HaltEnqueue:
    def enqueue(self, job, call_next):
        trace(job, "halted enqueue")
        return None


class HaltPerform:
    def perform(self, job, call_next):
        trace(job, "halted perform")
        return None


class Router:
    """Sends every job to the queue named in its ``meta`` (set by the test's enqueue)."""

    def enqueue(self, job, call_next):
        job.queue_name = job.meta.get("route", job.queue_name)
        job.priority = 7
        return call_next(job)


class Stamp:
    """What a tenant middleware does: the tenant at enqueue travels in ``meta``, and is the
    current one around ``perform``."""

    def enqueue(self, job, call_next):
        job.meta["tenant"] = tenant.get()
        return call_next(job)

    def perform(self, job, call_next):
        token = tenant.set(job.meta.get("tenant", "public"))
        try:
            return call_next(job)
        finally:
            tenant.reset(token)


class Boom:
    def enqueue(self, job, call_next):
        raise ValueError("refused by a middleware")

    def perform(self, job, call_next):
        raise ConnectionError("middleware lost its connection")


class Swallow:
    def perform(self, job, call_next):
        try:
            return call_next(job)
        except RuntimeError as exc:
            trace(job, f"swallowed {exc}")
            return "swallowed"


class Where:
    """Records the thread each layer runs on: the event loop's, or a processor's."""

    def perform(self, job, call_next):
        trace(job, f"where perform {threading.current_thread().name}")
        return call_next(job)

    async def aperform(self, job, call_next):
        trace(job, f"where aperform {threading.current_thread().name}")
        return await call_next(job)


class ThreadOnly:
    def perform(self, job, call_next):
        trace(job, f"thread-only {threading.current_thread().name}")
        return call_next(job)


class RefuseAsync:
    def perform(self, job, call_next):
        return call_next(job)

    def check(self, job_class):
        if job_class._is_async:
            raise ImproperlyConfigured(f"{job_class.__qualname__}: RefuseAsync cannot serve async jobs.")


class SeesTransaction:
    """Whether a transaction is open around the rest of the chain (idempotency opens one)."""

    def perform(self, job, call_next):
        from django.db import connection

        trace(job, f"atomic outside {connection.in_atomic_block}")
        return call_next(job)


# -- jobs ------------------------------------------------------------------------------------------


class TracedJob(ApplicationJob):
    middleware = [ClassLevel]

    @before_enqueue
    def log_before_enqueue(self):
        trace(self, "before_enqueue")

    @before_perform
    def log_before_perform(self):
        trace(self, "before_perform")

    def perform(self, key, *values):
        trace(self, "perform")
        return "done"


class HaltedAtEnqueueJob(TracedJob):
    middleware = [HaltEnqueue]


class HaltedAtPerformJob(TracedJob):
    middleware = [HaltPerform]


class RoutedJob(TracedJob):
    middleware = [Router]


class TenantJob(ApplicationJob):
    middleware = ["tests.testapp.middleware_jobs.Stamp"]

    def perform(self, key):
        trace(self, f"tenant {tenant.get()} meta {json.dumps(self.meta, sort_keys=True)}")


class BoomJob(ApplicationJob):
    middleware = [Boom]
    retry_on = [retry(ConnectionError, attempts=2, wait=60)]

    def perform(self, key):
        trace(self, "perform")


class SwallowJob(ApplicationJob):
    middleware = [Swallow]

    def perform(self, key):
        trace(self, "perform")
        raise RuntimeError("boom")


class ContextJob(ApplicationJob):
    def perform(self, key):
        trace(self, f"request_id {request_id.get()}")


class LeakyContextJob(ApplicationJob):
    """Sets the variable itself, without resetting it."""

    def perform(self, key):
        request_id.set("leaked")
        trace(self, f"request_id {request_id.get()}")


class AsyncContextJob(ApplicationJob):
    async def perform(self, key):
        trace(self, f"request_id {request_id.get()}")


class AsyncWhereJob(ApplicationJob):
    middleware = [Where]

    async def perform(self, key):
        trace(self, f"perform {threading.current_thread().name}")


class AsyncThreadOnlyJob(ApplicationJob):
    middleware = [ThreadOnly]

    async def perform(self, key):
        trace(self, f"perform {threading.current_thread().name}")


class MarkedJob(ApplicationJob):
    middleware = [SeesTransaction]

    def idempotency_key(self, key):
        return f"marked:{key}"

    def perform(self, key):
        from django.db import connection

        trace(self, f"atomic inside {connection.in_atomic_block}")

