"""Writes staged dead jobs from Redis to the database, in every worker process.

Its own thread, because a database outage can make a write hang for a connect timeout: the
poller and heartbeat must not wait behind it. While the database is down the records stay
staged in Redis; this thread keeps trying and writes them when it is back.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import redis
from django.db import close_old_connections

logger = logging.getLogger("django_async_jobs.worker")

INTERVAL = 2.0


class DeadWriter(threading.Thread):
    def __init__(self, broker: Any, stopping: threading.Event) -> None:
        super().__init__(name="async-jobs-dead-writer", daemon=True)
        self.broker = broker
        self.stopping = stopping

    def run(self) -> None:
        from django_async_jobs.deadjobs import flush_staged

        while not self.stopping.wait(INTERVAL):
            try:
                if self.broker.redis.hlen(self.broker.keys.dead):
                    flush_staged(self.broker)
            except redis.RedisError as exc:
                logger.warning("reading staged dead jobs failed: %s", exc)
            except Exception:
                logger.exception("writing dead jobs failed; they stay staged in Redis")
            finally:
                close_old_connections()
