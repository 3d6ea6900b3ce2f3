"""The worker's event loop: ``async def perform`` jobs run here, not on a processor thread.

One loop per worker process, in its own thread, started by the first async job. A processor
thread hands an async job over and goes back to fetching, so a job awaiting a slow API holds
no thread. ``ASYNC_CONCURRENCY`` bounds how many run at once; past it, the handing thread
waits for a free place (back-pressure instead of an unbounded pile of coroutines).

Settling (retry rules, handlers, signals) is synchronous code that may touch the database, so
it runs in the loop's thread pool, never on the loop itself. The database connections a job's
async ORM calls opened are closed after it as after a synchronous job.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from asgiref.sync import sync_to_async
from django.db import close_old_connections

if TYPE_CHECKING:
    from django_async_jobs.worker.processor import Settlement, Started

logger = logging.getLogger("django_async_jobs.worker")


class EventLoop:
    def __init__(self, limit: int, on_settled: Callable[[Settlement], None]) -> None:
        if limit < 1:
            raise ValueError(f"ASYNC_CONCURRENCY must be a positive integer, got {limit!r}.")
        self.on_settled = on_settled
        self._places = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._running = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._futures: set[object] = set()

    @property
    def running(self) -> int:
        return self._running

    def _ensure_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                self._thread = threading.Thread(
                    target=loop.run_forever, name="async-jobs-event-loop", daemon=True
                )
                self._thread.start()
                self._loop = loop
            return self._loop

    def submit(self, started: Started) -> None:
        """Start ``started``'s coroutine; blocks only while ``limit`` jobs already run."""
        self._places.acquire()
        loop = self._ensure_loop()
        with self._lock:
            self._running += 1
        future = asyncio.run_coroutine_threadsafe(self._run(started), loop)
        self._futures.add(future)
        future.add_done_callback(self._done)

    async def _run(self, started: Started) -> None:
        from django_async_jobs.worker.processor import dead_record, finish

        error: BaseException | None = None
        try:
            await started.job._aperform_now()
        except (asyncio.CancelledError, GeneratorExit):
            raise  # the worker is stopping: the job stays in flight and is handed back
        except BaseException as exc:  # SystemExit too: asyncio would re-raise it and end the loop
            error = exc
        try:
            # The async ORM runs in asgiref's thread for sync code, not in this one: close what
            # the job opened there (CONN_MAX_AGE), as Django does after an async request.
            await sync_to_async(close_old_connections)()
        except Exception:
            logger.exception("closing database connections after async job %s failed", started.field)
        loop = asyncio.get_running_loop()
        try:
            settlement = await loop.run_in_executor(None, finish, started, error)
        except Exception as exc:  # the thread pool is gone (interpreter exit): never strand the job
            logger.exception("settling async job %s failed; it is set aside as a dead job", started.field)
            settlement = dead_record(started.field, started.raw, "worker_error", exc, started.job.payload)
        self.on_settled(settlement)

    def _done(self, future: object) -> None:
        self._futures.discard(future)
        self._places.release()
        with self._idle:
            self._running -= 1
            self._idle.notify_all()

    def stop(self, timeout: float) -> int:
        """Wait up to ``timeout`` for running jobs, then cancel the rest (they stay in flight,
        and the worker's release hands them back). Returns how many were cancelled."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._running and time.monotonic() < deadline:
                self._idle.wait(max(0.0, deadline - time.monotonic()))
            unfinished = self._running
        for future in list(self._futures):
            future.cancel()  # type: ignore[attr-defined]
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
        return unfinished
