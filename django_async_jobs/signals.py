"""Django signals sent over a job's life. Receivers get ``sender=<job class>`` and ``job=``.

A receiver that raises is logged by the worker and never stops it.
"""

import logging
from collections.abc import Callable
from typing import Any

from django.dispatch import Signal

_watchers: list[Callable[[], None]] = []


def watch_receivers(callback: Callable[[], None]) -> None:
    """Call ``callback`` whenever a receiver of a ``WatchedSignal`` connects or disconnects."""
    _watchers.append(callback)


class WatchedSignal(Signal):
    """A signal sent for every job: the worker leaves the layer that sends it out of its chains
    while nobody listens, and builds them again when a receiver connects or disconnects."""

    def connect(self, *args: Any, **kwargs: Any) -> None:
        super().connect(*args, **kwargs)
        _receivers_changed()

    def disconnect(self, *args: Any, **kwargs: Any) -> bool:
        removed = super().disconnect(*args, **kwargs)
        _receivers_changed()
        return removed


def _receivers_changed() -> None:
    for callback in _watchers:
        callback()


job_enqueued = Signal()
job_started = WatchedSignal()
job_succeeded = WatchedSignal()
job_failed = Signal()  # also exception=
job_retried = Signal()  # also exception=, wait=
job_discarded = Signal()  # also exception=
job_died = Signal()  # also exception=, reason=
job_expired = Signal()  # not started by its deadline (expires_in): dropped, never run
job_cancelled = Signal()  # also job_id=; job= is None for a job taken out of a queue or set


def send(signal: Signal, job_class: type | None, **kwargs: object) -> None:
    """Send without letting a broken receiver reach the worker or the enqueuing code."""
    if not signal.receivers:
        return
    try:
        signal.send(sender=job_class, **kwargs)
    except Exception:
        logging.getLogger("django_async_jobs").exception("a receiver of a job signal raised; going on")
