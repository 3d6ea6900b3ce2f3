"""Limits with clear errors at enqueue: payload size, nesting, waits; page numbers that clamp."""

import json
import time
from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import transaction
from django.test import override_settings

from django_async_jobs import ApplicationJob, SerializationError, retry
from django_async_jobs.broker.keys import escape_glob
from django_async_jobs.checks import check_settings
from django_async_jobs.conf import MAX_WAIT
from django_async_jobs.serialization import MAX_DEPTH, encode_payload
from django_async_jobs.testing import jobs_test_mode
from tests.testapp.jobs import IncrJob
from tests.testapp.unique_jobs import UntilExecutedJob

MiB = 1024 * 1024


class AnyArgsJob(ApplicationJob):
    tagged_arguments = False

    def perform(self, *args, **kwargs):
        pass


@pytest.fixture
def limit(settings):
    def set_limit(value):
        settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "MAX_PAYLOAD_BYTES": value}
    return set_limit


def nothing_queued(broker):
    return broker.queue_size("default") == 0 and broker.redis.zcard(broker.keys.schedule) == 0


# -- payload size -------------------------------------------------------------------------------


def test_default_limit_is_one_mib_and_names_the_job_and_the_size(broker):
    AnyArgsJob.perform_later("x" * (MiB - 500))
    broker.redis.delete(broker.keys.queue("default"))
    with pytest.raises(SerializationError) as info:
        AnyArgsJob.perform_later("x" * MiB)
    message = str(info.value)
    assert message.startswith(f"{AnyArgsJob.job_name}: the payload is 1,048,")
    assert "over ASYNC_JOBS['MAX_PAYLOAD_BYTES'] (1,048,576)" in message and "pass its id" in message
    assert nothing_queued(broker)


def test_the_limit_counts_utf8_bytes_not_characters(broker, limit):
    limit(2000)
    AnyArgsJob.perform_later("é" * 800)  # 1,600 bytes of argument, fewer characters than the limit
    with pytest.raises(SerializationError, match=r"the payload is 2,\d\d\d bytes, over .* \(2,000\)"):
        AnyArgsJob.perform_later("é" * 1000)  # 1,000 characters, 2,000 bytes of argument
    assert broker.queue_size("default") == 1


@pytest.mark.parametrize("how", ["scheduled", "unique", "bulk", "all_later", "in_a_transaction"])
def test_every_enqueue_path_is_limited(broker, limit, how, db):
    limit(5000)
    big = "x" * 6000
    with pytest.raises(SerializationError, match="over ASYNC_JOBS"):
        if how == "scheduled":
            AnyArgsJob.set(wait=60).perform_later(big)
        elif how == "unique":
            UntilExecutedJob.perform_later(big, "a")
        elif how == "bulk":
            AnyArgsJob.perform_bulk([("small",), (big,)])
        elif how == "all_later":
            ApplicationJob.perform_all_later([AnyArgsJob(big)])
        else:
            with transaction.atomic():
                AnyArgsJob.perform_later(big)  # refused here, not when the transaction commits
    assert nothing_queued(broker)
    assert not broker.redis.keys(escape_glob(broker.keys.lock(UntilExecutedJob.job_name, "")) + "*")


def test_test_mode_applies_the_limit_too(limit):
    limit(5000)
    with jobs_test_mode(), pytest.raises(SerializationError, match="over ASYNC_JOBS"):
        AnyArgsJob.perform_later("x" * 6000)


def test_no_limit(broker, limit):
    limit(None)
    AnyArgsJob.perform_later("x" * (2 * MiB))
    assert broker.queue_size("default") == 1


@pytest.mark.parametrize("value", [0, -1, 1.5, "1MB", True])
def test_limit_setting_is_checked(value):
    with override_settings(ASYNC_JOBS={"MAX_PAYLOAD_BYTES": value}):
        [error] = [e for e in check_settings() if e.id == "async_jobs.E012"]
    assert "MAX_PAYLOAD_BYTES" in error.msg


# -- nesting ------------------------------------------------------------------------------------


def nested(depth, leaf=1):
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def test_nesting_up_to_the_limit_round_trips(broker):
    AnyArgsJob.perform_later(nested(MAX_DEPTH), data={"a": nested(MAX_DEPTH - 1)})
    payload = json.loads(broker.redis.zrange(broker.keys.queue("default"), 0, 0)[0])
    assert payload["args"] == [nested(MAX_DEPTH)]


class DeepJob(ApplicationJob):
    def perform(self, tree, other=None):
        pass


class TaggedDeepJob(DeepJob):
    tagged_arguments = True


@pytest.mark.parametrize("job_class", [DeepJob, TaggedDeepJob])
@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 500, 5000])  # ~500 was a RecursionError on 3.11
def test_deeper_nesting_is_refused_naming_the_argument(broker, job_class, depth):
    with pytest.raises(SerializationError) as info:
        job_class.perform_later(nested(depth))
    assert str(info.value).startswith(f"{job_class.__name__}.perform_later(): argument 'tree'[0][0]")
    assert f"is nested more than {MAX_DEPTH} lists or dicts deep" in str(info.value)
    with pytest.raises(SerializationError, match=r"perform_later\(\): argument 'other'\[0\].* is nested more than"):
        job_class.perform_later(1, other=nested(depth))
    assert nothing_queued(broker)


def test_nested_dicts_and_a_list_holding_itself(broker):
    deep = node = {}
    for _ in range(MAX_DEPTH):
        node["k"] = node = {}
    with pytest.raises(SerializationError, match=r"^DeepJob.perform_later\(\): argument 'tree'\['k'\]\['k'\].* is nested more than"):
        DeepJob.perform_later(deep)
    loop = []
    loop.append(loop)
    with pytest.raises(SerializationError, match="is nested more than"):
        DeepJob.perform_later(loop)
    assert nothing_queued(broker)


# -- waits --------------------------------------------------------------------------------------


@pytest.mark.parametrize("wait", [1e300, 10**400, float("inf"), float("nan"), MAX_WAIT + 1, timedelta(days=365 * 101)])
def test_wait_beyond_a_century_is_refused(broker, wait):
    with pytest.raises(ValueError, match=r"^wait must be a finite number of seconds up to 100 years \(3155760000 seconds\)"):
        IncrJob.set(wait=wait).perform_later("k")
    with pytest.raises(ValueError, match="^wait must be"):
        UntilExecutedJob.set(wait=wait).perform_later("k", "a")  # raised a raw Redis error
    assert nothing_queued(broker)


def test_a_wait_up_to_a_century_is_accepted_and_a_past_one_runs_at_once(broker):
    assert UntilExecutedJob.set(wait=MAX_WAIT - 60).perform_later("k", "a")
    at = broker.redis.zrange(broker.keys.schedule, 0, -1, withscores=True)[0][1]
    assert at == pytest.approx(time.time() + MAX_WAIT - 60, abs=60)
    IncrJob.set(wait=-5).perform_later("k")
    IncrJob.set(wait_until=datetime(2001, 1, 1, tzinfo=UTC)).perform_later("k")
    assert broker.redis.zcount(broker.keys.schedule, "-inf", time.time()) == 2


@pytest.mark.parametrize(
    "wait_until",
    [datetime(9999, 1, 1, tzinfo=UTC), time.time() + MAX_WAIT + 3600, 10**400, float("inf"), float("-inf"), float("nan")],
)
def test_wait_until_beyond_a_century_is_refused(broker, wait_until):
    with pytest.raises(ValueError, match=r"^wait_until must be a finite time at most 100 years"):
        IncrJob.set(wait_until=wait_until).perform_later("k")
    assert nothing_queued(broker)


@pytest.mark.parametrize("wait", [-1, MAX_WAIT * 2, timedelta(days=-1)])
def test_retry_waits_are_checked_when_the_rule_is_made(wait):
    with pytest.raises(ValueError, match=r"^retry\(wait=\) must be from 0 seconds up to 100 years"):
        retry(TimeoutError, wait=wait)


def test_a_retry_wait_callable_giving_too_much_is_named():
    rule = retry(TimeoutError, wait=lambda executions: 10**12, jitter=0)
    with pytest.raises(ValueError, match=r"^retry wait for builtins\.TimeoutError must be from 0 seconds up to 100 years"):
        rule.delay(1)


# -- page numbers -------------------------------------------------------------------------------


@pytest.fixture
def staff(client, db):
    client.force_login(User.objects.create_user("staff", is_staff=True, is_superuser=True))


def fill(broker, key, n):
    broker.redis.zadd(key, {
        encode_payload({"jid": f"job{i:03d}", "job": IncrJob.job_name, "queue": "default", "args": [i]}): time.time() + 60 + i
        for i in range(n)
    })


@pytest.mark.parametrize("query", [
    "page=99999999999999999999999", "page=-4", "page=abc", "page=", "page=1e3", "page=" + "9" * 5000,
    "per_page=99999999999999999999999", "per_page=-1", "page=3&per_page=0",
])
@pytest.mark.parametrize("path", ["scheduled/", "retries/", "queues/default/"])
def test_dashboard_page_numbers_clamp(client, broker, staff, query, path):
    key = {"scheduled/": broker.keys.schedule, "retries/": broker.keys.retry}.get(path, broker.keys.queue("default"))
    fill(broker, key, 30)
    response = client.get(f"/admin/django_async_jobs/dashboard/{path}?{query}")
    assert response.status_code == 200
    page = response.context["page"]
    assert 1 <= page.number <= page.pages and page.entries
    if query == "page=99999999999999999999999":
        assert page.number == page.pages == 2


def test_cli_page_numbers_clamp(broker, db):
    fill(broker, broker.keys.schedule, 30)
    for page, first in (("99999999999999999999999", "job025"), ("-3", "job000")):
        out = StringIO()
        call_command("jobs", "scheduled", "--page", page, "--limit", "25", "--json", stdout=out)
        assert json.loads(out.getvalue())["jobs"][0]["job_id"] == first
    out = StringIO()
    call_command("jobs", "dead", "list", "--limit", "99999999999999999999999", stdout=out)
    assert "No dead jobs." in out.getvalue()
    out = StringIO()
    call_command("jobs", "cron", "--next", "99999999999999999999999", stdout=out)
    assert out.getvalue()
