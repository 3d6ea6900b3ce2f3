from django_async_jobs.worker.launcher import Worker
from tests.helpers import wait_for
from tests.testapp.jobs import IncrJob


def test_enqueue_and_run(broker):
    key = f"{broker.keys.prefix}:count"  # the test's own: other test runs share this Redis database
    jobs = [IncrJob.perform_later(key) for _ in range(50)]
    assert all(j.job_id for j in jobs)
    assert broker.queue_size("default") == 50
    worker = Worker()
    worker.start()
    try:
        wait_for(lambda: broker.stat("processed") == 50, 30, "50 jobs settled")
    finally:
        worker.stop()
    assert int(broker.redis.get(key)) == 50
    assert broker.queue_size("default") == 0
    assert broker.stat("processed") == 50
