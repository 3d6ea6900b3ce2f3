"""Jobs use the ORM from worker threads, and the worker closes connections around each job."""

import threading

import pytest
from django.contrib.auth.models import User
from django.db import connection

from django_async_jobs import ApplicationJob
from django_async_jobs.worker.launcher import Worker
from tests.helpers import wait_for

SEEN: list[dict] = []


class CreateUserJob(ApplicationJob):
    def perform(self, username):
        before = connection.connection is None
        User.objects.create(username=username)
        SEEN.append({
            "thread": threading.get_ident(),
            "closed_at_start": before,
            "open_during": connection.connection is not None,
            "count": User.objects.filter(username__startswith="worker-").count(),
        })


@pytest.fixture
def one_thread_worker(broker):
    SEEN.clear()
    worker = Worker(concurrency=1)
    worker.start()
    yield worker
    worker.stop(timeout=2)
    SEEN.clear()


@pytest.mark.django_db(transaction=True)
def test_orm_job_in_a_worker_thread_and_connections_closed_between_jobs(one_thread_worker, broker):
    assert connection.settings_dict["CONN_MAX_AGE"] == 0
    for i in range(3):
        CreateUserJob.perform_later(f"worker-{i}")
    wait_for(lambda: len(SEEN) == 3, 30, "three ORM jobs")
    # The rows are committed and visible from the test's own connection.
    assert sorted(User.objects.filter(username__startswith="worker-").values_list("username", flat=True)) == [
        "worker-0", "worker-1", "worker-2"
    ]
    assert [s["count"] for s in SEEN] == [1, 2, 3]
    assert len({s["thread"] for s in SEEN}) == 1  # one processor thread ran all three
    assert threading.get_ident() not in {s["thread"] for s in SEEN}
    assert all(s["open_during"] for s in SEEN)
    # Each job found the previous job's connection closed: CONN_MAX_AGE=0 means one per job.
    assert all(s["closed_at_start"] for s in SEEN)
    wait_for(lambda: broker.stat("processed") == 3, 30, "the jobs settled")
    assert broker.stat("failed") == 0
