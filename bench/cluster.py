"""Redis Cluster measured: ``.venv/bin/python bench/cluster.py`` (a few minutes).

For a single redis-server and for clusters of 1, 2 and 3 masters (``tests/helpers.py``'s
``RedisServer`` and ``ClusterGroup``, on free ports, no persistence), the same work. In the
``cluster-N`` setups every job is in one slot (``CLUSTER_PARTITIONS`` 1: one master works); in
the ``spread-N`` setups (N = 2, 3) the cluster of N masters has N partitions, one on each master (the
bench picks a key prefix whose partition tags land so), and the jobs are enqueued evenly over
``QUEUES`` names that hash to each partition alike: N masters share the work.

* **enqueue**: ``--enqueues`` single ``perform_later`` calls in a row, timed: the client's cost
  per job (a round trip each);
* **drain**: ``--jobs`` jobs bulk-enqueued, then ``--processes`` ``runworker`` processes of
  ``--threads`` threads each; timed from the first settled job until the last (start-up left
  out), as ``bench/scaling.py`` does;
* **Redis CPU per job**: the servers' ``used_cpu_user`` + ``used_cpu_sys`` summed over every
  master, from before the enqueues to after the drain, divided by the jobs: what one job costs
  Redis, enqueue, fetch and settle included, for sizing; and the busiest master's alone: what
  bounds the jobs/s Redis can carry;
* **idle**: the commands per second every master served while the drained workers waited
  ``IDLE_SECONDS`` for work (fetches, beats, polls: what each partition adds at rest).

The jobs do nothing (``NoopJob``), so what is measured is the library and Redis. Ratios are
against the single server. One run prints one table; the machine's other load shows in it.

Needs only redis-server and the project's own virtualenv (no bench/.venv): it runs the test
suite's settings and jobs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == _REPO / "bench":
    sys.path[0] = str(_REPO)  # run as a script: import from the repository root
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django  # noqa: E402

django.setup()

from django.test.utils import override_settings  # noqa: E402
from redis.crc import key_slot  # noqa: E402

from django_async_jobs.broker.client import get_broker  # noqa: E402
from django_async_jobs.broker.keys import Keys  # noqa: E402
from tests.helpers import ClusterGroup, RedisServer, WorkerProcess, wait_for, worker_env  # noqa: E402
from tests.testapp.jobs import NoopJob  # noqa: E402

PREFIX = "benchcluster"
WORKER_SETTINGS = {"HEARTBEAT_TIMEOUT": 60, "SHUTDOWN_TIMEOUT": 10, "POLL_INTERVAL": 0.5}
SETUPS = ("single", "cluster-1", "cluster-2", "cluster-3", "spread-2", "spread-3")
QUEUES = 6  # queue names per setup: spread evenly over 1, 2 or 3 partitions (every setup uses six)
APP_QUEUES = ["critical", "default", "notifications", "low"]
IDLE_SECONDS = 10


def start(setup: str, workdir: Path) -> tuple[Any, str]:
    """The servers of ``setup``, started, and their URL."""
    if setup == "single":
        server = RedisServer(workdir / "single")
        server.start()
        return server, server.url
    group = ClusterGroup(workdir / setup, masters=int(setup.split("-")[1]))
    group.start()
    return group, group.url()


def layout(setup: str) -> dict[str, Any]:
    """The settings of ``setup``: its partitions, a prefix that puts partition p on master p
    (``ClusterGroup`` gives master i the i-th even share of the slots), and queue names that
    hash to each partition alike."""
    partitions = int(setup.split("-")[1]) if setup.startswith("spread-") else 1
    prefix = PREFIX
    attempt = 0
    while partitions > 1 and [
        key_slot(Keys.cluster(prefix, p).queues.encode()) * partitions // ClusterGroup.SLOTS for p in range(partitions)
    ] != list(range(partitions)):
        attempt += 1
        prefix = f"{PREFIX}{attempt}"
    names = [f"q{i}" for i in range(100)]
    queues = [
        name for p in range(partitions)
        for name in [n for n in names if zlib.crc32(n.encode()) % partitions == p][: QUEUES // partitions]
    ]
    # The test app's own queues too (its jobs name them; the system check wants them read).
    return {"KEY_PREFIX": prefix, "CLUSTER_PARTITIONS": partitions, "QUEUES": [*queues, *APP_QUEUES]}


def commands(broker: Any) -> int:
    """Commands every server (every master) has served so far."""
    return sum(int(server.info("stats")["total_commands_processed"]) for server in broker.servers())


def redis_cpu(broker: Any) -> list[float]:
    """CPU seconds each server (each master of a cluster) has used so far."""
    return [
        float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
        for info in (server.info("cpu") for server in broker.servers())
    ]


def measure(setup: str, jobs: int, enqueues: int, processes: int, threads: int, workdir: Path) -> dict[str, Any]:
    servers, url = start(setup, workdir)
    workers: list[WorkerProcess] = []
    chosen = layout(setup)
    prefix, queues = chosen["KEY_PREFIX"], chosen["QUEUES"][:QUEUES]
    worker_settings = {**WORKER_SETTINGS, "CLUSTER_PARTITIONS": chosen["CLUSTER_PARTITIONS"], "QUEUES": chosen["QUEUES"]}
    try:
        with override_settings(ASYNC_JOBS={"REDIS_URL": url, **WORKER_SETTINGS, **chosen}):
            broker = get_broker()
            NoopJob.perform_later()  # connections and scripts loaded before the clock starts
            broker.flush()
            cpu_before = redis_cpu(broker)
            began = time.perf_counter()
            for i in range(enqueues):
                NoopJob.set(queue=queues[i % len(queues)]).perform_later()
            enqueue_us = (time.perf_counter() - began) / enqueues * 1e6
            rest = jobs - enqueues
            for i, queue in enumerate(queues):
                NoopJob.perform_bulk([()] * (rest // len(queues) + (i < rest % len(queues))), queue=queue)
            workers = [
                WorkerProcess(["-c", str(threads)], worker_env(prefix, url, worker_settings), workdir / f"{setup}-{i}.log")
                for i in range(processes)
            ]
            first = wait_for(lambda: broker.stat("processed") > 0 and time.perf_counter(), 120, "the first job settled")
            started_count = broker.stat("processed")
            last = wait_for(lambda: broker.stat("processed") >= jobs and time.perf_counter(), 600, "every job settled")
            drain = (jobs - started_count) / (last - first)
            spent = [after - before for before, after in zip(cpu_before, redis_cpu(broker), strict=True)]
            cpu_us = sum(spent) / jobs * 1e6
            busiest_us = max(spent) / jobs * 1e6
            time.sleep(2)  # the last settlements and the workers' wait for "ready" begin
            before = commands(broker)
            time.sleep(IDLE_SECONDS)
            idle = (commands(broker) - before - len(broker.servers())) / IDLE_SECONDS  # less our INFO
            broker.flush()
    finally:
        for worker in workers:
            worker.send(signal.SIGTERM)
        for worker in workers:
            try:
                worker.wait(30)
            except AssertionError:
                pass
            worker.cleanup()
        servers.stop()
    return {"setup": setup, "enqueue_us": enqueue_us, "drain": drain, "redis_cpu_us": cpu_us, "busiest_us": busiest_us,
            "idle": idle}


def table(results: list[dict[str, Any]], jobs: int, processes: int, threads: int) -> str:
    base = next((r for r in results if r["setup"] == "single"), results[0])
    lines = [
        f"| setup ({jobs:,} jobs, {processes} x {threads} workers) | perform_later | drain | Redis CPU per job "
        "| busiest master's CPU per job | drain vs single | Redis CPU vs single | idle commands/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        kind, _, masters = r["setup"].partition("-")
        name = {
            "single": "single server",
            "cluster": f"cluster, {masters} master(s), 1 partition",
            "spread": f"cluster, {masters} master(s), {masters} partition(s)",
        }[kind]
        lines.append(
            f"| {name} | {r['enqueue_us']:.0f} µs | {r['drain']:,.0f} jobs/s | {r['redis_cpu_us']:.0f} µs "
            f"| {r['busiest_us']:.0f} µs | {r['drain'] / base['drain']:.2f} | {r['redis_cpu_us'] / base['redis_cpu_us']:.2f} "
            f"| {r['idle']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--setups", default=",".join(SETUPS), help=f"from: {', '.join(SETUPS)}")
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs drained per setup (default 20,000)")
    parser.add_argument("--enqueues", type=int, default=2_000, help="of those, single perform_later calls timed")
    parser.add_argument("--processes", type=int, default=2, help="runworker processes (default 2)")
    parser.add_argument("--threads", type=int, default=10, help="threads per process (default 10)")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.setups.split(",") if name.strip()]
    unknown = [name for name in chosen if name not in SETUPS]
    if unknown:
        parser.error(f"unknown setup(s) {', '.join(unknown)}; choose from {', '.join(SETUPS)}")
    if not 0 < args.enqueues < args.jobs:
        parser.error("--enqueues must be above 0 and below --jobs")
    results = []
    for setup in chosen:
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as workdir:
            result = measure(setup, args.jobs, args.enqueues, args.processes, args.threads, Path(workdir))
        print(f"{setup}: {result}", flush=True)
        results.append(result)
    print()
    print(table(results, args.jobs, args.processes, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
