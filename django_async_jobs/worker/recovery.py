"""Heartbeats, and the recovery of jobs held by processes that stopped beating.

Every live process both beats and looks for the dead: no single janitor to lose. Recovery is
one Lua step, so two processes recovering at once cannot hand back a job twice.

A live process's own strays (jobs in its in-flight hash that a crashed processor thread let go
of) go back with its next beat, counted as a recovery like a dead process's jobs: a job that
keeps doing it ends as a poison pill instead of sitting in flight until the process stops.

Each beat also sends the process's buffered per-class metrics (``metrics.flush``): one round
trip a beat, none per job.

After each beat the heart also learns which of the process's jobs were cancelled
(``resumable.WorkerState.refresh``): the jobs themselves then see it without a round trip.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from django_async_jobs import flow, locks, metrics, resumable
from django_async_jobs.worker.logs import log_failure

logger = logging.getLogger("django_async_jobs.worker")


class Strays:
    """In-flight fields of this process that none of its threads holds any more."""

    def __init__(self) -> None:
        self._fields: set[str] = set()
        self._lock = threading.Lock()

    def add(self, field: str) -> None:
        with self._lock:
            self._fields.add(field)

    def pending(self) -> list[str]:
        with self._lock:
            return list(self._fields)

    def done(self, fields: list[str]) -> None:
        with self._lock:
            self._fields.difference_update(fields)


class Heart(threading.Thread):
    def __init__(
        self,
        broker: Any,
        process_id: str,
        info: Callable[[], dict[str, Any]],
        interval: float,
        timeout: float,
        max_recoveries: int,
        stopping: threading.Event,
        on_signal: Callable[[str], None] | None = None,
        strays: Strays | None = None,
        state: resumable.WorkerState | None = None,
    ) -> None:
        super().__init__(name="async-jobs-heartbeat", daemon=True)
        self.broker = broker
        self.process_id = process_id
        self.info = info
        self.interval = interval
        self.timeout = timeout
        self.max_recoveries = max_recoveries
        self.stopping = stopping
        self.on_signal = on_signal
        self.strays = strays or Strays()
        self.state = state  # told, each beat, which of the process's jobs were cancelled

    def beat(self) -> None:
        stranded = self.strays.pending()
        back, dead = self.broker.heartbeat(
            self.process_id, self.info(), ttl=self.timeout * 2, stranded=stranded, max_recoveries=self.max_recoveries
        )
        if stranded:
            self.strays.done(stranded)
            logger.warning(
                "handed back %d job(s) that no thread of this process held, counted as recoveries; "
                "%d poison pill(s) set aside", back, dead,
            )
        locks.renew_held()  # a unique job running longer than its lock_ttl keeps its locks
        # The dashboard's quiet/stop reaches the process here, on any host, within one beat.
        signal = self.broker.take_signal(self.process_id) if self.on_signal else None
        if signal:
            self.on_signal(signal)

    def recover(self) -> None:
        gone, requeued, dead = self.broker.recover(self.timeout, self.max_recoveries)
        if gone:
            logger.warning(
                "recovered %d job(s) from %d stopped worker process(es); %d poison pill(s) set aside",
                requeued, gone, dead,
            )
        # Places of concurrency limits freed without a job finishing (a process taken for dead,
        # a duration up): blocked jobs go to their queues. Only where a class has a limit.
        if flow.limited_classes():
            moved = flow.sweep_blocked(self.broker, self.timeout)
            if moved:
                logger.info("moved %d blocked job(s) to their queues: places of their limits came free", moved)

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            try:
                self.beat()
                self.recover()
                if self.state is not None:
                    self.state.refresh(self.broker)
            except Exception as exc:  # never end the thread: a process that stops beating is taken for dead
                log_failure(logger, exc, "heartbeat failed")
            try:  # apart: whatever befalls the metrics, the beat and the recovery go on
                metrics.flush(self.broker)
            except Exception as exc:
                log_failure(logger, exc, "sending the per-class metrics failed; they wait for the next beat")
