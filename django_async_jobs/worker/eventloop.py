"""The worker's event loop: ``async def perform`` jobs run here, not on a processor thread.

One loop per worker process, in its own thread, started by the first async job. A processor
thread hands an async job over and goes back to fetching, so a job awaiting a slow API holds
no thread. ``ASYNC_CONCURRENCY`` bounds how many run at once; past it, the handing thread
waits for a free place (back-pressure instead of an unbounded pile of coroutines).

A job runs here when every layer of its worker chain has an ``aperform`` (``processor``). The
layers' synchronous work that may block (the retry rules with their handlers, callbacks,
closing database connections) goes to a thread pool, never on the loop itself.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

from django_async_jobs.worker.processor import Settlement, dead_record, settle, worker_error

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

    def submit(self, job: Any, raw: bytes, arun: Callable[[Any], Awaitable[Any]]) -> None:
        """Start ``arun(job)`` (the job's chain on the loop); blocks only while ``limit`` jobs
        already run."""
        self._places.acquire()
        loop = self._ensure_loop()
        with self._lock:
            self._running += 1
        future = asyncio.run_coroutine_threadsafe(self._run(job, raw, arun), loop)
        self._futures.add(future)
        future.add_done_callback(self._done)

    async def _run(self, job: Any, raw: bytes, arun: Callable[[Any], Awaitable[Any]]) -> None:
        try:
            await arun(job)
            settlement = settle(job, raw)
        except (asyncio.CancelledError, GeneratorExit):
            raise  # the worker is stopping: the job stays in flight and is handed back
        except Exception as failure:
            # Death handlers and signal receivers are synchronous code: not on the loop.
            loop = asyncio.get_running_loop()
            try:
                settlement = await loop.run_in_executor(None, worker_error, job, raw, failure)
            except Exception as exc:  # the thread pool is gone (interpreter exit): never strand the job
                logger.exception("settling async job %s failed; it is set aside as a dead job", job.fetched_as)
                settlement = dead_record(job.fetched_as, raw, "worker_error", exc, job.payload)
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
