"""Imported by the app's ``jobs`` autodiscovery, so every worker knows ``TaskJob`` by name."""

from django_async_jobs.tasks import TaskJob

__all__ = ["TaskJob"]
