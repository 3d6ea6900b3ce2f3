"""One worker process: its threads, its signals, and how it stops.

Threads: ``concurrency`` processors, which take turns fetching (see ``Fetcher``), an acker
(batched settlements), a poller (scheduled/retry), a heart (heartbeat + recovery) and a dead
writer (staged dead jobs -> database). Signals: TERM/INT stop gracefully,
a second INT exits at once, TSTP quiets.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
from typing import Any

import redis

from django_async_jobs.broker.client import Broker, get_broker
from django_async_jobs.conf import QueueSpec, Settings, get_settings
from django_async_jobs.worker.acker import Acker
from django_async_jobs.worker.dead_writer import DeadWriter
from django_async_jobs.worker.eventloop import EventLoop
from django_async_jobs.worker.fetcher import Fetcher, QueueOrder
from django_async_jobs.worker.poller import Poller
from django_async_jobs.worker.processor import Settlement, dead_record, process
from django_async_jobs.worker.recovery import Heart

logger = logging.getLogger("django_async_jobs.worker")

SIGNAL_CHECK = 0.1  # seconds: how soon the main loop acts on a signal


def _rss() -> int:
    """Resident memory in bytes, shown on the dashboard (Linux's /proc; 0 where there is none)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class Worker:
    def __init__(
        self,
        queues: QueueSpec | None = None,
        concurrency: int | None = None,
        settings: Settings | None = None,
        broker: Broker | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self.broker = broker or get_broker()
        self.queues = queues or self.settings.queues
        self.concurrency = concurrency or self.settings.concurrency
        self.process_id = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self.started_at = time.time()
        self.stopping = threading.Event()  # no more fetching
        self.stopped = threading.Event()  # run() has returned
        self.quiet = False
        self._busy = 0
        self._busy_lock = threading.Lock()
        self._running: dict[str, float] = {}  # in-flight field -> start time, for the dashboard
        self._interrupts = 0
        self._stop_requested = threading.Event()
        self._stop_signalled = False  # set by signal handlers only; run() acts on them
        self._quiet_signalled = False
        self.acker = Acker(self.broker, self.process_id)
        self.event_loop = EventLoop(self.settings.async_concurrency, self.acker.add)
        self.fetcher = Fetcher(
            self.broker, self.process_id, QueueOrder(self.queues), self.concurrency, self.stopping,
            prefetch=self.settings.prefetch,
        )
        self.processors = [
            threading.Thread(target=self._process_loop, name=f"async-jobs-processor-{i}", daemon=True)
            for i in range(self.concurrency)
        ]
        s = self.settings
        self.heart = Heart(
            self.broker, self.process_id, self.info, s.heartbeat_interval, s.heartbeat_timeout,
            s.max_recoveries, self.stopped, on_signal=self._on_signal,
        )
        self.poller = Poller(self.broker, s.poll_interval, self.stopping)
        self.dead_writer = DeadWriter(self.broker, self.stopped)

    # -- state -------------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        with self._busy_lock:
            running = json.dumps(self._running)
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "queues": ",".join(self.queues.names),
            "concurrency": self.concurrency,
            "started_at": self.started_at,
            "busy": self._busy,
            "quiet": int(self.quiet),
            "rss": _rss(),
            "running": running,
        }

    @property
    def busy(self) -> int:
        return self._busy

    # -- threads -----------------------------------------------------------------------------

    def _process_loop(self) -> None:
        log_jobs = self.settings.log_jobs
        while True:
            item = self.fetcher.take()
            if item is None:
                return
            field, raw = item
            if self.stopping.is_set():
                # Fetched but not started when the stop came: hand it back untouched.
                self.acker.add(Settlement("requeue", field))
                self.fetcher.release_slot()
                continue
            with self._busy_lock:
                self._busy += 1
                self._running[field] = time.time()
            try:
                settlement = process(field, raw, log_jobs, self.event_loop)
            except BaseException as exc:
                # process() settles every Exception; this is a SystemExit or the like from a
                # signal receiver or handler around the job. Handing the job back would run it
                # into the same again, and leaving it in flight would strand it: set it aside.
                logger.exception("processor crashed on job %s; it is set aside as a dead job", field)
                settlement = dead_record(field, raw, "worker_error", exc, None)
            finally:
                with self._busy_lock:
                    self._busy -= 1
                    self._running.pop(field, None)
            if settlement is not None:
                self.acker.add(settlement)
            self.fetcher.release_slot()

    # -- life cycle --------------------------------------------------------------------------

    def start(self) -> bool:
        """Register, then start the threads; False if a stop signal came before Redis did."""
        backoff = 0.1
        while True:  # register before fetching: in-flight jobs must belong to a live process
            try:
                self.heart.beat()
                break
            except redis.RedisError as exc:
                if self._stop_signalled or self._stop_requested.is_set():
                    return False  # nothing fetched yet, so nothing to hand back
                logger.warning("cannot reach Redis, retrying in %.1fs: %s", backoff, exc)
                self._pause(backoff)  # a TERM while Redis is away still stops us
                backoff = min(backoff * 2, 5.0)
        for thread in (self.acker, *self.processors, self.heart, self.poller, self.dead_writer):
            thread.start()
        logger.info(
            "worker %s started: queues=%s (%s) concurrency=%d",
            self.process_id, ",".join(self.queues.names),
            "strict" if self.queues.strict else "weighted", self.concurrency,
        )
        return True

    def set_quiet(self) -> None:
        """Stop fetching; running jobs finish (SIGTSTP, or the dashboard's Quiet)."""
        self.quiet = True
        self.stopping.set()
        logger.info("worker %s is quiet: no new jobs will be fetched", self.process_id)

    def _on_signal(self, name: str) -> None:
        """Quiet or stop sent from the dashboard; a stop is the same request as SIGTERM."""
        logger.info("worker %s received %r from the dashboard", self.process_id, name)
        if name == "quiet":
            self.set_quiet()
        elif name == "stop":
            self._stop_requested.set()
            self.stopping.set()

    def stop(self, timeout: float | None = None) -> None:
        """Graceful stop: wait up to ``timeout`` for running jobs, hand back the rest."""
        if self.stopped.is_set():
            return
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        self.stopping.set()
        self.fetcher.stop(len(self.processors), 2)  # a fetch in progress lands before the release
        began = time.monotonic()
        deadline = began + timeout
        for thread in self.processors:
            thread.join(max(0.0, deadline - time.monotonic()))
        unfinished = sum(1 for t in self.processors if t.is_alive())
        unfinished += self.event_loop.stop(max(0.0, deadline - time.monotonic()))
        self.acker.close(timeout=10)
        self.stopped.set()  # the heart stops beating before the process record goes
        if self.heart.is_alive() and threading.current_thread() is not self.heart:
            self.heart.join(5)  # a beat in flight must not land after the release below
        try:
            handed_back = self.broker.release(self.process_id)
        except redis.RedisError as exc:
            handed_back = 0
            logger.error("could not hand jobs back (%s); they will be recovered after the heartbeat timeout", exc)
        if unfinished:
            logger.info(
                "worker %s stopped: %d job(s) still running after SHUTDOWN_TIMEOUT (%.0fs); "
                "%d job(s) handed back to their queues", self.process_id, unfinished, timeout, handed_back,
            )
        else:
            logger.info(
                "worker %s stopped after %.1fs: every running job finished; %d job(s) handed back",
                self.process_id, time.monotonic() - began, handed_back,
            )

    def kill(self) -> None:
        """Exit now without handing anything back: the jobs stay in flight and get recovered."""
        logger.warning("worker %s exiting at once; its jobs will be recovered", self.process_id)
        logging.shutdown()
        os._exit(1)

    def run(self) -> int:
        """Run until a signal stops the process (the ``runworker`` entry point)."""
        self._install_signals()
        if not self.start():
            logger.info("worker %s stopped before it could reach Redis", self.process_id)
            return 0
        try:
            while not (self._stop_signalled or self._stop_requested.is_set()):
                if self._quiet_signalled and not self.quiet:
                    self.set_quiet()
                if self.stopping.is_set() and not self.quiet:
                    break
                time.sleep(SIGNAL_CHECK)
        finally:
            self.stop()
        return 0

    def _pause(self, seconds: float) -> None:
        """Sleep, waking within SIGNAL_CHECK of a stop signal."""
        deadline = time.monotonic() + seconds
        while not self._stop_signalled and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(SIGNAL_CHECK, left))

    def _install_signals(self) -> None:
        # A handler runs in the main thread between any two bytecodes, even inside Event.set()
        # or Event.wait() while they hold the event's lock: a handler that sets an event can
        # deadlock the process (two signals close together do it). Handlers only record the
        # request; run()'s loop acts on it within SIGNAL_CHECK.
        def on_stop(signum: int, frame: Any) -> None:
            if signum == signal.SIGINT:
                self._interrupts += 1
                if self._interrupts > 1:
                    self.kill()
            self._stop_signalled = True

        def on_quiet(signum: int, frame: Any) -> None:
            self._quiet_signalled = True

        signal.signal(signal.SIGTERM, on_stop)
        signal.signal(signal.SIGINT, on_stop)
        signal.signal(signal.SIGTSTP, on_quiet)
