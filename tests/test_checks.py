"""System checks: settings mistakes surface at start-up with a message that says what to do."""

import pytest
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.test import override_settings

from django_async_jobs import ApplicationJob, registry
from django_async_jobs.checks import check_settings

BASE = {"REDIS_URL": "redis://127.0.0.1:6379/9", "QUEUES": ["default", "low"]}


def problems(**overrides) -> list:
    """The check's findings for BASE + overrides, without job findings of other tests' classes."""
    with override_settings(ASYNC_JOBS={**BASE, **overrides}):
        return [e for e in check_settings() if e.id != "async_jobs.E010"]


def only(findings: list) -> tuple[str, str]:
    assert len(findings) == 1, findings
    return findings[0].id, findings[0].msg


@pytest.fixture
def temporary_jobs():
    """Job classes defined by a test leave the registry afterwards, so other checks stay clean."""
    before = set(registry.all_jobs())
    yield
    for name in set(registry.all_jobs()) - before:
        registry._jobs.pop(name, None)


def test_default_test_settings_pass():
    assert [e for e in check_settings() if e.id != "async_jobs.E010"] == []
    job_findings = [e for e in check_settings() if e.id == "async_jobs.E010"]
    assert not [e for e in job_findings if e.obj.__module__.startswith("tests.testapp")]
    assert problems() == []


@pytest.mark.parametrize(
    "queues, message",
    [
        ([("a", 0)], "QUEUES weight for 'a' must be a positive integer, got 0"),
        ([("a", 2.5)], "QUEUES weight for 'a' must be a positive integer, got 2.5"),
        ([("a", "3")], "QUEUES weight for 'a' must be a positive integer, got '3'"),
        ([("a", True)], "QUEUES weight for 'a' must be a positive integer, got True"),
        (["a", ("b", 2)], "QUEUES mixes plain names and (name, weight) pairs"),
        ([("a", 1, 2)], "QUEUES entry ('a', 1, 2) is neither a name nor a (name, weight) pair"),
        (["a", "a"], "QUEUES lists 'a' twice"),
        (["a:b"], "QUEUES name = 'a:b' is not a valid queue name: use 1 to 100 characters"),
        ([], "QUEUES must be a non-empty list"),
        ("default", "QUEUES must be a non-empty list"),
    ],
)
def test_bad_queues(queues, message):
    code, text = only(problems(QUEUES=queues))
    assert code == "async_jobs.E002"
    assert text.startswith("ASYNC_JOBS['QUEUES']: ")
    assert message in text


@pytest.mark.parametrize("url", ["localhost:6379", "http://example.com", "redis://", "", None, 6379])
def test_bad_redis_url(url):
    [finding] = problems(REDIS_URL=url)
    assert finding.id == "async_jobs.E003"
    assert finding.msg == f"ASYNC_JOBS['REDIS_URL'] = {url!r} is not a Redis URL."
    assert "redis://host:6379/0" in finding.hint


@pytest.mark.parametrize("url", ["redis://localhost:6379/0", "rediss://h:1/2", "unix:///tmp/redis.sock"])
def test_good_redis_urls(url):
    assert problems(REDIS_URL=url) == []


def test_cache_alias_replaces_the_url():
    assert problems(REDIS_URL="nonsense", CACHE_ALIAS="default") == []


def test_unknown_key_is_a_warning_with_a_hint():
    code, text = only(problems(QUEUE=["default"]))
    assert code == "async_jobs.W001"
    assert text == "ASYNC_JOBS has an unknown key 'QUEUE'."
    assert problems(MAX_RETRIES=3) == []  # a key of a later feature is known


@pytest.mark.parametrize(
    "key, value, code, text",
    [
        ("CONCURRENCY", 0, "async_jobs.E004", "ASYNC_JOBS['CONCURRENCY'] must be an integer of at least 1, got 0."),
        ("MAX_RECOVERIES", -1, "async_jobs.E004", "ASYNC_JOBS['MAX_RECOVERIES'] must be an integer of at least 0, got -1."),
        ("HEARTBEAT_TIMEOUT", 0, "async_jobs.E005", "ASYNC_JOBS['HEARTBEAT_TIMEOUT'] must be a positive number"),
        ("POLL_INTERVAL", "soon", "async_jobs.E005", "ASYNC_JOBS['POLL_INTERVAL'] must be a positive number"),
        ("MODE", "fast", "async_jobs.E006", "ASYNC_JOBS['MODE'] = 'fast'; use one of"),
        ("HEARTBEAT_INTERVAL", 60, "async_jobs.E008", "ASYNC_JOBS['HEARTBEAT_INTERVAL'] must be positive and at most half"),
        ("HEARTBEAT_INTERVAL", 0, "async_jobs.E008", "ASYNC_JOBS['HEARTBEAT_INTERVAL'] must be positive"),
    ],
)
def test_bad_numbers_and_mode(key, value, code, text):
    found_code, message = only(problems(**{key: value}))
    assert found_code == code
    assert message.startswith(text)


def test_heartbeat_interval_within_the_timeout_passes():
    assert problems(HEARTBEAT_TIMEOUT=60, HEARTBEAT_INTERVAL=30) == []


def test_settings_must_be_a_dict():
    with override_settings(ASYNC_JOBS=["default"]):
        [finding] = check_settings()
    assert finding.id == "async_jobs.E001"


def job_findings() -> list:
    return [e for e in check_settings() if e.id == "async_jobs.E010"]


def test_unknown_queue_in_queue_as(temporary_jobs):
    class Misrouted(ApplicationJob):
        queue_as = "mailers"

        def perform(self):
            pass

    class Routed(ApplicationJob):
        queue_as = "low"

        def perform(self):
            pass

    with override_settings(ASYNC_JOBS=BASE):
        findings = [e for e in job_findings() if e.obj in (Misrouted, Routed)]
    assert len(findings) == 1
    assert findings[0].obj is Misrouted
    assert findings[0].msg == f"{Misrouted.job_name}.queue_as = 'mailers', a queue no worker reads."
    assert "Add 'mailers' to ASYNC_JOBS['QUEUES'] (now ['default', 'low'])" in findings[0].hint


def test_inherited_and_default_queues_are_checked(temporary_jobs):
    class Mailer(ApplicationJob):
        queue_as = "mailers"

        def perform(self):
            pass

    class Welcome(Mailer):
        pass

    class Plain(ApplicationJob):
        def perform(self):
            pass

    class Abstract(ApplicationJob):
        """No perform of its own: a base class, never enqueued, never reported."""

    with override_settings(ASYNC_JOBS={**BASE, "QUEUES": ["critical", "low"]}):
        reported = {e.obj for e in job_findings()}
    assert {Mailer, Welcome, Plain} <= reported
    assert Abstract not in reported


def test_queue_as_method_is_not_guessed(temporary_jobs):
    class Dynamic(ApplicationJob):
        def queue_as(self):
            return "anything"

        def perform(self):
            pass

    with override_settings(ASYNC_JOBS=BASE):
        assert Dynamic not in {e.obj for e in job_findings()}


def test_check_command_fails_on_errors():
    with override_settings(ASYNC_JOBS={**BASE, "QUEUES": [("a", 0)]}):
        with pytest.raises(SystemCheckError, match=r"async_jobs\.E002.*weight for 'a'"):
            call_command("check", tags=["async_jobs"])
