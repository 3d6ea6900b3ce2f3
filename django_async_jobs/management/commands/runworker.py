from __future__ import annotations

import logging
import queue
import sys
from logging.handlers import QueueHandler, QueueListener
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from django_async_jobs.conf import get_settings
from django_async_jobs.worker.fetcher import select_queues


class Command(BaseCommand):
    help = "Run background job workers: fetch jobs from Redis and perform them."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument(
            "-q", "--queue", action="append", default=[], dest="queues", metavar="NAME[,WEIGHT]",
            help="A queue to work (repeatable; default: every queue in ASYNC_JOBS['QUEUES']).",
        )
        parser.add_argument(
            "-c", "--concurrency", type=int, default=None,
            help="Threads per process (default: ASYNC_JOBS['CONCURRENCY']).",
        )
        parser.add_argument(
            "--processes", type=int, default=1,
            help="Worker processes under one supervisor (default: 1, no supervisor).",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        settings = get_settings()
        try:
            queues = select_queues(settings.queues, options["queues"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        concurrency = options["concurrency"]
        if concurrency is not None and concurrency < 1:
            raise CommandError("--concurrency must be at least 1.")
        if options["processes"] < 1:
            raise CommandError("--processes must be at least 1.")
        pump = _configure_logging(options["verbosity"])

        def run_one() -> int:
            from django_async_jobs.worker.launcher import Worker

            pump.start()  # in this process: a forked child has no thread of its parent's
            try:
                return Worker(queues=queues, concurrency=concurrency).run()
            finally:
                pump.stop()

        if options["processes"] == 1:
            code = run_one()
        else:
            from django_async_jobs.worker.supervisor import Supervisor

            # The supervisor writes its few lines itself: a writer thread here would be forked
            # in the middle of a write, leaving its children a queue lock nobody releases.
            code = Supervisor(options["processes"], run_one).run()
        sys.exit(code)


class _LogPump:
    """Records go through a queue to one writer thread. Ten job threads writing a line each
    per job to one stream queue up on the handler's lock; a queue put does not."""

    def __init__(self, handler: logging.Handler | None) -> None:
        self.handler = handler
        self.queue: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
        self.listener: QueueListener | None = None

    def start(self) -> None:
        if self.handler is not None:
            self.queue = queue.SimpleQueue()  # not the records a fork copied from the parent
            self.listener = QueueListener(self.queue, self.handler)
            self.listener.start()

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()
            self.listener = None


class _PumpHandler(QueueHandler):
    """Closing it (``logging.shutdown()``, also on a worker's immediate exit) writes out what is
    still queued."""

    def __init__(self, pump: _LogPump) -> None:
        super().__init__(pump.queue)
        self.pump = pump

    def emit(self, record: logging.LogRecord) -> None:
        if self.pump.listener is None:  # no writer thread in this process: write it now
            self.pump.handler.handle(record)
        else:
            self.pump.queue.put_nowait(self.prepare(record))

    def close(self) -> None:
        self.pump.stop()
        super().close()


def _configure_logging(verbosity: int) -> _LogPump:
    """Give the worker's loggers a handler unless the project's LOGGING already did."""
    root = logging.getLogger("django_async_jobs")
    if root.handlers or logging.getLogger().handlers:
        return _LogPump(None)
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"))
    pump = _LogPump(handler)
    root.addHandler(_PumpHandler(pump))
    root.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO if verbosity == 1 else logging.WARNING)
    return pump
