"""Settles finished jobs in batches: whatever finished since the last round trip goes in one.

Processor threads never wait on Redis to acknowledge; if Redis is away, settlements wait here
(the jobs stay in the in-flight hash meanwhile, so a crash re-runs them rather than losing them).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from django_async_jobs.worker.logs import log_failure
from django_async_jobs.worker.processor import Settlement

logger = logging.getLogger("django_async_jobs.worker")

BATCH = 500
# When few settlements are waiting, wait this long for more before the round trip: a busy
# worker then settles tens of jobs per call instead of one or two.
LINGER = 0.002
LINGER_BELOW = 32


class Acker(threading.Thread):
    def __init__(self, broker: Any, process_id: str) -> None:
        super().__init__(name="async-jobs-acker", daemon=True)
        self.broker = broker
        self.process_id = process_id
        self.pending: queue.SimpleQueue[Settlement | None] = queue.SimpleQueue()
        self.idle = threading.Event()
        self.idle.set()

    def add(self, settlement: Settlement) -> None:
        self.idle.clear()
        self.pending.put(settlement)

    def close(self, timeout: float) -> bool:
        """Settle what is pending and stop; False if Redis did not take it in time."""
        self.pending.put(None)
        self.join(timeout)
        return not self.is_alive()

    def run(self) -> None:
        closing = False
        while not closing:
            first = self.pending.get()
            batch: list[Settlement] = []
            if first is None:
                closing = True
            else:
                batch.append(first)
            closing = self._drain(batch) or closing
            if batch and not closing and len(batch) < LINGER_BELOW:
                time.sleep(LINGER)
                closing = self._drain(batch)
            if batch:
                self._settle(batch)
            if self.pending.empty():
                self.idle.set()

    def _drain(self, batch: list[Settlement]) -> bool:
        """Move what is pending into ``batch``; True when the close marker came."""
        while len(batch) < BATCH:
            try:
                item = self.pending.get_nowait()
            except queue.Empty:
                return False
            if item is None:
                return True
            batch.append(item)
        return False

    def _settle(self, batch: list[Settlement]) -> None:
        ops = [s.args() for s in batch]
        keys = [key for s in batch if s.keys for key in s.keys]
        backoff = 0.1
        while True:
            try:
                self.broker.settle(self.process_id, ops, keys)
                return
            except Exception as exc:  # never end the thread: the jobs stay in flight meanwhile
                log_failure(logger, exc, "settling %d jobs failed, retrying in %.1fs", len(batch), backoff)
                threading.Event().wait(backoff)
                backoff = min(backoff * 2, 5.0)
