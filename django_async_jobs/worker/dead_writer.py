"""Writes staged dead jobs from Redis to the database, and prunes old ones, in every worker.

Its own thread, because a database outage can make a write hang for a connect timeout: the
poller and heartbeat must not wait behind it. While the database is down the records stay
staged in Redis; this thread keeps trying and writes them when it is back. A short lease in
Redis lets one process at a time do each chore, so workers do not queue up on the same rows.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import redis
from django.db import DatabaseError, close_old_connections

from django_async_jobs.deadjobs import flush_staged, prune

logger = logging.getLogger("django_async_jobs.worker")

INTERVAL = 2.0
FLUSH_LEASE = 30.0  # seconds; longer than one flush pass takes
PRUNE_EVERY = 3600.0
PRUNE_RETRY_MS = 60_000


class DeadWriter(threading.Thread):
    def __init__(self, broker: Any, stopping: threading.Event) -> None:
        super().__init__(name="async-jobs-dead-writer", daemon=True)
        self.broker = broker
        self.stopping = stopping
        self.token = f"{id(self)}:{time.time()}"

    def _lease(self, chore: str, seconds: float) -> bool:
        taken, _ = self.broker.take_lock(self.broker.keys.lease(chore), self.token, int(seconds * 1000))
        return taken

    def _release(self, chore: str) -> None:
        self.broker.unlock(self.broker.keys.lease(chore), self.token)  # only our own lease

    def run(self) -> None:
        while not self.stopping.wait(INTERVAL):
            try:
                if self.broker.staged_dead() and self._lease("dead-flush", FLUSH_LEASE):
                    try:
                        flush_staged(self.broker)
                    finally:
                        self._release("dead-flush")
                # Held for the whole hour on purpose: one prune per hour across all workers.
                if self._lease("dead-prune", PRUNE_EVERY):
                    try:
                        pruned = prune()
                    except DatabaseError as exc:
                        # Try again in a minute, not at every beat, while the database is away.
                        self.broker.redis.pexpire(self.broker.keys.lease("dead-prune"), PRUNE_RETRY_MS)
                        logger.warning("pruning dead jobs failed, retrying in a minute: %s", exc)
                        continue
                    if pruned:
                        logger.info("pruned %d dead job(s) older than DEAD_JOB_RETENTION", pruned)
            except redis.RedisError as exc:
                logger.warning("reading staged dead jobs failed: %s", exc)
            except Exception:
                logger.exception("writing or pruning dead jobs failed; staged records stay in Redis")
            finally:
                close_old_connections()
