from __future__ import annotations

from bench.config import REDIS_DB
from bench.jobbody import record

DB = REDIS_DB["rq"]


def incr(enqueued_at: float) -> None:
    record(DB, enqueued_at)
