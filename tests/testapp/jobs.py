"""Jobs the test suite runs. They report through Redis so a worker in another process can be
observed; the key comes from the test, so tests never share state."""

import os
import time

from django_async_jobs import ApplicationJob, signals
from django_async_jobs.broker.client import get_broker
from django_async_jobs.retries import Drop, Reschedule


def _redis():
    return get_broker().redis


class IncrJob(ApplicationJob):
    def perform(self, key, amount=1):
        _redis().incrby(key, amount)
        return amount


class NoopJob(ApplicationJob):
    """Does nothing: what a run of it costs is the library's (bench/cluster.py)."""

    def perform(self):
        pass


class RecordJob(ApplicationJob):
    queue_as = "default"

    def perform(self, key, *values, **options):
        import json

        _redis().rpush(key, json.dumps({"args": list(values), "kwargs": options, "executions": self.executions,
                                        "queue": self.queue_name, "pid": os.getpid()}))


class ComeBackJob(ApplicationJob):
    """Asks to be put back (``Reschedule``) with its step in the payload, ``times`` times."""

    def perform(self, key, times=1, delay=0.0):
        step = self.payload.get("step", 0)
        _redis().rpush(key, f"step {step} execution {self.executions}")
        if step < times:
            raise Reschedule(delay, {"step": step + 1})


class Skipped(Drop):  # noqa: N818
    outcome = "skipped"


class DropJob(ApplicationJob):
    """Ends itself with a ``Drop`` after recording that it ran."""

    def perform(self, key):
        _redis().rpush(key, f"execution {self.executions}")
        raise Skipped("nothing to do")


class FailJob(ApplicationJob):
    def perform(self, key):
        _redis().incr(key)
        raise RuntimeError("boom")


class TraceJob(ApplicationJob):
    """Records its start and end with a name, so a test can count exactly what ran where.

    Given a ``gate`` (a Redis list), it runs until the test pushes to the gate, one job per
    push: the test, not the machine's speed, decides how long it runs. 20 s at most, so a test
    that fails before it opens the gate does not hold a worker thread for long.
    """

    def perform(self, key, name, seconds=0.0, gate=None):
        _redis().rpush(key, f"start:{name}:{os.getpid()}")
        if seconds:
            time.sleep(seconds)
        if gate:
            _redis().blpop(gate, timeout=20)
        _redis().rpush(key, f"done:{name}:{os.getpid()}")


class SlowOnceJob(ApplicationJob):
    """Slow on its first run only: a worker's stop cuts it, the next worker finishes it quickly."""

    def perform(self, key, name, seconds):
        runs = _redis().incr(f"{key}:runs:{name}")
        _redis().rpush(key, f"start:{name}:{os.getpid()}")
        if runs == 1:
            time.sleep(seconds)
        _redis().rpush(key, f"done:{name}:{os.getpid()}")


class SuicideJob(ApplicationJob):
    """Kills its own worker process with SIGKILL: every worker that takes it dies (a poison pill)."""

    def perform(self, key):
        import signal

        _redis().rpush(key, f"start:{os.getpid()}")
        os.kill(os.getpid(), signal.SIGKILL)


class StampJob(ApplicationJob):
    """Records when it started, for due-to-start latency of scheduled jobs."""

    def perform(self, key):
        _redis().rpush(key, repr(time.time()))


class TaggedEchoJob(ApplicationJob):
    """Pickles the arguments it received, so a test can compare types and values exactly."""

    tagged_arguments = True

    def perform(self, key, *values, **options):
        import pickle

        _redis().rpush(key, pickle.dumps((values, options)))


from tests.testapp import (  # noqa: E402, F401  (worker subprocesses know them)
    batch_jobs,
    flow_jobs,
    middleware_jobs,
    poison_jobs,
    recurring_jobs,
    resumable_jobs,
    unique_jobs,
)


class FileJob(ApplicationJob):
    """Leaves its trace in a file, not Redis: it can finish while Redis is away. Given a
    ``gate`` (a file path), it first creates ``<gate>.started``, so a test knows it is running
    (not only fetched), then waits until the test creates the gate (20 s at most)."""

    def perform(self, path, name, gate=None):
        if gate:
            open(f"{gate}.started", "a").close()
        deadline = time.monotonic() + 20
        while gate and not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        with open(path, "a") as out:
            out.write(f"{name}:{os.getpid()}\n")


class SlowFailJob(ApplicationJob):
    """Waits until the test sets the key ``gate`` (20 s at most), then raises: a failure that
    can land after the job was recovered elsewhere. Every copy waits for the same key: a copy
    in a paused process cannot take the gate from the others, as it could a list item."""

    def perform(self, key, gate):
        _redis().rpush(key, f"start:{os.getpid()}")
        deadline = time.monotonic() + 20
        while not _redis().exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        raise RuntimeError("slow boom")


class LatencyJob(ApplicationJob):
    """Records how long after its enqueue it started."""

    def perform(self, key, enqueued_at):
        _redis().rpush(key, repr(time.time() - enqueued_at))


class ExitJob(ApplicationJob):
    """Counts its starts, where a ``job_started`` receiver raises SystemExit: outside ``perform``
    (and so the retry rules), no ``except Exception`` catches it, so it ends the processor's
    work on the job without a settlement, as a bug of the worker's own would."""

    def perform(self, key):
        raise AssertionError("never reached: the job_started receiver exits first")


def _exit_at_start(sender, job, **kwargs):
    _redis().incr(job.arguments[0])
    raise SystemExit(3)


signals.job_started.connect(_exit_at_start, sender=ExitJob, weak=False, dispatch_uid="tests.ExitJob")
