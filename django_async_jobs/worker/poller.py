"""Moves due scheduled and retry jobs to their queues, in every worker process.

The Lua step says how long until the next due job, so the poller sleeps exactly that long
(capped at ``POLL_INTERVAL``) instead of a beat that grows with the number of processes:
a job is due-to-ready within one round trip of its time at any scale.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from django_async_jobs.broker.client import POLL_BATCH
from django_async_jobs.worker.cron import CronScheduler
from django_async_jobs.worker.logs import log_failure

logger = logging.getLogger("django_async_jobs.worker")


class Poller(threading.Thread):
    def __init__(self, broker: Any, interval: float, stopping: threading.Event) -> None:
        super().__init__(name="async-jobs-poller", daemon=True)
        self.broker = broker
        self.interval = interval
        self.stopping = stopping
        self.cron = CronScheduler.from_settings(broker)  # recurring jobs ride on this loop

    def run(self) -> None:
        backoff = 0.1
        while not self.stopping.is_set():
            try:
                moved, wait = self.broker.poll()
                if self.cron is not None:
                    until_tick = self.cron.run_due()
                    wait = until_tick if wait is None else min(wait, until_tick)
                backoff = 0.1
            except Exception as exc:  # never end the thread
                log_failure(logger, exc, "polling scheduled jobs failed, retrying in %.1fs", backoff)
                self.stopping.wait(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            if moved >= POLL_BATCH:
                continue
            delay = self.interval if wait is None else min(wait, self.interval)
            self.stopping.wait(max(delay, 0.005))
