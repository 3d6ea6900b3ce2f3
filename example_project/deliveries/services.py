"""Stand-ins for the outside world: an SMS gateway, a mail server, a payment provider and an
error tracker. Each "call" writes a row or a log line, so the example runs anywhere. (The
carrier is called over HTTP, see ``deliveries.carrier``.)"""

import logging
from typing import Any

from deliveries.models import ErrorReport, OutboxMessage, Task

logger = logging.getLogger("deliveries.services")


def send_sms(to: str, body: str, *, task: Task | None = None, kind: str = "", job_id: str = "") -> OutboxMessage:
    logger.info("SMS to %s: %s", to, body)
    return OutboxMessage.objects.create(
        channel=OutboxMessage.Channel.SMS, to=to, body=body, task=task, kind=kind, job_id=job_id
    )


def send_email(
    to: str, subject: str, body: str, *, task: Task | None = None, kind: str = "", job_id: str = ""
) -> OutboxMessage:
    logger.info("email to %s: %s", to, subject)
    return OutboxMessage.objects.create(
        channel=OutboxMessage.Channel.EMAIL, to=to, subject=subject, body=body, task=task, kind=kind,
        job_id=job_id,
    )


def capture_payment(amount: str, reference: str) -> str:
    """A payment provider's capture call; returns the provider's transaction reference."""
    logger.info("capturing %s for %s", amount, reference)
    return f"txn-{reference}"


def already_sent(to: str, kind: str) -> bool:
    """Whether a message of this kind already went to this address (the newsletter's guard)."""
    return OutboxMessage.objects.filter(to=to, kind=kind).exists()


def report_error(
    exc: BaseException, *, source: str, job_class: str = "", job_id: str = "", context: dict[str, Any] | None = None
) -> ErrorReport:
    """The error tracker's ``capture_exception`` (Sentry in the guide): one row per report."""
    return ErrorReport.objects.create(
        source=source, job_class=job_class, job_id=job_id or "", error=f"{type(exc).__name__}: {exc}",
        context=context or {},
    )
