"""One rule for queue names, enforced wherever a name enters; KEY_PREFIX checked and escaped."""

import secrets
from io import StringIO

import pytest
from django.contrib.auth.models import User
from django.core.exceptions import ImproperlyConfigured
from django.core.management import CommandError, call_command
from django.test import override_settings

from django_async_jobs import ApplicationJob, conf, registry, retry
from django_async_jobs import tasks as tasks_backend
from django_async_jobs.broker.client import Broker
from django_async_jobs.checks import check_settings
from django_async_jobs.serialization import encode_payload
from tests.testapp.jobs import IncrJob

RULE = conf.QUEUE_NAME_RULE
VALID = ["default", "a", "tenant-1", "tenant_1", "v2.low", "A" * 100]
INVALID = ["", "a:b", "tenant/1", "a b", "low\n", "café", "a*", "A" * 101]


@pytest.fixture
def temporary_jobs():
    before = set(registry.all_jobs())
    yield
    for name in set(registry.all_jobs()) - before:
        registry._jobs.pop(name, None)


@pytest.mark.parametrize("name", VALID)
def test_valid_names(name):
    assert conf.validate_queue_name(name, "queue") == name


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names_name_the_argument_and_the_rule(name):
    with pytest.raises(ValueError) as info:
        conf.validate_queue_name(name, "queue")
    assert str(info.value).startswith(f"queue = {name!r} is not a valid queue name")
    assert RULE in str(info.value)


@pytest.mark.parametrize("name", [None, 5, b"low"])
def test_names_that_are_not_strings_are_type_errors(name):
    with pytest.raises(TypeError, match=rf"queue = {name!r} is not a valid queue name: use 1 to 100"):
        conf.validate_queue_name(name, "queue")


# -- where names enter --------------------------------------------------------------------------


def test_queue_as_string_is_checked_when_the_class_is_defined(temporary_jobs):
    with pytest.raises(ImproperlyConfigured, match=r"SlashJob\.queue_as = 'tenant/1' is not a valid queue name"):
        class SlashJob(ApplicationJob):
            queue_as = "tenant/1"

            def perform(self):
                pass

    assert not [name for name in registry.all_jobs() if name.endswith("SlashJob")]


def test_queue_as_method_is_checked_at_enqueue(broker, temporary_jobs):
    class TenantJob(ApplicationJob):
        def queue_as(self):
            return f"tenant/{self.arguments[0]}"

        def perform(self, tenant):
            pass

    with pytest.raises(ValueError, match=r"TenantJob\.queue_as\(\) = 'tenant/1' is not a valid queue name"):
        TenantJob.perform_later(1)
    assert broker.redis.smembers(broker.keys.queues) == set()


@pytest.mark.parametrize("name", ["a:b", "tenant/1", ""])
def test_set_queue(broker, name):
    with pytest.raises(ValueError, match=rf"^queue = {name!r} is not a valid queue name"):
        IncrJob.set(queue=name).perform_later("k")
    with pytest.raises(ValueError, match="is not a valid queue name"):
        IncrJob("k").enqueue(queue=name)
    assert broker.redis.smembers(broker.keys.queues) == set()


def test_perform_bulk_queue(broker):
    with pytest.raises(ValueError, match=r"perform_bulk\(queue=\) = 'a:b' is not a valid queue name"):
        IncrJob.perform_bulk([("k",)], queue="a:b")
    assert broker.queue_size("a:b") == 0


def test_retry_rule_queue():
    with pytest.raises(ValueError, match=r"retry\(queue=\) = 'retries/slow' is not a valid queue name"):
        retry(TimeoutError, queue="retries/slow")


def test_settings_queues():
    with override_settings(ASYNC_JOBS={"QUEUES": ["default", "a b"]}):
        [error] = [e for e in check_settings() if e.id == "async_jobs.E002"]
    assert "QUEUES name = 'a b' is not a valid queue name" in error.msg and RULE in error.msg


def test_recurring_entry_queue():
    recurring = {"nightly": {"cron": "0 2 * * *", "class": IncrJob.job_name, "args": ["k"], "queue": "a:b"}}
    with override_settings(ASYNC_JOBS={"QUEUES": ["default"], "RECURRING": recurring}):
        [error] = [e for e in check_settings() if e.id == "async_jobs.E020"]
    assert "RECURRING['nightly']['queue'] = 'a:b' is not a valid queue name" in error.msg


@pytest.mark.parametrize("item", ["a:b", "tenant/1", "a b,2"])
def test_runworker_queue_option(item):
    with pytest.raises(CommandError, match="is not a valid queue name"):
        call_command("runworker", "-q", item)


@pytest.mark.skipif(not tasks_backend.AVAILABLE, reason="django.tasks needs Django 6.0+")
def test_django_tasks_queues(settings, prefix):
    from django.tasks import task, task_backends
    from django.tasks.exceptions import InvalidTask

    from tests.testapp import tasks as funcs

    settings.TASKS = {"default": {"BACKEND": "django_async_jobs.tasks.RedisTaskBackend", "QUEUES": []}}
    with pytest.raises(InvalidTask, match=rf"queue_name = 'a:b' is not a valid queue name: use {RULE}"):
        task(queue_name="a:b")(funcs.add)
    settings.TASKS = {"default": {"BACKEND": "django_async_jobs.tasks.RedisTaskBackend", "QUEUES": ["default", "a b"]}}
    errors = list(task_backends["default"].check())
    assert [e.id for e in errors] == ["async_jobs.E022"]
    assert "'a b'" in errors[0].msg and RULE in errors[0].hint


# -- the dashboard and the CLI ------------------------------------------------------------------


@pytest.fixture
def staff(client, db):
    user = User.objects.create_user("staff", is_staff=True, is_superuser=True)
    client.force_login(user)
    return user


def legacy_queue(broker, name, n=2):
    """Jobs under a name pushed before the rule existed, as Redis holds them."""
    payloads = {encode_payload({"jid": f"old{i}", "job": IncrJob.job_name, "queue": name, "args": [i]}): i for i in range(n)}
    broker.redis.zadd(broker.keys.queue(name), payloads)
    broker.redis.sadd(broker.keys.queues, name)


BASE = "/admin/django_async_jobs/dashboard/"


def test_queues_page_lists_a_legacy_name_escaped_without_links(client, broker, staff):
    legacy_queue(broker, "tenant/1")
    legacy_queue(broker, "<b>x</b>:y", 1)
    broker.redis.sadd(broker.keys.queues, b"\xff\xfe")  # not even UTF-8
    response = client.get(BASE + "queues/")
    assert response.status_code == 200
    html = response.content.decode()
    assert "tenant/1" in html and "&lt;b&gt;x&lt;/b&gt;:y" in html and "<b>x</b>" not in html
    assert f'href="{BASE}queues/default/"' in html
    assert "queues/tenant" not in html
    for page in ("", "stats.json", "busy/"):
        assert client.get(BASE + page).status_code == 200


@pytest.mark.parametrize("path", ["a:b/", "a%20b/", "a:b/clear/", "caf%C3%A9/", "a*/"])
def test_queue_urls_with_an_invalid_name_are_404(client, broker, staff, path):
    assert client.get(BASE + "queues/" + path).status_code == 404


def test_valid_queue_names_nothing_knows_are_404_and_known_ones_answer(client, broker, staff):
    assert client.get(BASE + "queues/never-used/").status_code == 404
    assert client.get(BASE + "queues/never-used/clear/").status_code == 404
    response = client.get(BASE + "queues/low/")  # configured, never used
    assert response.status_code == 200 and b"No jobs" in response.content


def run_jobs(*args):
    out = StringIO()
    call_command("jobs", *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_jobs_clear_refuses_an_invalid_name(broker):
    with pytest.raises(CommandError, match=rf"QUEUE = 'a b' is not a valid queue name: use {RULE}"):
        run_jobs("clear", "a b", "--yes")


def test_jobs_clear_deletes_a_legacy_queue(broker):
    legacy_queue(broker, "tenant/1", 3)
    assert any(line.split()[:2] == ["tenant/1", "3"] for line in run_jobs("queues").splitlines())
    assert "3 jobs deleted" in run_jobs("clear", "tenant/1", "--yes")
    assert broker.queue_size("tenant/1") == 0
    assert b"tenant/1" not in broker.redis.smembers(broker.keys.queues)


# -- KEY_PREFIX ---------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["app*", "a:b", "app?", "[ab]", "a\\b", "", None])
def test_key_prefix_check(prefix):
    with override_settings(ASYNC_JOBS={"KEY_PREFIX": prefix}):
        [error] = [e for e in check_settings() if e.id == "async_jobs.E011"]
    assert error.msg == f"ASYNC_JOBS['KEY_PREFIX'] = {prefix!r} is not a valid key prefix."
    assert RULE in error.hint and "*?[]\\" in error.hint


def test_flush_with_a_glob_prefix_deletes_only_its_own_keys(broker):
    base = f"t{secrets.token_hex(4)}"
    globbing = Broker(conf.build({**conf.get_settings().raw, "KEY_PREFIX": f"{base}*"}))
    neighbour = f"{base}other:queue:default"
    broker.redis.set(neighbour, "theirs")
    globbing.redis.set(globbing.keys.queue("default"), "ours")
    try:
        assert globbing.flush() == 1
        assert broker.redis.get(neighbour) == b"theirs"
    finally:
        broker.redis.delete(neighbour, globbing.keys.queue("default"))
