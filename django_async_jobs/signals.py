"""Django signals sent over a job's life. Receivers get ``sender=<job class>`` and ``job=``.

A receiver that raises is logged by the worker and never stops it.
"""

import logging

from django.dispatch import Signal

job_enqueued = Signal()
job_started = Signal()
job_succeeded = Signal()
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
