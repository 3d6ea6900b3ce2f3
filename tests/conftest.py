import secrets

import pytest

from django_async_jobs.broker.client import get_broker


@pytest.fixture
def prefix(settings):
    """A fresh key prefix per test: tests never see each other's jobs, and all keys go after."""
    value = f"t{secrets.token_hex(4)}"
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "KEY_PREFIX": value}
    yield value
    get_broker().flush()


@pytest.fixture
def broker(prefix):
    return get_broker()
