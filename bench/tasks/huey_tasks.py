from __future__ import annotations

from huey import RedisHuey

from bench.config import REDIS_DB, REDIS_HOST, REDIS_PORT
from bench.jobbody import record

DB = REDIS_DB["huey"]

huey = RedisHuey("bench", host=REDIS_HOST, port=REDIS_PORT, db=DB)


@huey.task()
def incr(enqueued_at: float) -> None:
    record(DB, enqueued_at)
