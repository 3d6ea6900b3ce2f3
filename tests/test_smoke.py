import time

from django_async_jobs.worker.launcher import Worker
from tests.testapp.jobs import IncrJob


def test_enqueue_and_run(broker):
    jobs = [IncrJob.perform_later("t:count") for _ in range(50)]
    assert all(j.job_id for j in jobs)
    assert broker.queue_size("default") == 50
    worker = Worker()
    worker.start()
    try:
        deadline = time.time() + 5
        while time.time() < deadline and int(broker.redis.get("t:count") or 0) < 50:
            time.sleep(0.01)
    finally:
        worker.stop()
    assert int(broker.redis.get("t:count")) == 50
    assert broker.queue_size("default") == 0
    assert broker.stat("processed") == 50
    broker.redis.delete("t:count")
