"""Secrets and personal data stay out of what the library prints: masked URLs, no argument
values in exception messages and log lines unless ``LOG_ARGUMENTS`` asks for them."""

import logging
import secrets
from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from django_async_jobs import ApplicationJob
from django_async_jobs.checks import check_settings
from django_async_jobs.conf import redact_url
from django_async_jobs.locks import LockConflict
from tests.testapp.jobs import IncrJob
from tests.testapp.unique_jobs import RaisingUniqueJob

CARD = "4111111111111111"
EMAIL = "ada@example.com"


@pytest.mark.parametrize(
    "url, shown",
    [
        ("redis://:S3cretPW@/0", "redis://:***@/0"),
        ("redis://user:S3cretPW@host:6379/0", "redis://user:***@host:6379/0"),
        ("rediss://S3cretPW@host/0", "rediss://***@host/0"),
        ("redis://:S3cret/PW@host/0", "redis://:***@host/0"),
        ("redis://:S3cret?PW@host/0", "redis://:***@host/0"),
        ("redis://:S3c@retPW@host/0", "redis://:***@host/0"),
        ("unix://:S3cretPW@/run/redis.sock?db=2", "unix://:***@/run/redis.sock?db=2"),
        ("unix:///run/redis.sock?db=2&password=S3cretPW", "unix:///run/redis.sock?db=2&password=***"),
        ("user:S3cretPW@host:6379", "user:***@host:6379"),
        (
            "redis+sentinel://:S3cretPW@h1:26379,h2:26379/mymaster/0?sentinel_password=S3cretPW&ssl=true",
            "redis+sentinel://:***@h1:26379,h2:26379/mymaster/0?sentinel_password=***&ssl=true",
        ),
        (
            "redis+sentinel://app:S3c/ret@PW@h1,h2/m?ssl=1&SENTINEL_PASSWORD=S3cretPW",
            "redis+sentinel://app:***@h1,h2/m?ssl=1&SENTINEL_PASSWORD=***",
        ),
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("", ""),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["redis://:S3cretPW@/0", "http://:S3cretPW@example.com/", "S3cretPW@localhost"])
def test_check_e003_masks_the_password(url):
    with override_settings(ASYNC_JOBS={"REDIS_URL": url}):
        [error] = [e for e in check_settings() if e.id == "async_jobs.E003"]
        assert "S3cretPW" not in error.msg and "***" in error.msg
        with pytest.raises(SystemCheckError) as info:
            call_command("check", stdout=StringIO(), stderr=StringIO())
    assert "async_jobs.E003" in str(info.value) and "S3cretPW" not in str(info.value)


# -- argument values ----------------------------------------------------------------------------


@pytest.fixture
def log_arguments(settings):
    def switch(on):
        settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "LOG_ARGUMENTS": on}
    return switch


@pytest.mark.parametrize("on", [False, True])
def test_lock_conflict_names_class_id_and_queue_not_arguments(broker, log_arguments, on):
    log_arguments(on)
    key = f"card:{CARD}:{secrets.token_hex(4)}"
    RaisingUniqueJob.perform_later(key, "a")
    with pytest.raises(LockConflict) as info:
        RaisingUniqueJob.perform_later(key, "b")
    message = str(info.value)
    assert message.startswith(f"RaisingUniqueJob {info.value.job.job_id} (queue 'default', lock args ")
    assert (CARD in message) is on
    assert ("lock args <hidden>" in message) is not on


class WelcomeJob(ApplicationJob):
    def idempotency_key(self, email):
        return f"welcome:{email}"

    def perform(self, email):
        return "sent"


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("on", [False, True])
def test_idempotency_skip_line_hides_the_key(broker, caplog, log_arguments, on):
    log_arguments(on)
    assert WelcomeJob.perform_now(EMAIL) == "sent"
    with caplog.at_level(logging.INFO, logger="django_async_jobs.job"):
        assert WelcomeJob.perform_now(EMAIL) is None
    [line] = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert "WelcomeJob" in line and "queue=" in line
    assert (EMAIL in line) is on
    assert ("idempotency key <hidden> is already done" in line) is not on


def test_bad_idempotency_key_type_is_named_not_shown(broker):
    class NumberKeyJob(ApplicationJob):
        def idempotency_key(self, card):
            return int(card)

        def perform(self, card):
            pass

    with pytest.raises(TypeError) as info:
        NumberKeyJob.perform_now(CARD)
    assert "must return a string or None, got <hidden> (a int)" in str(info.value)
    assert CARD not in str(info.value)


def test_bulk_item_errors_name_the_item_not_its_value(broker):
    with pytest.raises(TypeError) as info:
        IncrJob.perform_bulk([("k",), CARD])
    assert "perform_bulk() item 1 is <hidden> (a str)" in str(info.value) and CARD not in str(info.value)
    with pytest.raises(TypeError) as info:
        ApplicationJob.perform_all_later([IncrJob("k"), EMAIL])
    assert "got <hidden> (a str) at index 1" in str(info.value) and EMAIL not in str(info.value)
