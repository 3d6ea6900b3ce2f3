from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from bench.config import REDIS_DB, REDIS_HOST, REDIS_PORT
from bench.jobbody import record

DB = REDIS_DB["dramatiq"]

broker = RedisBroker(host=REDIS_HOST, port=REDIS_PORT, db=DB)
dramatiq.set_broker(broker)


@dramatiq.actor(max_retries=0)
def incr(enqueued_at: float) -> None:
    record(DB, enqueued_at)
