"""before/around/after callbacks for enqueue and perform, as in ActiveJob.

Callbacks are methods marked with a decorator; a subclass inherits its parents' callbacks and
adds its own after them. A ``before_*`` callback that returns ``False``, or an ``around_*``
callback that does not call ``proceed()``, halts: the job is not enqueued (``perform_later``
returns a falsy job) or not performed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

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
