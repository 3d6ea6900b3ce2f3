"""The one job every system runs: INCR a counter (and note when the first job started).

``enqueued_at`` is 0 for throughput jobs; for latency jobs it is the enqueuer's ``time.time()``,
and the job records how long after that it started.
"""

from __future__ import annotations

import time

import redis

from bench.config import COUNTER_KEY, FIRST_KEY, LATENCY_KEY, REDIS_HOST, REDIS_PORT

_clients: dict[int, redis.Redis] = {}


def client(db: int) -> redis.Redis:
    """One client per process and database (redis-py's pool reconnects after a fork)."""
    conn = _clients.get(db)
    if conn is None:
        conn = _clients[db] = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=db)
    return conn


def record(db: int, enqueued_at: float) -> None:
    started = time.time()
    conn = client(db)
    if enqueued_at:
        conn.rpush(LATENCY_KEY, repr(started - enqueued_at))
    if conn.incr(COUNTER_KEY) == 1:
        conn.set(FIRST_KEY, repr(started))


def sleep_then_record(db: int, seconds: float) -> None:
    """The I/O-bound case: wait like a network call would, then count."""
    time.sleep(seconds)
    record(db, 0.0)
