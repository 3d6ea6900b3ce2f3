"""``runworker --processes N``: forks N worker processes, restarts any that crash, and passes
TERM/INT/TSTP on to them. It holds no jobs and no Redis connection of its own.

Its exit status is its children's: 1 when any of them ended the stop with a failure (jobs left
in flight, a crash, killed by a signal), so a service manager sees what a single worker shows.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from typing import Any

from django.db import connections

from django_async_jobs import prometheus
from django_async_jobs.broker import client

logger = logging.getLogger("django_async_jobs.worker")

RESTART_DELAY = 1.0


class Supervisor:
    def __init__(self, processes: int, run_child: Callable[[], int]) -> None:
        self.processes = processes
        self.run_child = run_child
        self.children: dict[int, int] = {}  # pid -> slot
        self.stopping = False
        self._interrupts = 0

    def _spawn(self, slot: int) -> None:
        connections.close_all()
        client.reset()
        pid = os.fork()
        if pid == 0:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGTSTP, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            code = 1
            try:
                code = self.run_child()
            except BaseException:
                logger.exception("worker process crashed")
            finally:
                logging.shutdown()
                os._exit(code)
        self.children[pid] = slot
        logger.info("supervisor started worker process %d (slot %d)", pid, slot)

    def _forward(self, signum: int, frame: Any) -> None:
        send = signum
        if signum == signal.SIGINT:
            # A Ctrl-C in a terminal reaches the children too (they share our process group), so
            # forwarding it as INT would be their second INT and stop them at once. The first INT
            # goes on as a graceful TERM; a second one stops them at once, as it does one worker.
            self._interrupts += 1
            send = signal.SIGTERM if self._interrupts == 1 else signal.SIGKILL
        if signum in (signal.SIGTERM, signal.SIGINT):
            self.stopping = True
        for pid in list(self.children):
            try:
                os.kill(pid, send)
            except ProcessLookupError:
                pass

    def run(self) -> int:
        result = 0
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGTSTP):
            signal.signal(sig, self._forward)
        for slot in range(self.processes):
            self._spawn(slot)
        while self.children:
            try:
                pid, status = os.wait()
            except ChildProcessError:
                break
            except InterruptedError:
                continue
            slot = self.children.pop(pid, None)
            if slot is None:
                continue
            prometheus.process_gone(pid)
            code = os.waitstatus_to_exitcode(status)
            if self.stopping:
                if code:
                    logger.error("worker process %d exited with status %d", pid, code)
                    result = 1
                else:
                    logger.info("worker process %d exited (0)", pid)
                continue
            logger.error("worker process %d exited unexpectedly (%d); restarting it", pid, code)
            time.sleep(RESTART_DELAY)
            if not self.stopping:
                self._spawn(slot)
        return result
