"""runworker's default log output: batched writes, same lines, same order, nothing lost or doubled."""

import contextlib
import io
import json
import logging
import os
import sys
import time

import pytest

from django_async_jobs.worker.logs import BatchedStreamHandler, WorkerFormatter
from tests.helpers import wait_for

FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"


@pytest.fixture
def logger():
    log = logging.getLogger("django_async_jobs.test_worker_logs")
    log.propagate = False
    log.setLevel(logging.INFO)
    yield log
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()


def test_info_lines_come_in_a_batch_and_a_warning_at_once_after_them(logger):
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, interval=0.05)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(handler)
    with handler.lock:  # its flusher thread cannot write meanwhile, however slow this thread is
        for i in range(3):
            logger.info("line %d", i)
        logger.debug("below the level")
        assert stream.getvalue() == ""  # not one write per record
    wait_for(lambda: stream.getvalue(), timeout=30, what="the batch")
    assert stream.getvalue() == "INFO line 0\nINFO line 1\nINFO line 2\n"
    logger.info("pending")
    logger.warning("now")
    assert stream.getvalue().endswith("INFO pending\nWARNING now\n")


def test_close_writes_what_is_pending(logger):
    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, interval=60)
    logger.addHandler(handler)
    logger.info("last words")
    handler.close()
    assert stream.getvalue() == "last words\n"


@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_forked_child_writes_its_own_lines_not_its_parents(logger, tmp_path):
    path = tmp_path / "out.log"
    with path.open("a") as stream:
        handler = BatchedStreamHandler(stream, interval=60)
        logger.addHandler(handler)
        logger.info("parent")  # pending when the child forks
        pid = os.fork()
        if pid == 0:
            logger.warning("child")
            os._exit(0)
        os.waitpid(pid, 0)
        logger.removeHandler(handler)
        handler.close()
    assert sorted(path.read_text().splitlines()) == ["child", "parent"]


def test_the_cached_timestamp_reads_as_the_standard_one():
    plain, cached = logging.Formatter(FORMAT), WorkerFormatter(FORMAT)
    for created in (time.time(), 1_700_000_000.999, 1_700_000_001.0):
        record = logging.makeLogRecord({"msg": "m %s", "args": ("x",), "created": created, "msecs": 999.0})
        record.msecs = (created - int(created)) * 1000
        assert cached.format(record) == plain.format(record)


def test_one_info_line_per_job_with_its_fields(broker, caplog):
    from django_async_jobs.serialization import encode_payload
    from django_async_jobs.worker.processor import process
    from tests.testapp.jobs import IncrJob

    job = IncrJob(f"{broker.keys.prefix}:n")
    job.queue_name = "default"
    with caplog.at_level(logging.INFO, logger="django_async_jobs.job"):
        settlement = process(f"{job.job_id}:1", encode_payload(job.serialize()).encode())
    assert settlement.op == "ack"
    [record] = [r for r in caplog.records if r.name == "django_async_jobs.job"]
    assert record.levelno == logging.INFO and record.funcName == "finish"
    assert record.getMessage().startswith(f"finish {IncrJob.job_name} {job.job_id} queue=default elapsed_ms=")
    assert record.getMessage().endswith(" outcome=ok")
    assert (record.job_class, record.job_id, record.queue, record.outcome, record.error) == (
        IncrJob.job_name, job.job_id, "default", "ok", None
    )


@pytest.fixture
def default_output(logger):
    """runworker's own configuration, on the test's logger and its child."""
    from django_async_jobs.worker.logs import DEFAULT_FORMAT

    stream = io.StringIO()
    handler = BatchedStreamHandler(stream, interval=60)
    handler.setFormatter(WorkerFormatter(DEFAULT_FORMAT))
    logger.addHandler(handler)
    return logging.getLogger(f"{logger.name}.job"), handler, stream


@contextlib.contextmanager
def no_capture(logger):
    """pytest adds its capture handlers to loggers that do not propagate, during each test
    phase; set them aside, as a worker has none."""
    others = [h for h in logger.handlers if type(h).__module__.startswith("_pytest")]
    for handler in others:
        logger.removeHandler(handler)
    try:
        yield
    finally:
        for handler in others:
            logger.addHandler(handler)


def test_a_line_rendered_without_a_record_reads_as_the_record_would(default_output):
    from django_async_jobs.worker.logs import plain_output

    child, handler, stream = default_output
    with no_capture(child.parent):
        assert plain_output(child, logging.INFO) is handler
    child.info("finish %s elapsed_ms=%.1f", "x", 1.25)
    before = time.time()
    handler.append(handler.formatter.line(before, logging.INFO, child.name, "finish x elapsed_ms=1.2"))
    handler.flush()
    by_record, by_line = stream.getvalue().splitlines()
    assert by_record.split(" ", 2)[2] == by_line.split(" ", 2)[2]  # pid, level, name, message
    assert by_line.split(" ")[1].startswith(time.strftime("%H:%M", time.localtime(before)))
    record = child.makeRecord(child.name, logging.INFO, __file__, 1, "m %s", ("x",), None)
    record.created, record.msecs = 1_700_000_000.25, 250.0
    assert handler.formatter.format(record) == handler.formatter.line(record.created, logging.INFO, child.name, "m x")


@pytest.mark.parametrize("change", ["logger filter", "handler filter", "second handler", "formatter", "factory"])
def test_anything_that_could_see_or_change_the_record_keeps_the_record(default_output, change, monkeypatch):
    from django_async_jobs.worker.logs import DEFAULT_FORMAT, plain_output

    child, handler, _ = default_output
    if change == "logger filter":
        child.addFilter(lambda record: True)
    elif change == "handler filter":
        handler.addFilter(lambda record: True)
    elif change == "second handler":
        child.addHandler(logging.NullHandler())
    elif change == "formatter":
        handler.setFormatter(WorkerFormatter("%(message)s"))
    else:
        monkeypatch.setattr(logging, "_logRecordFactory", lambda *args, **kwargs: logging.LogRecord(*args, **kwargs))
    try:
        with no_capture(child.parent):
            assert plain_output(child, logging.INFO) is None
            child.handlers.clear()
            child.filters.clear()
            handler.filters.clear()
            handler.setFormatter(WorkerFormatter(DEFAULT_FORMAT))
            monkeypatch.undo()
            assert plain_output(child, logging.INFO) is handler  # and back once the change is gone
    finally:
        child.filters.clear()
        child.handlers.clear()


def test_with_log_format_json_the_job_line_is_one_json_object(broker, caplog, settings):
    from django_async_jobs.serialization import encode_payload
    from django_async_jobs.worker.logs import JsonFormatter
    from django_async_jobs.worker.processor import process
    from tests.testapp.jobs import FailJob

    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "LOG_FORMAT": "json"}
    job = FailJob(f"{broker.keys.prefix}:n")
    job.queue_name = "default"
    with caplog.at_level(logging.INFO, logger="django_async_jobs.job"):
        process(f"{job.job_id}:1", encode_payload(job.serialize()).encode())
    [record] = [r for r in caplog.records if r.name == "django_async_jobs.job" and r.levelno == logging.INFO]
    line = json.loads(record.getMessage())
    assert {k: line[k] for k in ("event", "job_class", "job_id", "queue", "outcome", "error", "error_message")} == {
        "event": "job_finished", "job_class": FailJob.job_name, "job_id": job.job_id, "queue": "default",
        "outcome": "retry", "error": "RuntimeError", "error_message": "boom",
    }
    assert line["elapsed_ms"] >= 0 and line["executions"] == 1 and line["trace_id"] is None
    formatted = json.loads(JsonFormatter().format(record))
    assert formatted["level"] == "INFO" and formatted["logger"] == "django_async_jobs.job"
    assert formatted["time"].endswith("Z") and {k: formatted[k] for k in line} == line


def test_the_json_formatter_writes_any_record_with_its_traceback():
    from django_async_jobs.worker.logs import JsonFormatter

    try:
        raise ValueError("bad")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed %s", ("here",), sys.exc_info())
    data = json.loads(JsonFormatter().format(record))
    assert data["message"] == "failed here" and "ValueError: bad" in data["traceback"]


def test_runworker_writes_json_lines_with_log_format_json(spawn, broker, prefix):
    from tests.testapp.jobs import IncrJob

    proc = spawn(overrides={"LOG_FORMAT": "json"})
    IncrJob.perform_later(f"{prefix}:n")
    wait_for(lambda: '"job_finished"' in proc.output(), 30, "the job's line")
    lines = [json.loads(line) for line in proc.output().splitlines() if line.startswith("{")]
    assert any(line.get("event") == "job_finished" and line["job_class"] == IncrJob.job_name for line in lines)
    assert any("started" in line.get("message", "") for line in lines)  # the worker's own lines too
