"""Sentinel failover under load, measured: ``.venv/bin/python bench/failover.py`` (about 5 minutes).

Each scenario starts servers of its own on free ports (a master, its replicas and three
sentinels: ``tests/helpers.py``'s ``SentinelGroup``, with ``down-after-milliseconds 1000``),
two ``runworker`` processes (4 threads each) and an enqueuer thread pushing ``--rate`` jobs a
second through the ``redis+sentinel://`` URL, every other one scheduled 2 s ahead. After ``--before`` seconds the master is killed
(``kill -9``) or replaced by a coordinated failover (``SENTINEL FAILOVER``, the old master keeps
running); the enqueuer goes on for ``--after`` seconds more, then the workers drain the queue.

Reported per scenario: how long until the sentinels named the new master (promoted), how
long enqueues failed (outage: from the event to the first success after the last error), how
many enqueues raised, and, of the jobs whose enqueue returned, how many never ran (lost), ran
twice, or were left in a live worker's in-flight hash (stranded: they run again only when that
worker stops or dies); jobs not run but still in Redis (a master refusing writes holds them)
are not counted as lost. Each job appends its name to a file, so a run is counted outside Redis.

Needs only redis-server and the project's own virtualenv (no bench/.venv): it runs the test
suite's settings and jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == _REPO / "bench":
    sys.path[0] = str(_REPO)  # run as a script: import from the repository root
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

import redis  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

from django_async_jobs.broker.client import get_broker  # noqa: E402
from tests.helpers import SentinelGroup, WorkerProcess, registered, wait_for, worker_env  # noqa: E402
from tests.testapp.jobs import FileJob  # noqa: E402

PREFIX = "failover"
# As in production (the test settings' 3 s would have live workers recovered during a failover).
WORKER_SETTINGS = {"HEARTBEAT_TIMEOUT": 60, "SHUTDOWN_TIMEOUT": 10, "POLL_INTERVAL": 0.5}
# Every other job is scheduled this many seconds ahead: a standing backlog in the schedule, as
# delayed jobs and retries make, where a write the failover loses stays unrun.
DELAY = 2.0


@dataclass(frozen=True)
class Scenario:
    event: str  # "kill" or "failover"
    replicas: int
    min_replicas: int  # min-replicas-to-write (with min-replicas-max-lag 10); 0: off

    @property
    def name(self) -> str:
        event = "kill -9" if self.event == "kill" else "SENTINEL FAILOVER"
        config = f"min-replicas-to-write {self.min_replicas}" if self.min_replicas else "defaults"
        return f"{event}, {self.replicas} replica{'s' if self.replicas > 1 else ''}, {config}"

    @property
    def server_args(self) -> list[str]:
        if not self.min_replicas:
            return []
        return ["--min-replicas-to-write", str(self.min_replicas), "--min-replicas-max-lag", "10"]


SCENARIOS = {
    "kill": Scenario("kill", 1, 0),
    "kill-min1": Scenario("kill", 1, 1),
    "kill-2-min1": Scenario("kill", 2, 1),
    "failover": Scenario("failover", 1, 0),
    "failover-min1": Scenario("failover", 1, 1),
    "failover-2-min1": Scenario("failover", 2, 1),
    "failover-2-min2": Scenario("failover", 2, 2),
}


class Enqueuer(threading.Thread):
    """``FileJob.perform_later`` at a steady rate, every other job ``DELAY`` seconds ahead;
    what returned and what raised, with times."""

    def __init__(self, out: Path, rate: float) -> None:
        super().__init__(daemon=True)
        self.out = out
        self.interval = 1 / rate
        self.acked: list[tuple[float, str]] = []
        self.errors: list[tuple[float, str]] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        number = 0
        due = time.monotonic()
        while not self.stopping.is_set():
            number += 1
            name = f"j{number}"
            try:
                (FileJob.set(wait=DELAY) if number % 2 else FileJob).perform_later(str(self.out), name)
                self.acked.append((time.monotonic(), name))
            except redis.RedisError as exc:
                self.errors.append((time.monotonic(), f"{type(exc).__name__}: {exc}"))
            due = max(due + self.interval, time.monotonic() - 1)  # no burst after a slow call
            self.stopping.wait(max(0.0, due - time.monotonic()))

    def stop(self) -> None:
        self.stopping.set()
        self.join(30)


def ran(out: Path) -> Counter[str]:
    return Counter(line.split(":")[0] for line in out.read_text().split())


def measure(scenario: Scenario, rate: float, before: float, after: float, workdir: Path) -> dict[str, Any]:
    group = SentinelGroup(workdir, replicas=scenario.replicas, args=scenario.server_args)
    group.start()
    out = workdir / "ran.txt"
    out.touch()
    url = group.url()
    workers = [
        WorkerProcess(["-c", "4"], worker_env(PREFIX, url, WORKER_SETTINGS), workdir / f"worker-{i}.log")
        for i in range(2)
    ]
    try:
        with override_settings(ASYNC_JOBS={"REDIS_URL": url, "KEY_PREFIX": PREFIX, **WORKER_SETTINGS}):
            broker = get_broker()
            wait_for(lambda: len(registered(broker)) == 2, 60, "both workers registered")
            enqueuer = Enqueuer(out, rate)
            enqueuer.start()
            time.sleep(before)
            old = group.master()
            began = time.monotonic()
            if scenario.event == "kill":
                old.stop()
            else:
                group.failover()
            group.wait_promoted(old, timeout=60)
            promoted = time.monotonic() - began
            time.sleep(after)
            enqueuer.stop()
            acked = {name for _, name in enqueuer.acked}
            drained = _drain(broker, out, acked)
            stranded = _stranded(broker)
            waiting = _waiting(broker)
    finally:
        for worker in workers:
            if worker.alive():
                worker.send(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(30)
            except AssertionError:
                pass
            worker.cleanup()
        group.stop()
    runs = ran(out)
    last_error = max((t for t, _ in enqueuer.errors), default=None)
    outage = 0.0
    if last_error is not None:
        resumed = min((t for t, _ in enqueuer.acked if t > last_error), default=None)
        outage = (resumed - began) if resumed is not None else float("inf")
    return {
        "scenario": scenario.name,
        "promoted": promoted,
        "outage": outage,
        "errors": len(enqueuer.errors),
        "kinds": sorted({message.split(":")[0] for _, message in enqueuer.errors}),
        "acked": len(acked),
        "lost": len(acked - set(runs) - waiting),
        "waiting": len(acked - set(runs) & waiting),
        "twice": sum(1 for name, n in runs.items() if n > 1 and name in acked),
        "stranded": stranded,
        "drained": drained,
    }


def _drain(broker: Any, out: Path, acked: set[str]) -> bool:
    """Wait until every acknowledged job ran, or none has run for 5 s (what is left is lost, or
    held by a master that refuses writes); False if that took over 90 s."""
    deadline = time.monotonic() + 90
    seen, quiet_since = -1, time.monotonic()
    while time.monotonic() < deadline:
        runs = ran(out)
        if acked <= set(runs):
            return True
        total = sum(runs.values())
        if total != seen:
            seen, quiet_since = total, time.monotonic()
        elif time.monotonic() - quiet_since > 5:
            return True
        time.sleep(0.2)
    return False


def _stranded(broker: Any) -> int:
    """Jobs still in the live workers' in-flight hashes once the last settlements had 5 s."""
    deadline = time.monotonic() + 5
    while True:
        held = sum(broker.redis.hlen(broker.keys.inflight(p)) for p in registered(broker))
        if not held or time.monotonic() > deadline:
            return held
        time.sleep(0.2)


def _waiting(broker: Any) -> set[str]:
    """Names of the jobs still in Redis: queued, scheduled, retrying or in flight (not lost, but
    not run: the master refused the writes that would run them)."""
    k = broker.keys
    payloads = [*broker.redis.zrange(k.queue("default"), 0, -1), *broker.redis.zrange(k.schedule, 0, -1)]
    payloads += broker.redis.zrange(k.retry, 0, -1)
    for process_id in registered(broker):
        payloads += broker.redis.hvals(k.inflight(process_id))
    return {json.loads(payload)["args"][1] for payload in payloads}


def table(results: list[dict[str, Any]], rate: float) -> str:
    lines = [
        f"| scenario ({rate:.0f} enqueues/s) | promoted after | enqueues failing for | enqueue errors "
        "| acknowledged | lost | ran twice | stranded in flight |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        outage = "not back" if r["outage"] == float("inf") else f"{r['outage']:.1f} s"
        kinds = f" ({', '.join(r['kinds'])})" if r["kinds"] else ""
        lost = f"{r['lost']} ({r['waiting']} not run: still in Redis)" if r["waiting"] else str(r["lost"])
        lines.append(
            f"| {r['scenario']} | {r['promoted']:.1f} s | {outage} | {r['errors']}{kinds} | {r['acked']} "
            f"| {lost} | {r['twice']} | {r['stranded']} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"from: {', '.join(SCENARIOS)}")
    parser.add_argument("--rate", type=float, default=200.0, help="enqueues a second (default 200)")
    parser.add_argument("--before", type=float, default=5.0, help="seconds of load before the event")
    parser.add_argument("--after", type=float, default=15.0, help="seconds of load after the promotion")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.scenarios.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    results = []
    for name in chosen:
        with tempfile.TemporaryDirectory(prefix="failover-") as workdir:
            result = measure(SCENARIOS[name], args.rate, args.before, args.after, Path(workdir))
        print(f"{name}: {result}", flush=True)
        results.append(result)
    print()
    print(table(results, args.rate))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
