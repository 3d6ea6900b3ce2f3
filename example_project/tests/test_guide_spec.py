"""The guide's ``TaskNotificationJob`` spec ("Testing Jobs"), written with the library's test
helpers: the ``async_jobs`` fixture (pytest plugin) puts jobs in test mode for each test."""

import pytest

from deliveries.jobs import TaskNotificationJob
from deliveries.models import OutboxMessage, Task

pytestmark = pytest.mark.django_db


def test_sends_notification(task):
    TaskNotificationJob.perform_now(task.pk)

    sms = OutboxMessage.objects.get(kind="task_created")
    assert sms.channel == OutboxMessage.Channel.SMS
    assert sms.to == task.recipient.phone
    assert task.tracking_number in sms.body


def test_is_idempotent(task):
    TaskNotificationJob.perform_now(task.pk)
    TaskNotificationJob.perform_now(task.pk)  # the second call must not send again

    assert OutboxMessage.objects.filter(kind="task_created").count() == 1


def test_raises_when_not_found():
    with pytest.raises(Task.DoesNotExist):
        TaskNotificationJob.perform_now(0)


def test_queues_on_correct_queue(task, async_jobs):
    TaskNotificationJob.perform_later(task.pk)

    async_jobs.assert_enqueued(TaskNotificationJob, args=[task.pk], queue="notifications", count=1)
    assert not OutboxMessage.objects.exists()  # enqueued, not run
    async_jobs.perform_enqueued_jobs()
    async_jobs.assert_performed(TaskNotificationJob, args=[task.pk])
    assert OutboxMessage.objects.filter(kind="task_created", to=task.recipient.phone).count() == 1
