"""Which middleware a job class runs through, and the chains built from them.

A chain is built once per job class (and again after ``ASYNC_JOBS`` changes): a layer that
does nothing for a class (``applies_to`` says so, or it has no method for that chain) is left
out, so a plain job pays for no feature it does not use. Calling a chain is one function call
per layer that applies.

Order, outermost first (``docs/middleware.md``):

* enqueue: ``ASYNC_JOBS["MIDDLEWARE"]``, the class's ``middleware``, then the built-ins
  ``BUILTIN_ENQUEUE`` (the producer span, batch membership, unique locks, callbacks, flow
  control); then the push;
* perform: ``ASYNC_JOBS["MIDDLEWARE"]``, the class's ``middleware``, then ``BUILTIN_PERFORM``
  (idempotency markers, callbacks); then ``perform``. The worker wraps this chain in its own
  layers (the log line, database connections, signals, the retry rules, run locks).
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

from asgiref.sync import async_to_sync
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from django_async_jobs import flow, tracing
from django_async_jobs.batches import BatchMembership
from django_async_jobs.callbacks import Callbacks
from django_async_jobs.conf import get_settings
from django_async_jobs.idempotency import Idempotency
from django_async_jobs.locks import UniqueJobs

Call = Callable[[Any], Any]
ACall = Callable[[Any], Awaitable[Any]]

# The built-in layers every class is checked against, innermost last.
BUILTIN_ENQUEUE: tuple[Any, ...] = (
    tracing.Tracing(), BatchMembership(), UniqueJobs(), Callbacks("enqueue"), flow.Expiry(), flow.ConcurrencyLimits(),
)
BUILTIN_PERFORM: tuple[Any, ...] = (Idempotency(), Callbacks("perform"))

def load(entry: Any, where: str) -> Any:
    """A middleware instance from a dotted path, a class or an instance, checked for shape."""
    if isinstance(entry, str):
        try:
            entry = import_string(entry)
        except ImportError as exc:
            raise ImproperlyConfigured(f"{where}: cannot import {entry!r}: {exc}") from exc
    if isinstance(entry, type):
        entry = entry()
    if not any(callable(getattr(entry, name, None)) for name in ("enqueue", "perform")):
        raise ImproperlyConfigured(
            f"{where}: {entry!r} is not a job middleware; define enqueue(self, job, call_next) "
            f"and/or perform(self, job, call_next)."
        )
    if getattr(entry, "aperform", None) is not None and getattr(entry, "perform", None) is None:
        raise ImproperlyConfigured(
            f"{where}: {entry!r} defines aperform() without perform(); perform() serves every job "
            f"on a thread, aperform() only adds the event loop."
        )
    return entry


_lock = threading.Lock()
_settings_middleware: tuple[Any, ...] | None = None
_class_middleware: dict[type, tuple[Any, ...]] = {}
_enqueue: dict[type, Call] = {}
_perform: dict[type, tuple[tuple[Any, ...], Call]] = {}


def settings_middleware() -> tuple[Any, ...]:
    """``ASYNC_JOBS["MIDDLEWARE"]``, loaded once per settings."""
    global _settings_middleware
    if _settings_middleware is None:
        paths = get_settings().raw["MIDDLEWARE"]
        if isinstance(paths, str) or not isinstance(paths, (list, tuple)):
            raise ImproperlyConfigured("ASYNC_JOBS['MIDDLEWARE'] must be a list of dotted paths.")
        _settings_middleware = tuple(load(path, f"ASYNC_JOBS['MIDDLEWARE'][{i}]") for i, path in enumerate(paths))
    return _settings_middleware


def class_middleware(job_class: type) -> tuple[Any, ...]:
    """The job class's own ``middleware`` (inherited like any class attribute), loaded once."""
    found = _class_middleware.get(job_class)
    if found is None:
        entries = getattr(job_class, "middleware", ()) or ()
        if isinstance(entries, str) or not isinstance(entries, (list, tuple)):
            raise ImproperlyConfigured(f"{job_class.__qualname__}.middleware must be a list of middleware.")
        found = _class_middleware[job_class] = tuple(
            load(entry, f"{job_class.__qualname__}.middleware[{i}]") for i, entry in enumerate(entries)
        )
    return found


def check_class(job_class: type, middleware: Iterable[Any]) -> None:
    """Let each layer refuse a class it cannot serve (e.g. idempotency markers on an async job)."""
    for layer in middleware:
        check = getattr(layer, "check", None)
        if check is not None:
            check(job_class)


def _applying(job_class: type, layers: Iterable[Any], method: str) -> list[Any]:
    out = []
    for layer in layers:
        if getattr(layer, method, None) is None:
            continue
        applies = getattr(layer, "applies_to", None)
        if applies is None or applies(job_class):
            out.append(layer)
    return out


def layers(job_class: type, method: str) -> list[Any]:
    """The layers of ``job_class``'s ``enqueue`` or ``perform`` chain, outermost first."""
    user = (*settings_middleware(), *class_middleware(job_class))
    builtin = BUILTIN_ENQUEUE if method == "enqueue" else BUILTIN_PERFORM
    check_class(job_class, user)
    return _applying(job_class, (*user, *builtin), method)


def compose(methods: Sequence[Callable[[Any, Call], Any]], innermost: Call) -> Call:
    """``methods[0](job, call_next)`` calling the next one, the last calling ``innermost``."""
    call = innermost
    for method in reversed(methods):
        call = _link(method, call)
    return call


def _link(method: Callable[[Any, Call], Any], call_next: Call) -> Call:
    def call(job: Any) -> Any:
        return method(job, call_next)

    return call


def acompose(methods: Sequence[Callable[[Any, ACall], Awaitable[Any]]], innermost: ACall) -> ACall:
    """``compose`` for ``aperform`` methods, on an event loop."""
    call = innermost
    for method in reversed(methods):
        call = _alink(method, call)
    return call


def _alink(method: Callable[[Any, ACall], Awaitable[Any]], call_next: ACall) -> ACall:
    async def call(job: Any) -> Any:
        return await method(job, call_next)

    return call


def runs_async(layer: Any, job_class: type) -> bool:
    """Whether ``layer`` can serve ``job_class`` on the event loop (an ``aperform`` that it
    does not decline for this class)."""
    if getattr(layer, "aperform", None) is None:
        return False
    accepts = getattr(layer, "runs_async", None)
    return accepts is None or accepts(job_class)


# -- the two chains --------------------------------------------------------------------------------


def enqueue_chain(job_class: type, push: Call) -> Call:
    """``job_class``'s enqueue chain around ``push`` (the delivery of one job)."""
    chain = _enqueue.get(job_class)
    if chain is None:
        with _lock:
            chain = _enqueue[job_class] = compose([m.enqueue for m in layers(job_class, "enqueue")], push)
    return chain


def perform_layers(job_class: type) -> tuple[Any, ...]:
    """The layers of ``job_class``'s perform chain (the part ``perform_now`` runs too)."""
    return _perform_entry(job_class)[0]


def perform_chain(job_class: type) -> Call:
    """``job_class``'s perform chain around ``perform`` (an async ``perform`` run to completion
    in this thread): what ``job.perform_now()`` runs."""
    return _perform_entry(job_class)[1]


def _perform_entry(job_class: type) -> tuple[tuple[Any, ...], Call]:
    entry = _perform.get(job_class)
    if entry is None:
        with _lock:
            found = tuple(layers(job_class, "perform"))
            entry = _perform[job_class] = (found, compose([m.perform for m in found], call_perform))
    return entry


def call_perform(job: Any) -> Any:
    """The innermost step of a thread's perform chain: ``perform`` with the job's arguments."""
    if job._is_async:
        return async_to_sync(job.perform)(*job.arguments, **job.kwargs)
    return job.perform(*job.arguments, **job.kwargs)


async def acall_perform(job: Any) -> Any:
    """The innermost step on the event loop: ``await perform(...)``."""
    return await job.perform(*job.arguments, **job.kwargs)


def reset(**kwargs: Any) -> None:
    """Forget every chain (the settings changed, e.g. in a test)."""
    global _settings_middleware
    if kwargs.get("setting", "ASYNC_JOBS") != "ASYNC_JOBS":
        return
    with _lock:
        _settings_middleware = None
        _class_middleware.clear()
        _enqueue.clear()
        _perform.clear()


setting_changed.connect(reset, dispatch_uid="django_async_jobs.middleware.chain")
