from __future__ import annotations

import logging
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from django_async_jobs import prometheus
from django_async_jobs.conf import get_settings
from django_async_jobs.worker.fetcher import select_queues
from django_async_jobs.worker.launcher import Worker
from django_async_jobs.worker.logs import (
    DEFAULT_FORMAT,
    BatchedStreamHandler,
    JsonFormatter,
    WorkerFormatter,
)
from django_async_jobs.worker.supervisor import Supervisor


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
        parser.add_argument(
            "--metrics-port", type=int, default=None, metavar="PORT",
            help="Serve Prometheus metrics on this port (needs the prometheus extra; with --processes, "
            "PROMETHEUS_MULTIPROC_DIR).",
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
        _configure_logging(options["verbosity"])
        port = options["metrics_port"]
        if port is not None:
            _serve_metrics(port, options["processes"])

        def run_one() -> int:
            return Worker(queues=queues, concurrency=concurrency).run()

        if options["processes"] == 1:
            code = run_one()
        else:
            code = Supervisor(options["processes"], run_one).run()
        sys.exit(code)


def _serve_metrics(port: int, processes: int) -> None:
    """Start the Prometheus endpoint before any worker process exists, so each one counts."""
    if not prometheus.available():
        raise CommandError(f"--metrics-port: {prometheus.MISSING}")
    if not 0 < port < 65536:
        raise CommandError(f"--metrics-port must be a TCP port (1-65535), got {port}.")
    if processes > 1 and prometheus.multiprocess_dir() is None:
        raise CommandError(
            f"--metrics-port with --processes needs {prometheus.MULTIPROC_ENV}: an empty directory (emptied "
            "before each start) where the processes write their metrics for the supervisor to serve."
        )
    try:
        prometheus.serve(port)
    except OSError as exc:
        raise CommandError(f"--metrics-port {port}: {exc}") from exc


def _configure_logging(verbosity: int) -> None:
    """Give the worker's loggers a handler unless the project's LOGGING already did."""
    root = logging.getLogger("django_async_jobs")
    if root.handlers or logging.getLogger().handlers:
        return
    handler = BatchedStreamHandler()
    handler.setFormatter(JsonFormatter() if get_settings().log_format == "json" else WorkerFormatter(DEFAULT_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO if verbosity == 1 else logging.WARNING)
