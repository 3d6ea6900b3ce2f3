"""Job middleware: one enqueue chain and one perform chain that every feature plugs into.

A middleware is a class with either or both of these methods, like a Django middleware::

    class TenantMiddleware:
        def enqueue(self, job, call_next):     # in the process that calls perform_later
            job.meta["tenant"] = current_tenant()
            return call_next(job)

        def perform(self, job, call_next):     # in the worker, around perform
            with tenant(job.meta.get("tenant")):
                return call_next(job)

Optional: ``async def aperform(self, job, call_next)`` lets ``async def perform`` jobs stay on
the worker's event loop; ``applies_to(job_class)`` returning False leaves the layer out of that
class's chains (it then costs nothing); ``check(job_class)`` raises ``ImproperlyConfigured``
for a class the middleware cannot serve. See ``docs/middleware.md`` for the order of the
chains and what halting or raising means in each.
"""

from django_async_jobs.middleware.context import CurrentContext

__all__ = ["CurrentContext"]
