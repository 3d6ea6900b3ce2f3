"""before/around/after callbacks for enqueue and perform, as in ActiveJob.

Callbacks are methods marked with a decorator; a subclass inherits its parents' callbacks and
adds its own after them. A ``before_*`` callback that returns ``False``, or an ``around_*``
callback that does not call ``proceed()``, halts: the job is not enqueued (``perform_later``
returns a falsy job) or not performed.

They run as the innermost layer of both middleware chains (``Callbacks``), for the classes that
declare any.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from asgiref.sync import sync_to_async

F = TypeVar("F", bound=Callable[..., Any])
KINDS = ("before_enqueue", "around_enqueue", "after_enqueue", "before_perform", "around_perform", "after_perform")
ATTR = "_async_jobs_callback"

HALTED = object()


def _marker(kind: str) -> Callable[[F], F]:
    def decorate(method: F) -> F:
        setattr(method, ATTR, kind)
        return method

    decorate.__name__ = kind
    decorate.__doc__ = f"Mark a job method as a ``{kind}`` callback."
    return decorate


before_enqueue = _marker("before_enqueue")
around_enqueue = _marker("around_enqueue")
after_enqueue = _marker("after_enqueue")
before_perform = _marker("before_perform")
around_perform = _marker("around_perform")
after_perform = _marker("after_perform")


def collect(cls: type) -> dict[str, tuple[str, ...]]:
    """Callback method names per kind for ``cls``: inherited first, then its own. Each stage
    (``enqueue``, ``perform``) also lists all of its kinds' names, so a job without callbacks
    for it skips the stage's machinery."""
    found: dict[str, list[str]] = {kind: [] for kind in KINDS}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            kind = getattr(value, ATTR, None)
            if kind and name not in found[kind]:
                found[kind].append(name)
    names = {kind: tuple(names) for kind, names in found.items()}
    for stage in ("enqueue", "perform"):
        names[stage] = tuple(n for kind in KINDS if kind.endswith(f"_{stage}") for n in names[kind])
    return names


def run(job: Any, stage: str, body: Callable[[], Any]) -> Any:
    """Run ``body`` inside ``job``'s callbacks for ``stage``; ``HALTED`` if one stopped it."""
    names = job._callbacks
    if not names[stage]:
        return body()
    for name in names[f"before_{stage}"]:
        if getattr(job, name)() is False:
            return HALTED
    arounds = names[f"around_{stage}"]
    if arounds:
        outcome: list[Any] = []

        def innermost() -> Any:
            outcome.append(body())
            return outcome[0]

        call = innermost
        for name in reversed(arounds):
            call = _wrap(getattr(job, name), call)
        call()
        if not outcome:
            return HALTED
        result = outcome[0]
    else:
        result = body()
    for name in names[f"after_{stage}"]:
        getattr(job, name)()
    return result


def _wrap(callback: Callable[[Callable[[], Any]], Any], proceed: Callable[[], Any]) -> Callable[[], Any]:
    return lambda: callback(proceed)


class Callbacks:
    """The callbacks of one stage (``"enqueue"`` or ``"perform"``) as the innermost middleware of
    that stage's chain, for the classes that declare any."""

    def __init__(self, stage: str) -> None:
        self.stage = stage

    def applies_to(self, job_class: type) -> bool:
        return bool(job_class._callbacks[self.stage])

    def enqueue(self, job: Any, call_next: Callable[[Any], Any]) -> Any:
        result = run(job, "enqueue", lambda: call_next(job))
        return None if result is HALTED else result

    def perform(self, job: Any, call_next: Callable[[Any], Any]) -> Any:
        result = run(job, "perform", lambda: call_next(job))
        return None if result is HALTED else result

    def runs_async(self, job_class: type) -> bool:
        """``around_perform`` blocks until the job ends: such a job needs a thread."""
        return not job_class._callbacks["around_perform"]

    async def aperform(self, job: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        # before/after callbacks are synchronous code: the loop's thread pool runs them.
        names = job._callbacks
        for name in names["before_perform"]:
            if await sync_to_async(getattr(job, name), thread_sensitive=False)() is False:
                return None
        result = await call_next(job)
        for name in names["after_perform"]:
            await sync_to_async(getattr(job, name), thread_sensitive=False)()
        return result
