"""The worker's default log output: lines written in batches, and a cheaper timestamp.

``runworker`` installs these only when the project's LOGGING gives the worker no handler. With
one write per record, every processor thread queues on the handler's lock around a system call
once per job (and the writer then waits for the GIL to come back): on a busy worker that was a
third of the drain rate. Here INFO and DEBUG lines are appended to a buffer under the same lock
and written by one flusher thread, at most ``interval`` after they were logged; a WARNING or
worse is written at once, after what is waiting, so the order of lines holds. Levels, filters
and formatters apply as for any handler. ``flush()`` and ``close()``, which
``logging.shutdown()`` calls at exit, write what is left.

Making and formatting a ``LogRecord`` is most of a line's cost. Where a record would reach only
this handler, with the default format and nothing to filter or enrich it on the way
(``plain_output``), the caller may render the line itself and hand it over: same text, no record.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from typing import TextIO

import redis

# The record attribute that holds a job line's fields (job_log.py with LOG_FORMAT = "json").
JOB_EVENT = "job_event"
FLUSH_INTERVAL = 0.1  # seconds: how late an INFO line may appear
DEFAULT_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"


class BatchedStreamHandler(logging.StreamHandler):
    """A ``StreamHandler`` that writes INFO and DEBUG lines in batches (see the module's doc).

    Usable in LOGGING too: ``"class": "django_async_jobs.worker.logs.BatchedStreamHandler"``.
    """

    def __init__(self, stream: TextIO | None = None, interval: float = FLUSH_INTERVAL) -> None:
        super().__init__(stream)
        self.interval = interval
        self._pending: list[str] = []
        self._due = threading.Event()
        self._pid = -1  # no flusher thread in this process yet

    def emit(self, record: logging.LogRecord) -> None:
        # Handler.handle() holds self.lock around this call.
        try:
            line = self.format(record) + self.terminator
        except Exception:
            self.handleError(record)
            return
        self._add(line, record.levelno >= logging.WARNING)

    def append(self, line: str) -> None:
        """Queue a line rendered by the caller (see ``plain_output``), as ``emit`` would at INFO."""
        with self.lock:
            self._add(line + self.terminator, False)

    def _add(self, line: str, now: bool) -> None:
        """Queue a line, and write at once when ``now``; the caller holds self.lock."""
        if self._pid != os.getpid():
            self._start_flusher()
        self._pending.append(line)
        if now:
            self._write()
        elif not self._due.is_set():
            self._due.set()

    def flush(self) -> None:
        with self.lock:
            self._write()

    def close(self) -> None:
        self.flush()
        super().close()

    def _write(self) -> None:
        """Write what is pending in one call; the caller holds self.lock."""
        if self._pending:
            text = "".join(self._pending)
            self._pending.clear()
            try:
                self.stream.write(text)
            except Exception:
                self.handleError(logging.makeLogRecord({"msg": "%d log line(s) lost", "args": (text.count("\n"),)}))
        if self.stream and hasattr(self.stream, "flush"):
            self.stream.flush()

    def _start_flusher(self) -> None:
        # Lines a forked child inherited are its parent's to write.
        self._pending.clear()
        self._due = threading.Event()
        self._pid = os.getpid()
        threading.Thread(target=self._flush_loop, args=(self._due,), name="async-jobs-log", daemon=True).start()

    def _flush_loop(self, due: threading.Event) -> None:
        while True:
            due.wait()
            time.sleep(self.interval)  # let a batch gather
            due.clear()  # before the write: a line logged from here on sets it again
            self.flush()


class WorkerFormatter(logging.Formatter):
    """``formatTime`` with the default format renders the seconds once a second, not per record."""

    _second: tuple[int, str] = (-1, "")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt or not self.default_msec_format:
            return super().formatTime(record, datefmt)
        return self._asctime(record.created, record.msecs)

    def _asctime(self, created: float, msecs: float) -> str:
        second = int(created)
        cached = self._second
        if cached[0] != second:
            cached = self._second = (second, time.strftime(self.default_time_format, self.converter(second)))
        return self.default_msec_format % (cached[1], msecs)

    def line(self, created: float, level: int, name: str, message: str) -> str:
        """What ``format`` gives, for ``DEFAULT_FORMAT``, to a record of these (logged at
        ``created``, an epoch time) with no exception or stack attached."""
        asctime = self._asctime(created, int((created - int(created)) * 1000))
        return f"{asctime} {os.getpid()} {logging.getLevelName(level)} {name} {message}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (ISO 8601, UTC), level, logger, process, and the job
    line's fields (``JOB_EVENT``) or the message (with the traceback, if any). For LOGGING:
    ``"formatters": {"json": {"()": "django_async_jobs.worker.logs.JsonFormatter"}}``."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
        }
        event = getattr(record, JOB_EVENT, None)
        if isinstance(event, dict):
            data.update(event)
        else:
            data["message"] = record.getMessage()
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False, default=str)


def plain_output(logger: logging.Logger, level: int) -> BatchedStreamHandler | None:
    """The handler a record of ``logger`` at ``level`` would reach, when it is the only one, a
    ``BatchedStreamHandler`` with a ``WorkerFormatter`` of ``DEFAULT_FORMAT``, and no filter,
    record factory or other handler could change or see the record on the way; else None.

    Checked on every call, so a handler or filter added while the worker runs takes effect at
    once. The caller has checked ``logger.isEnabledFor(level)``.
    """
    if logging.getLogRecordFactory() is not logging.LogRecord or not logging.logProcesses:
        return None
    found = None
    node: logging.Logger | None = logger
    while node is not None:
        if node.filters or node.disabled:
            return None
        for handler in node.handlers:
            formatter = handler.formatter
            if (
                found is not None or type(handler) is not BatchedStreamHandler or handler.filters
                or level < handler.level or type(formatter) is not WorkerFormatter
                or formatter._fmt != DEFAULT_FORMAT or formatter.datefmt
            ):
                return None
            found = handler
        if not node.propagate:
            break
        node = node.parent
    return found


def log_failure(logger: logging.Logger, exc: Exception, message: str, *args: object) -> None:
    """How the loops of a worker's threads report a failed round and go on: a Redis error (an
    outage, a timeout) as a warning with its message; anything else, a bug of ours or of the
    client, with its traceback."""
    if isinstance(exc, redis.RedisError):
        logger.warning(message + ": %s", *args, exc)
    else:
        logger.exception(message, *args)
