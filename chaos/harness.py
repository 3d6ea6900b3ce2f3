"""What every scenario needs: a world of its own (a redis-server, a key prefix, worker
processes), the database the workers write dead jobs to, the ledger of runs, and the verdict.

A scenario's figures: jobs enqueued (acknowledged by Redis), run once, run more than once, lost
(never ran, or dead jobs that never became a row), dead (rows written), and the time to
recover: from the end of the fault to the last completion of a job enqueued before that end.
A job lost, or whose first run (or row) came later than twice HEARTBEAT_TIMEOUT after the end
of the fault (or after its enqueue, for a job enqueued later), fails the scenario.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import redis
from django.test.utils import override_settings

from chaos.proxy import Cuttable, Proxy
from tests.helpers import ROOT, RedisServer, WorkerProcess, free_port, registered, wait_for

START_TIMEOUT = 60  # a cold Django start on a loaded 2-core machine
SETTLE_GRACE = 30  # seconds past a job's deadline before it counts as lost rather than late


@dataclass
class Outcome:
    name: str
    fault: str
    enqueued: int = 0
    once: int = 0
    twice: int = 0
    lost: int = 0
    dead: int = 0
    recover: float | None = None
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def row(self) -> str:
        recover = "-" if self.recover is None else f"{self.recover:.1f} s"
        result = "ok" if self.ok else "FAILED"
        return (
            f"| {self.name} | {self.fault} | {self.enqueued} | {self.once} | {self.twice} | {self.lost} "
            f"| {self.dead} | {recover} | {self.seconds:.0f} s | {result} |"
        )


HEADER = (
    "| scenario | fault | enqueued | run once | run twice | lost | dead | time to recover | took | result |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
)


def _clock(at: float) -> str:
    """A time as the worker logs print it, to find the moment in their lines."""
    return time.strftime("%H:%M:%S", time.localtime(at)) + f",{int(at % 1 * 1000):03d}"


class Database(Cuttable):
    """The database the workers write dead jobs to, which a scenario can make unreachable.

    PostgreSQL when ``DATABASE_URL`` names one (a database of its own, ``<name>_chaos``, created
    and dropped here; the workers reach it through a TCP proxy that ``cut()`` closes), else a
    SQLite file whose directory ``cut()`` renames away.
    """

    def __init__(self, workdir: Path, url: str | None) -> None:
        self.proxy = None
        if url and url.startswith(("postgres://", "postgresql://")):
            parts = urlsplit(url)
            self.name = f"{parts.path.lstrip('/') or 'postgres'}_chaos"
            self.admin_url = urlunsplit(parts._replace(path="/postgres"))
            self.url = urlunsplit(parts._replace(path=f"/{self.name}"))
            port = free_port()
            self.proxy = Proxy((parts.hostname or "127.0.0.1", parts.port or 5432), port)
            netloc = parts.netloc.rsplit("@", 1)
            host = f"127.0.0.1:{port}"
            self.worker_url = urlunsplit(
                parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host, path=f"/{self.name}")
            )
            self.kind = "PostgreSQL"
        else:
            self.dir = workdir / "db"
            self.dir.mkdir(parents=True)
            self.url = self.worker_url = f"sqlite:///{self.dir / 'chaos.sqlite3'}"
            self.kind = "SQLite"

    def create(self) -> None:
        if self.proxy is not None:
            import psycopg

            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.name}"')
                conn.execute(f'CREATE DATABASE "{self.name}"')
            self.proxy.start()

    def migrate(self) -> None:
        from django.core.management import call_command

        call_command("migrate", verbosity=0)

    def drop(self) -> None:
        if self.proxy is None:
            return
        from django.db import connections

        connections.close_all()
        self.proxy.cut()
        import psycopg

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class World:
    """One scenario's Redis, key prefix and workers; the harness's own client points at them
    while the world is entered."""

    def __init__(
        self, name: str, workdir: Path, ledger_url: str, db: Database, *, persist: str | None = None,
        debug: bool = False, reply_timeout: float | None = None, overrides: dict[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.dir = workdir / name
        self.dir.mkdir(parents=True)
        self.redis = RedisServer(self.dir, persist=persist or False, debug=debug)
        self.prefix = f"chaos-{name}"
        self.ledger = redis.Redis.from_url(ledger_url)
        self.ledger_url = ledger_url
        self.db = db
        self.overrides = {"HEARTBEAT_TIMEOUT": 4, **(overrides or {})}
        self.heartbeat_timeout = float(self.overrides["HEARTBEAT_TIMEOUT"])
        self.worker_redis_url = self.redis.url + (f"?socket_timeout={reply_timeout}" if reply_timeout else "")
        self.workers: list[WorkerProcess] = []
        self.enqueued_at: dict[str, float] = {}
        self._settings: Any = None

    def __enter__(self) -> World:
        from django.conf import settings

        self.redis.start()
        self._settings = override_settings(ASYNC_JOBS={
            **settings.ASYNC_JOBS, **self.overrides, "REDIS_URL": self.redis.url, "KEY_PREFIX": self.prefix,
        })
        self._settings.enable()
        self.ledger.delete(f"{self.name}:runs", f"{self.name}:first")
        return self

    def __exit__(self, *exc: Any) -> None:
        for worker in self.workers:
            worker.cleanup()
        self._settings.disable()
        self.redis.stop()

    @property
    def broker(self) -> Any:
        from django_async_jobs.broker.client import get_broker

        return get_broker()

    # -- workers ---------------------------------------------------------------------------------

    def spawn(self, concurrency: int = 4) -> WorkerProcess:
        env = dict(os.environ)
        env.update({
            "DJANGO_SETTINGS_MODULE": "chaos.settings",
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "CHAOS_REDIS_URL": self.worker_redis_url,
            "CHAOS_KEY_PREFIX": self.prefix,
            "CHAOS_LEDGER_URL": self.ledger_url,
            "CHAOS_LEDGER_KEY": self.name,
            "CHAOS_DATABASE_URL": self.db.worker_url,
            "CHAOS_OVERRIDES": json.dumps(self.overrides),
        })
        worker = WorkerProcess(["-c", str(concurrency)], env, self.dir / f"worker-{len(self.workers)}.log")
        self.workers.append(worker)
        return worker

    def log_count(self, text: str) -> int:
        """How many lines of the workers' logs hold ``text``: proof that a fault hit them."""
        return sum(line.count(text) for worker in self.workers for line in worker.output().splitlines())

    def start_workers(self, count: int) -> float:
        """Start ``count`` workers and wait until each has registered; returns the start time."""
        workers = [self.spawn() for _ in range(count)]
        self.wait_started(*workers)
        return time.monotonic()

    def finish(self, outcome: Outcome, began: float) -> None:
        """The checks every scenario ends with, then the workers' stop and the logs of a failure."""
        self.check_empty(outcome)
        self.stop_workers(outcome)
        outcome.seconds = time.monotonic() - began
        if not outcome.ok:
            for worker in self.workers:
                tail = worker.output().splitlines()[-15:]
                print(f"--- {worker.log} (last lines)\n" + "\n".join(tail), file=sys.stderr)

    def alive(self) -> list[WorkerProcess]:
        return [w for w in self.workers if w.alive()]

    def wait_started(self, *workers: WorkerProcess) -> None:
        pids = {w.pid for w in workers}
        wait_for(lambda: pids <= set(registered(self.broker).values()), START_TIMEOUT, f"workers {sorted(pids)} started")

    def stop_workers(self, outcome: Outcome) -> None:
        """SIGTERM every live worker: each must stop cleanly (status 0)."""
        live = self.alive()
        self.wait_started(*live)  # a TERM before the handlers are in place would just kill it
        for worker in live:
            worker.send(signal.SIGTERM)
        for worker in live:
            code = worker.wait(60)
            if code != 0:
                outcome.problems.append(f"worker {worker.pid} stopped with status {code} (see {worker.log})")

    # -- the ledger ------------------------------------------------------------------------------

    def runs(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.ledger.hgetall(f"{self.name}:runs").items()}

    def first_runs(self) -> dict[str, float]:
        return {k.decode(): float(v) for k, v in self.ledger.hgetall(f"{self.name}:first").items()}

    def note_enqueued(self, ids: list[str], at: float | None = None) -> None:
        at = time.time() if at is None else at
        for job_id in ids:
            self.enqueued_at[job_id] = at

    # -- the verdict -----------------------------------------------------------------------------

    def deadline(self, job_id: str, fault_end: float) -> float:
        return max(fault_end, self.enqueued_at[job_id]) + 2 * self.heartbeat_timeout

    def await_runs(self, outcome: Outcome, ids: list[str], fault_end: float) -> None:
        """Wait for every job's first run; count once, twice, lost, late and the time to recover."""
        last_deadline = max(self.deadline(i, fault_end) for i in ids)
        wanted = set(ids)
        while time.time() < last_deadline + SETTLE_GRACE and not wanted <= set(self.first_runs()):
            time.sleep(0.2)
        time.sleep(0.5)  # a second run on its way (a recovered job) is counted too
        runs, first = self.runs(), self.first_runs()
        outcome.enqueued += len(ids)
        outcome.once += sum(1 for i in ids if runs.get(i) == 1)
        outcome.twice += sum(1 for i in ids if runs.get(i, 0) > 1)
        lost = [i for i in ids if i not in first]
        outcome.lost += len(lost)
        if lost:
            outcome.problems.append(f"{len(lost)} job(s) never ran, e.g. {lost[:3]}")
        late = [i for i in ids if i in first and first[i] > self.deadline(i, fault_end)]
        if late:
            worst = max(late, key=lambda i: first[i] - self.deadline(i, fault_end))
            outcome.problems.append(
                f"{len(late)} job(s) ran later than 2 x HEARTBEAT_TIMEOUT after the fault ended "
                f"({_clock(fault_end)}); the latest, {worst}, at {_clock(first[worst])}"
            )
        before = [first[i] for i in ids if i in first and self.enqueued_at[i] <= fault_end]
        recover = max(0.0, max(before) - fault_end) if before else 0.0
        outcome.recover = recover if outcome.recover is None else max(outcome.recover, recover)

    def await_rows(self, outcome: Outcome, count: Any, expected: int, fault_end: float, what: str) -> None:
        """Wait for ``expected`` dead-job rows (``count()`` counts them): late or missing fails."""
        deadline = fault_end + 2 * self.heartbeat_timeout
        found = 0
        while time.time() < deadline + SETTLE_GRACE:
            found = count()
            if found >= expected:
                break
            time.sleep(0.2)
        written_at = time.time()
        outcome.dead += found
        if found < expected:
            outcome.lost += expected - found
            outcome.problems.append(f"{expected - found} of {expected} {what} never became a dead-job row")
        elif written_at > deadline:
            outcome.problems.append(f"{what}: the last row came later than 2 x HEARTBEAT_TIMEOUT after the fault")
        outcome.recover = max(outcome.recover or 0.0, written_at - fault_end)

    def check_empty(self, outcome: Outcome) -> None:
        """Nothing left anywhere: queues, retry set, schedule, staged dead jobs, and no live
        worker's in-flight hash (wait a moment for the last settlements)."""
        broker = self.broker
        k = broker.keys

        def leftovers() -> dict[str, int]:
            found = {
                "queue": broker.redis.zcard(k.queue("default")),
                "retry set": broker.redis.zcard(k.retry),
                "schedule": broker.redis.zcard(k.schedule),
                "staged dead": broker.redis.hlen(k.dead),
            }
            for process_id in registered(broker):
                found[f"in flight at {process_id}"] = broker.redis.hlen(k.inflight(process_id))
            return {name: n for name, n in found.items() if n}

        try:
            wait_for(lambda: not leftovers(), 10, "nothing left")
        except AssertionError:
            outcome.problems.append(f"left behind: {leftovers()}")
