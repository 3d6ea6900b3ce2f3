"""Database connections around each job, as Django closes them around each request.

A job may run minutes after its thread's last query, on a connection the database has since
closed or that outlived ``CONN_MAX_AGE``: before the job, kept connections are checked (only
when a database keeps them); after it, whatever is old or broken is closed. An ``async def``
job's ORM calls run in asgiref's thread for sync code, so that is where its connections are
closed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from functools import cache
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.db import close_old_connections
from django.db.backends.signals import connection_created

logger = logging.getLogger("django_async_jobs.worker")


@cache
def keeps_connections() -> bool:
    """Whether any database keeps connections between jobs. With ``CONN_MAX_AGE = 0`` (Django's
    default) the call after each job already closed them, so the one before has nothing to do."""
    return any(db.get("CONN_MAX_AGE", 0) != 0 or db.get("CONN_HEALTH_CHECKS") for db in settings.DATABASES.values())


_opened = threading.local()


def _note_connection(**kwargs: Any) -> None:
    _opened.connection = True


connection_created.connect(_note_connection, dispatch_uid="django_async_jobs.worker.connections")


def close_old() -> None:
    """``close_old_connections()``; a connection that fails to close must not decide the fate
    of the job beside it (buried before it ran, or left in flight after)."""
    try:
        close_old_connections()
    except Exception:
        logger.exception("closing old database connections failed")


class DatabaseConnections:
    """The worker's perform layer that checks connections before a job and closes them after.

    Finding which connections a thread initialized takes a lock shared by every thread (Django's
    connection registry), about a tenth of a busy worker's CPU. With no database keeping
    connections, only a connection opened since the last job can be open: the
    ``connection_created`` signal says whether this thread opened one.
    """

    def perform(self, job: Any, call_next: Callable[[Any], Any]) -> Any:
        keeps = keeps_connections()
        if keeps:
            close_old()  # a kept connection may have aged or broken while the thread idled
        try:
            return call_next(job)
        finally:
            if keeps or getattr(_opened, "connection", False):
                _opened.connection = False
                close_old()

    async def aperform(self, job: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        # As Django does after an async request: close what the job opened in asgiref's thread.
        # Not when the job is cancelled: the worker is stopping, and its loop with it.
        try:
            result = await call_next(job)
        except Exception:
            await sync_to_async(close_old)()
            raise
        await sync_to_async(close_old)()
        return result
