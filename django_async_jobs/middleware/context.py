"""Request context carried into jobs: Rails' and Sidekiq's ``CurrentAttributes``, for contextvars.

``ASYNC_JOBS["CONTEXT"]`` names ``contextvars.ContextVar`` objects by dotted path. At enqueue,
the value each has in the enqueuing code (a request id, a tenant, the acting user's id) is
copied into the payload's ``context``, as strict JSON like the arguments. Around ``perform``
each is set to that value and reset afterwards, so nothing leaks into the next job run on the
same thread or event loop. A variable without a value at enqueue is left out, and keeps
whatever value the worker gives it.

Only variables the settings name are ever set: a payload cannot reach any other.
"""

from __future__ import annotations

import contextvars
from collections.abc import Awaitable, Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

from django_async_jobs.conf import get_settings
from django_async_jobs.serialization import dump_value

_MISSING = object()
_variables: dict[str, contextvars.ContextVar[Any]] | None = None


def variables() -> dict[str, contextvars.ContextVar[Any]]:
    """``ASYNC_JOBS["CONTEXT"]``: dotted path -> the ``ContextVar`` it names, imported once."""
    global _variables
    if _variables is None:
        paths = get_settings().raw["CONTEXT"]
        if isinstance(paths, str) or not isinstance(paths, (list, tuple)):
            raise ImproperlyConfigured("ASYNC_JOBS['CONTEXT'] must be a list of dotted paths to ContextVars.")
        found = {}
        for path in paths:
            try:
                var = import_string(path)
            except ImportError as exc:
                raise ImproperlyConfigured(f"ASYNC_JOBS['CONTEXT']: cannot import {path!r}: {exc}") from exc
            if not isinstance(var, contextvars.ContextVar):
                raise ImproperlyConfigured(
                    f"ASYNC_JOBS['CONTEXT']: {path!r} is a {type(var).__name__}, not a contextvars.ContextVar."
                )
            found[path] = var
        _variables = found
    return _variables


def _reset(*, setting: str, **kwargs: Any) -> None:
    global _variables
    if setting == "ASYNC_JOBS":
        _variables = None


setting_changed.connect(_reset, dispatch_uid="django_async_jobs.middleware.context")


class CurrentContext:
    """Copies the ``CONTEXT`` variables into each job at enqueue and sets them around ``perform``.

    In ``MIDDLEWARE`` by default; it applies to no job while ``CONTEXT`` is empty, so it costs
    nothing until variables are named.
    """

    def applies_to(self, job_class: type) -> bool:
        return bool(variables())

    def enqueue(self, job: Any, call_next: Callable[[Any], Any]) -> Any:
        tagged = job._uses_tagged()
        values = {}
        for path, var in variables().items():
            value = var.get(_MISSING)
            if value is not _MISSING:
                values[path] = dump_value(value, tagged, f"context {path!r}")
        job.context = values
        return call_next(job)

    def _enter(self, job: Any) -> list[tuple[contextvars.ContextVar[Any], contextvars.Token[Any]]]:
        known = variables()
        tokens = []
        for path, value in job.context.items():
            var = known.get(path)
            if var is not None:  # named by this process's settings; anything else is ignored
                tokens.append((var, var.set(value)))
        return tokens

    @staticmethod
    def _exit(tokens: list[tuple[contextvars.ContextVar[Any], contextvars.Token[Any]]]) -> None:
        for var, token in reversed(tokens):
            var.reset(token)

    def perform(self, job: Any, call_next: Callable[[Any], Any]) -> Any:
        tokens = self._enter(job)
        try:
            return call_next(job)
        finally:
            self._exit(tokens)

    async def aperform(self, job: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        tokens = self._enter(job)
        try:
            return await call_next(job)
        finally:
            self._exit(tokens)
