"""How the project hears about jobs from outside the job classes.

* Receivers of the library's signals record on a failed execution's ``JobRun`` row what the
  retry rules made of it (retried, discarded, dead): the admin and the demo count those.
* ``report_death`` is the project's ``DEATH_HANDLERS`` entry, the guide's Sidekiq death handler:
  a job that died is logged and reported to the error tracker.
"""

from __future__ import annotations

import logging
from typing import Any

from django.dispatch import receiver

from deliveries import services
from deliveries.models import JobRun
from django_async_jobs import signals

logger = logging.getLogger("deliveries.hooks")


def record_outcome(job: Any, outcome: str) -> None:
    """The run was saved as failed by ``DeliveryJob``; the rules' decision comes just after."""
    if job is not None:
        JobRun.objects.filter(job_id=job.job_id, execution=job.executions, status=JobRun.Status.FAILED).update(
            outcome=outcome
        )


@receiver(signals.job_retried)
def run_retried(sender: type | None, job: Any = None, **kwargs: Any) -> None:
    record_outcome(job, JobRun.Outcome.RETRIED)


@receiver(signals.job_discarded)
def run_discarded(sender: type | None, job: Any = None, **kwargs: Any) -> None:
    record_outcome(job, JobRun.Outcome.DISCARDED)


@receiver(signals.job_died)
def run_died(sender: type | None, job: Any = None, **kwargs: Any) -> None:
    record_outcome(job, JobRun.Outcome.DEAD)


def report_death(payload: dict[str, Any], exc: BaseException) -> None:
    """``ASYNC_JOBS["DEATH_HANDLERS"]``: called with the dead job's payload and its last error."""
    logger.error("Job %s died: %s", payload.get("job"), exc)
    services.report_error(
        exc, source="job died", job_class=str(payload.get("job", "")).rsplit(".", 1)[-1],
        job_id=payload.get("jid", ""), context={"job": payload},
    )
