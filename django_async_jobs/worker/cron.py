"""The recurring-jobs clock of one worker process, driven by the poller thread.

Each process keeps the next tick of every entry and, when it comes, asks Redis to enqueue it;
the Lua step lets exactly one process win per tick. Ticks that passed while no worker ran are
skipped unless the entry says ``"catch_up": "last"`` (then the most recent one runs once).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import redis

from django_async_jobs import cron, locks

logger = logging.getLogger("django_async_jobs.worker")


class CronScheduler:
    def __init__(self, broker: Any, entries: list[cron.Entry], clock: Callable[[], float] = time.time) -> None:
        self.broker = broker
        self.entries = entries
        self.clock = clock
        started = clock()
        self.next = {entry.name: entry.next_after(started) for entry in entries}
        self.catching_up = [entry for entry in entries if entry.catch_up == "last"]

    @classmethod
    def from_settings(cls, broker: Any) -> CronScheduler | None:
        """None when ``RECURRING`` is empty: the poller then pays nothing for cron."""
        entries = cron.entries()
        return cls(broker, entries) if entries else None

    def run_due(self) -> float:
        """Enqueue what is due now; returns seconds until the next tick of any entry.

        A Redis error propagates (the poller backs off and calls again: the tick stays due).
        """
        now = self.clock()
        while self.catching_up:
            entry = self.catching_up[0]
            self._enqueue(entry, entry.latest_until(now))
            self.catching_up.pop(0)
        for entry in self.entries:
            if self.next[entry.name] <= now:
                tick = entry.latest_until(now)
                if tick > self.next[entry.name]:
                    logger.warning("recurring %s: ticks before %s were missed (worker busy or Redis away)", entry.name, tick)
                self._enqueue(entry, tick)
                self.next[entry.name] = entry.next_after(now)
        return max(0.0, min(self.next.values()) - self.clock())

    def _enqueue(self, entry: cron.Entry, tick: float) -> None:
        try:
            job_id = cron.enqueue_tick(entry, tick, self.broker)
        except redis.RedisError:
            raise
        except locks.LockConflict as exc:  # on_conflict = "raise": worth a line, not a traceback
            logger.warning("recurring %s: tick %s not enqueued: %s", entry.name, tick, exc)
            return
        except Exception:  # a broken entry must not stop the poller or the other entries
            logger.exception("recurring %s: enqueueing the tick %s failed", entry.name, tick)
            return
        if job_id:
            logger.info("recurring %s: enqueued %s for tick %s", entry.name, job_id, tick)
