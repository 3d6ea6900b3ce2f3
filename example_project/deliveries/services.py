"""Stand-ins for the outside world: an SMS gateway, a mail server, a payment provider and a
carrier's tracking API. Each "call" writes a row or a log line, so the example runs anywhere."""

import logging
import time

from deliveries.models import OutboxMessage, Task

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


def fetch_carrier_status(tracking_number: str, delay: float = 0.2) -> str:
    """A slow external API: the reason the integrations queue exists."""
    time.sleep(delay)
    return "in_transit"


def already_sent(to: str, kind: str) -> bool:
    """Whether a message of this kind already went to this address (the newsletter's guard)."""
    return OutboxMessage.objects.filter(to=to, kind=kind).exists()
