from __future__ import annotations

from celery import Celery

from bench.config import REDIS_DB, redis_url
from bench.jobbody import record

DB = REDIS_DB["celery"]

app = Celery("bench", broker=redis_url(DB))
app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True)


@app.task(name="bench.incr")
def incr(enqueued_at: float) -> None:
    record(DB, enqueued_at)
