"""Django signals sent over a job's life. Receivers get ``sender=<job class>`` and ``job=``.

A receiver that raises is logged by the worker and never stops it.
"""

from django.dispatch import Signal

job_enqueued = Signal()
job_started = Signal()
job_succeeded = Signal()
job_failed = Signal()  # also exception=
job_retried = Signal()  # also exception=, wait=
job_discarded = Signal()  # also exception=
job_died = Signal()  # also exception=, reason=
