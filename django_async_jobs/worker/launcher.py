"""One worker process: its threads, its signals, and how it stops.

Threads: ``concurrency`` processors, which take turns fetching (see ``Fetcher``), an acker
(batched settlements), a poller (scheduled/retry), a heart (heartbeat + recovery), a dead
writer (staged dead jobs -> database) and, with the outbox in use, a relay per database
(outbox rows -> Redis). Signals: TERM/INT stop gracefully,
a second INT exits at once, TSTP quiets.

A graceful stop hands back what the process still holds. Jobs that never reached a thread go
back as they were; every other one (cut at ``SHUTDOWN_TIMEOUT``, or held by no thread) counts
a recovery, so a job that every stop cuts or that strands every worker ends as a poison pill.
A stop that could not hand its jobs back says so and exits with status 1: they stay in flight
until another worker recovers them.
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

from django_async_jobs import flow, metrics, outbox, resumable
from django_async_jobs.broker.client import Broker, get_broker
from django_async_jobs.conf import QueueSpec, Settings, get_settings
from django_async_jobs.worker.acker import Acker
from django_async_jobs.worker.dead_writer import DeadWriter
from django_async_jobs.worker.eventloop import EventLoop
from django_async_jobs.worker.fetcher import Fetcher, QueueOrder
from django_async_jobs.worker.poller import Poller
from django_async_jobs.worker.processor import Settlement, process
from django_async_jobs.worker.recovery import Heart, Strays
from django_async_jobs.worker.relay import STOP_TIMEOUT, Relay

logger = logging.getLogger("django_async_jobs.worker")

SIGNAL_CHECK = 0.1  # seconds: how soon the main loop acts on a signal
SETTLE_TIMEOUT = 10.0  # seconds a stop waits for the last settlements to reach Redis
RELEASE_TIMEOUT = 5.0  # seconds a stop keeps trying to hand its jobs back
EXIT_UNRELEASED = 1  # runworker's status when a stop left jobs in flight for recovery


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
        self._unstarted: list[str] = []  # fields handed back untouched once stopping
        self._released: bool | None = None  # stop()'s outcome, once it ran
        self.strays = Strays()  # fields a crashed processor thread let go of
        # What a running job may ask of this worker (resumable.py): set in each processor thread.
        self.state = resumable.WorkerState(self.process_id, self.stopping)
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
            s.max_recoveries, self.stopped, on_signal=self._on_signal, strays=self.strays, state=self.state,
        )
        self.poller = Poller(self.broker, s.poll_interval, self.stopping)
        self.dead_writer = DeadWriter(self.broker, self.stopped)
        self.relays = [
            Relay(self.broker, alias, s, self.stopped, self.process_id) for alias in s.outbox_databases
        ] if outbox.in_use() else []

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
        resumable.current_worker.set(self.state)  # this thread's, for every job it runs
        while True:
            item = self.fetcher.take()
            if item is None:
                return
            field, raw = item
            if self.stopping.is_set():
                # Fetched but not started when the stop came: hand it back untouched.
                self._unstarted.append(field)
                self.acker.add(Settlement("requeue", field))
                self.fetcher.release_slot()
                continue
            with self._busy_lock:
                self._busy += 1
                self._running[field] = time.time()
            try:
                settlement = process(field, raw, self.event_loop)
            except BaseException:  # never lose a job to a bug of ours: the heart hands it back
                logger.exception("processor crashed on job %s; it goes back to its queue at the next heartbeat", field)
                self.strays.add(field)
                settlement = None
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
        flow.running_in(self.process_id)  # the places of concurrency limits its jobs take are its own
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
        for thread in (self.acker, *self.processors, self.heart, self.poller, self.dead_writer, *self.relays):
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

    def stop(self, timeout: float | None = None) -> bool:
        """Graceful stop: wait up to ``timeout`` for running jobs, hand back the rest. False when
        it could not: settlements or the hand-back did not reach Redis, and what the process
        held stays in flight until another worker recovers it."""
        if self._released is not None:
            return self._released
        timeout = self.settings.shutdown_timeout if timeout is None else timeout
        self.stopping.set()
        self.fetcher.stop(len(self.processors), 2)  # a fetch in progress lands before the release
        began = time.monotonic()
        deadline = began + timeout
        for thread in self.processors:
            thread.join(max(0.0, deadline - time.monotonic()))
        unfinished = sum(1 for t in self.processors if t.is_alive())
        unfinished += self.event_loop.stop(max(0.0, deadline - time.monotonic()))
        settled = self.acker.close(timeout=SETTLE_TIMEOUT)
        if settled:  # else Redis is away: no second wait for it
            self._flush_metrics()
        self.stopped.set()  # the heart stops beating before the process record goes
        if self.heart.is_alive() and threading.current_thread() is not self.heart:
            self.heart.join(5)  # a beat in flight must not land after the release below
        released = self._release([*self._unstarted, *self.fetcher.unstarted()])
        for relay in self.relays:  # its last delete, and the lease handed on
            if relay.is_alive() and threading.current_thread() is not relay:
                relay.join(STOP_TIMEOUT)
        self._released = settled and released is not None
        took = time.monotonic() - began
        if released is None:
            logger.error(
                "worker %s stopped after %.1fs without handing its jobs back: Redis did not answer; "
                "they stay in flight and another worker recovers them after HEARTBEAT_TIMEOUT (%.0fs)",
                self.process_id, took, self.settings.heartbeat_timeout,
            )
            return False
        back, dead = released
        ran = (
            f"{unfinished} job(s) still running after SHUTDOWN_TIMEOUT ({timeout:.0f}s)" if unfinished
            else "every running job finished"
        )
        poison = f"; {dead} set aside as poison pill(s) (MAX_RECOVERIES)" if dead else ""
        if not settled:
            logger.error(
                "worker %s stopped after %.1fs: %s, but jobs that finished could not be settled within %.0fs "
                "(Redis did not answer): they were handed back and run again; %d job(s) handed back%s",
                self.process_id, took, ran, SETTLE_TIMEOUT, back, poison,
            )
            return False
        logger.info(
            "worker %s stopped after %.1fs: %s; %d job(s) handed back to their queues%s",
            self.process_id, took, ran, back, poison,
        )
        return True

    def _flush_metrics(self) -> None:
        """The last jobs' metrics, which the heart's next beat would have sent."""
        try:
            metrics.flush(self.broker)
        except Exception as exc:
            logger.warning("the last per-class metrics could not be sent: %s", exc)

    def _release(self, unstarted: list[str]) -> tuple[int, int] | None:
        """Hand back everything held, retrying for RELEASE_TIMEOUT; None if Redis never answered."""
        deadline = time.monotonic() + RELEASE_TIMEOUT
        backoff = 0.1
        while True:
            try:
                return self.broker.release(self.process_id, self.settings.max_recoveries, unstarted)
            except redis.RedisError as exc:
                if time.monotonic() + backoff > deadline:
                    logger.error("could not hand jobs back: %s", exc)
                    return None
                logger.warning("handing jobs back failed, retrying in %.1fs: %s", backoff, exc)
                time.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    def kill(self) -> None:
        """Exit now without handing anything back: the jobs stay in flight and get recovered."""
        logger.warning("worker %s exiting at once; its jobs will be recovered", self.process_id)
        logging.shutdown()
        os._exit(1)

    def run(self) -> int:
        """Run until a signal stops the process (the ``runworker`` entry point). Returns the
        exit status: 0, or EXIT_UNRELEASED when the stop left jobs in flight for recovery."""
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
            released = self.stop()
        return 0 if released else EXIT_UNRELEASED

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
