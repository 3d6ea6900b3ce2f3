"""Job name -> class. The worker runs only classes registered here.

A payload names its job; that name is looked up, never imported: a payload written by someone
with Redis access must not be able to make a worker import an arbitrary module.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.core.exceptions import ImproperlyConfigured

if TYPE_CHECKING:
    from django_async_jobs.job import ApplicationJob

_jobs: dict[str, type[ApplicationJob]] = {}


def job_name(cls: type) -> str:
    return cls.__dict__.get("job_name") or f"{cls.__module__}.{cls.__qualname__}"


def register(cls: type[ApplicationJob]) -> str:
    name = job_name(cls)
    existing = _jobs.get(name)
    if existing is not None and existing is not cls and (
        f"{existing.__module__}.{existing.__qualname__}" != f"{cls.__module__}.{cls.__qualname__}"
    ):
        raise ImproperlyConfigured(
            f"Two job classes are named {name!r}: {existing.__module__}.{existing.__qualname__} "
            f"and {cls.__module__}.{cls.__qualname__}. Give one a distinct job_name."
        )
    _jobs[name] = cls
    return name


def lookup(name: str) -> type[ApplicationJob] | None:
    return _jobs.get(name)


def all_jobs() -> dict[str, type[ApplicationJob]]:
    return dict(_jobs)
