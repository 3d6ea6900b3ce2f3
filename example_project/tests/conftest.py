import secrets

import pytest

from deliveries.models import Payment, Recipient, Task
from django_async_jobs.broker.client import get_broker


@pytest.fixture(autouse=True)
def prefix(settings):
    """A fresh Redis key prefix per test, deleted afterwards: never the demo's keys."""
    value = f"example_test_{secrets.token_hex(4)}"
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "KEY_PREFIX": value}
    yield value
    get_broker().flush()


@pytest.fixture
def broker(prefix):
    return get_broker()


@pytest.fixture
def recipient(db):
    return Recipient.objects.create(name="Ana", phone="+15550100001", email="ana@example.com")


@pytest.fixture
def task(recipient):
    return Task.objects.create(tracking_number="T-1", recipient=recipient)


@pytest.fixture
def payment(task):
    return Payment.objects.create(task=task, amount="19.90")
