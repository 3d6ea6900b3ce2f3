"""The dead-jobs admin through Django's test client: permissions, filters, detail, actions."""

import json
import sys
import time
from datetime import timedelta
from urllib.parse import urlencode

import pytest
from django.contrib.auth.models import Permission, User
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_async_jobs.admin import DeadJobAdmin
from django_async_jobs.deadjobs import build_row
from django_async_jobs.models import DeadJob
from django_async_jobs.serialization import encode_payload

try:
    from django.contrib.admin.options import ActionLocation  # noqa: F401

    CHANGE_FORM_ACTIONS = True
except ImportError:
    CHANGE_FORM_ACTIONS = False

LIST = reverse("admin:django_async_jobs_deadjob_changelist")
TRACEBACK = 'Traceback (most recent call last):\n  File "jobs.py", line 3, in perform\nValueError: <script>bad</script> card declined'


def detail(row):
    return reverse("admin:django_async_jobs_deadjob_change", args=[row.pk])


def payload(jid, job="billing.ChargeJob", queue="default", **extra):
    return encode_payload({"jid": jid, "job": job, "queue": queue, "args": [42, {"amount": "9.99"}],
                           "enqueued_at": time.time() - 60, "executions": 25, "retry_count": 25, **extra})


def row(dead_id, job="billing.ChargeJob", queue="default", reason="retries_exhausted",
        error_class="billing.errors.CardDeclined", message="card declined", age=timedelta(0), text=None):
    record = {"dead_id": dead_id, "job_id": f"job-{dead_id}", "payload": text or payload(f"job-{dead_id}", job, queue),
              "reason": reason, "died_at": (timezone.now() - age).timestamp(), "error_class": error_class,
              "error_message": message, "traceback": TRACEBACK, "executions": 26}
    obj = build_row(dead_id, json.dumps(record))
    obj.save()
    return obj


def user(username, *perms, staff=True):
    account = User.objects.create_user(username, password="pw", is_staff=staff)
    for codename in perms:
        account.user_permissions.add(Permission.objects.get(codename=f"{codename}_deadjob"))
    return account


def client_for(account):
    client = Client()
    client.force_login(account)
    return client


@pytest.fixture
def rows(db):
    return [
        row("a1"),
        row("a2", job="mail.SendJob", queue="notifications", error_class="smtplib.SMTPException", message="relay down"),
        row("a3", job="mail.SendJob", queue="notifications", reason="poison_pill", error_class="", message="",
            age=timedelta(days=3)),
        row("a4", reason="malformed_payload", error_class="", message="", text="{oops"),
    ]


@pytest.fixture
def manager(db):
    return user("manager", "view", "change", "delete")


def action(client, name, selected, url=LIST, **extra):
    data = {"action": name, "_selected_action": [str(pk) for pk in selected], "index": "0", **extra}
    return client.post(url, data, follow=True)


def messages_of(response):
    return [str(m) for m in response.context["messages"]] if response.context else []


# -- who gets in --------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("account", [None, "outsider"])
def test_anonymous_and_non_staff_are_sent_to_login(rows, account):
    client = Client()
    if account:
        client.force_login(user(account, "view", "change", "delete", staff=False))
    for url in (LIST, detail(rows[0]), LIST + "?q=ChargeJob"):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"]
        assert b"ChargeJob" not in response.content and b"card declined" not in response.content
    response = client.post(LIST, {"action": "retry_selected", "_selected_action": [rows[0].pk], "index": "0"})
    assert response.status_code == 302 and "/admin/login/" in response["Location"]
    assert DeadJob.objects.count() == 4


@pytest.mark.django_db
def test_staff_without_permission_sees_nothing(rows):
    client = client_for(user("clerk"))
    assert client.get(LIST).status_code == 403
    assert client.get(detail(rows[0])).status_code == 403
    index = client.get(reverse("admin:index"))
    assert b"Dead jobs" not in index.content


# -- list, filters, search ------------------------------------------------------------------------


@pytest.mark.django_db
def test_list_filters_and_search(rows, manager):
    client = client_for(manager)
    page = client.get(LIST)
    assert page.status_code == 200
    html = page.content.decode()
    for text in ("billing.ChargeJob", "mail.SendJob", "relay down", "Poison pill", "Retries exhausted",
                 "Retry selected dead jobs", "Delete selected dead jobs", "By job class", "By reason",
                 "By died at", "By error class", "By queue"):
        assert text in html, text
    assert "Add dead job" not in html
    # The error is its class and message in one column; the reason has the executions under it.
    assert '<span title="smtplib.SMTPException">SMTPException</span>: <span title="relay down">relay down</span>' in html
    assert "26 executions" in html

    def shown(query):
        return {obj.dead_id for obj in client.get(LIST + query).context["cl"].result_list}

    assert shown("?job_class=mail.SendJob") == {"a2", "a3"}
    assert shown("?queue=default") == {"a1"}  # a4's payload is unreadable: no queue
    assert shown("?reason__exact=poison_pill") == {"a3"}
    assert shown("?error_class=smtplib.SMTPException") == {"a2"}
    assert shown("?q=relay") == {"a2"}
    assert shown("?q=job-a4") == {"a4"}
    assert shown("?q=CardDeclined") == {"a1"}
    since = urlencode({"died_at__gte": (timezone.now() - timedelta(days=1)).isoformat()})
    assert shown(f"?{since}") == {"a1", "a2", "a4"}
    today = timezone.now()
    assert shown(f"?died_at__year={today.year}&died_at__month={today.month}&died_at__day={today.day}") == {"a1", "a2", "a4"}


@pytest.mark.django_db
def test_detail_is_read_only_with_traceback_and_arguments(rows, manager):
    client = client_for(manager)
    page = client.get(detail(rows[0]))
    assert page.status_code == 200
    html = page.content.decode()
    assert "View dead job" in html
    assert "ValueError: &lt;script&gt;bad&lt;/script&gt; card declined" in html  # escaped, whole
    assert "in perform" in html
    assert "<pre" in html and '  &quot;amount&quot;: &quot;9.99&quot;' in html  # pretty-printed
    assert 'name="_save"' not in html
    assert client.post(detail(rows[0]), {"job_class": "x"}).status_code == 403
    assert client.get(reverse("admin:django_async_jobs_deadjob_add")).status_code == 403
    assert DeadJob.objects.get(pk=rows[0].pk).job_class == "billing.ChargeJob"
    # A malformed payload shows as it is.
    assert "{oops" in client.get(detail(rows[3])).content.decode()


def nested(depth):
    value = []
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.django_db
def test_no_payload_makes_a_page_fail(manager):
    """Each row is one poison payload; the list and every detail page still answer."""
    deep = "[" * 100_000 + "]" * 100_000
    poison = [
        row("deep", text=deep, reason="malformed_payload"),
        row("surrogate", text='{"jid":"s","job":"J","queue":"q","args":["\\ud800"],"kwargs":{"a":"\\udfff"}}'),
        row("nan", text='{"jid":"n","job":"J","queue":"q","args":[NaN,1e999,-Infinity]}'),
        row("long", text="y" * 2_000_000, reason="malformed_payload"),
    ]
    if sys.version_info >= (3, 12):
        # Arguments stored before they were limited: too deep to indent on a page. (Python 3.11
        # counts its JSON parser's levels with the stack's: such a row cannot even be loaded.)
        poison.append(DeadJob.objects.create(dead_id="deep-args", arguments=nested(990), kwargs={}, payload="[]",
                                             reason="arguments_mismatch", died_at=timezone.now()))
    client = client_for(manager)
    listing = client.get(LIST)
    assert listing.status_code == 200
    for obj in poison:
        page = client.get(detail(obj))
        assert page.status_code == 200, obj.dead_id
    assert "\\ud800" in client.get(detail(poison[1])).content.decode()  # shown as stored
    assert "[truncated: 2000000 characters in all]" in client.get(detail(poison[3])).content.decode()


@pytest.mark.django_db
def test_viewer_sees_rows_but_no_actions(rows, broker):
    client = client_for(user("viewer", "view"))
    page = client.get(LIST)
    assert page.status_code == 200 and b"card declined" in page.content
    assert b"Retry selected dead jobs" not in page.content
    assert b"Delete selected" not in page.content
    # With no action allowed the list has no action form: a forged POST just shows the list.
    assert action(client, "retry_selected", [rows[0].pk]).status_code == 200
    assert action(client, "delete_selected", [rows[0].pk], post="yes").status_code == 200
    assert client.post(reverse("admin:django_async_jobs_deadjob_delete", args=[rows[0].pk]), {"post": "yes"}).status_code == 403
    assert DeadJob.objects.count() == 4
    assert broker.queue_size("default") == 0


# -- retry ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_retry_action(rows, manager, broker):
    client = client_for(manager)
    response = action(client, "retry_selected", [rows[0].pk, rows[1].pk, rows[3].pk])
    assert response.status_code == 200
    msgs = messages_of(response)
    assert "Retried 2 dead jobs." in msgs
    assert any("malformed payload" in m and "a4" in m for m in msgs)
    assert sorted(DeadJob.objects.values_list("dead_id", flat=True)) == ["a3", "a4"]
    [charge] = [json.loads(p) for p in broker.redis.zrange(broker.keys.queue("default"), 0, -1)]
    assert charge["jid"] == "job-a1" and "executions" not in charge and "retry_count" not in charge
    assert broker.queue_size("notifications") == 1


@pytest.mark.django_db
def test_retry_action_needs_change_permission(rows, broker):
    client = client_for(user("deleter", "view", "delete"))
    page = client.get(LIST)
    assert b"Retry selected dead jobs" not in page.content and b"Delete selected dead jobs" in page.content
    response = action(client, "retry_selected", [rows[0].pk])
    assert "No action selected." in messages_of(response)
    assert DeadJob.objects.count() == 4 and broker.queue_size("default") == 0


@pytest.mark.django_db
def test_retry_and_delete_need_csrf_tokens(rows, manager, broker):
    client = Client(enforce_csrf_checks=True)
    client.force_login(manager)
    data = {"action": "retry_selected", "_selected_action": [rows[0].pk], "index": "0"}
    assert client.post(LIST, data).status_code == 403
    assert DeadJob.objects.count() == 4
    token = client.get(LIST).context["csrf_token"]
    assert client.post(LIST, {**data, "csrfmiddlewaretoken": str(token)}).status_code == 302
    assert DeadJob.objects.count() == 3 and broker.queue_size("default") == 1


@pytest.mark.django_db
@pytest.mark.skipif(not CHANGE_FORM_ACTIONS, reason="detail-page actions arrived in Django 6.1")
def test_retry_from_the_detail_page(rows, manager, broker):
    client = client_for(manager)
    page = client.get(detail(rows[0]))
    assert b"Retry selected dead jobs" in page.content
    response = client.post(detail(rows[0]), {
        "CHANGE_FORM-action": "retry_selected", "_selected_action": [rows[0].pk], "index": "0",
    })
    assert response.status_code == 302 and response["Location"] == LIST
    assert not DeadJob.objects.filter(pk=rows[0].pk).exists()
    assert broker.queue_size("default") == 1


@pytest.mark.django_db
def test_retry_ten_thousand_rows_across_pages(manager, broker, capsys):
    count = 10_000
    DeadJob.objects.bulk_create([
        build_row(f"d{i}", json.dumps({"dead_id": f"d{i}", "job_id": f"j{i}", "reason": "retries_exhausted",
                                       "died_at": time.time(), "payload": payload(f"j{i}")}))
        for i in range(count)
    ], batch_size=1000)
    client = client_for(manager)
    first_page = client.get(LIST).context["cl"].result_list
    assert len(first_page) == DeadJobAdmin.list_per_page < count
    started = time.perf_counter()
    response = action(client, "retry_selected", [first_page[0].pk], select_across="1")
    elapsed = time.perf_counter() - started
    with capsys.disabled():
        sys.stdout.write(f"\n[retry action: {count} rows in {elapsed:.2f}s]\n")
    assert f"Retried {count} dead jobs." in messages_of(response)
    assert DeadJob.objects.count() == 0
    assert broker.queue_size("default") == count
    assert elapsed < 60


# -- delete -------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_delete_needs_delete_permission(rows, broker):
    changer = client_for(user("changer", "view", "change"))
    page = changer.get(LIST)
    assert b"Delete selected dead jobs" not in page.content and b"Retry selected dead jobs" in page.content
    response = action(changer, "delete_selected", [rows[0].pk], post="yes")
    assert "No action selected." in messages_of(response)
    assert changer.get(reverse("admin:django_async_jobs_deadjob_delete", args=[rows[0].pk])).status_code == 403
    assert DeadJob.objects.count() == 4

    deleter = client_for(user("deleter", "view", "delete"))
    response = action(deleter, "delete_selected", [rows[0].pk, rows[1].pk], post="yes")
    assert "Successfully deleted 2 dead jobs." in messages_of(response)
    assert DeadJob.objects.count() == 2
    assert broker.queue_size("default") == 0


def test_the_error_column_names_the_class_once(manager, db):
    """The list shows "Class: message"; a message that already starts with its class's name is
    shown as it is, not as "Class: Class: message"."""
    row("e1", error_class="carrier.CarrierServerError", message="503 from the carrier")
    row("e2", error_class="carrier.CarrierServerError", message="CarrierServerError: 503 again")
    from django.utils.html import strip_tags

    page = strip_tags(client_for(manager).get(reverse("admin:django_async_jobs_deadjob_changelist")).content.decode())
    assert "CarrierServerError: 503 from the carrier" in page
    assert "CarrierServerError: 503 again" in page
    assert "CarrierServerError: CarrierServerError" not in page
