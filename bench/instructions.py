"""Instructions per job, counted by valgrind's callgrind: A/B figures that machine load cannot blur.

``python bench/instructions.py --against REF[,REF...] [--jobs 1000,3000]``

Wall-clock rates on a shared machine swing by 15 % between identical cells, more than the 3 %
budget a hot-path change is held to. An instruction count for the same code and input repeats
to a fraction of a percent whatever else the machine runs. For the current tree and each REF:

* the worker: ``runworker -c 1`` runs under callgrind over a queue of N1 ready jobs, until all
  ran, then is stopped; again over N2 (its beats, poller and acknowledgement batches stretched as callgrind slows it). ``(I2 - I1) / (N2 - N1)`` is what one job costs the
  worker process (fetch, decode, run, settle, log, metrics), start-up and shutdown cancelling out;
* the client: ``perform_later`` N1 times in one process, then N2 times, the same way;
* the processing step: ``processor.process`` of N1, then N2 no-op jobs in one thread (decode,
  the worker's chain, the settle entry; no Redis, no log line), which no thread timing moves.

The current tree's client fills the worker's queue for every tree, so only worker code differs.
Counts include everything the process executes: the interpreter, redis-py, the job body. One
processor thread: with ten, how often they hand the interpreter lock to each other, which
depends on the machine's load, moves a count by several per cent.
Needs ``valgrind`` on PATH; takes a few minutes per tree (callgrind runs Python ~50x slower).
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

# Run as a script: import the ``bench`` package from the repository root, not bench/ itself.
_REPO = Path(__file__).resolve().parent.parent
if sys.path and Path(sys.path[0]).resolve() == _REPO / "bench":
    sys.path[0] = str(_REPO)

import redis  # noqa: E402

from bench.config import COUNTER_KEY, REDIS_DB, REDIS_HOST, REDIS_PORT, RESULTS_DIR  # noqa: E402
from bench.procs import bench_env  # noqa: E402
from bench.run import _worktree  # noqa: E402
from bench.systems.ours import SETTINGS, bulk_enqueue  # noqa: E402

_COLLECTED = re.compile(rb"Collected : (\d+)")
_CLIENT = """
import sys
import django
django.setup()
from bench.djapp.jobs import IncrJob
for _ in range(int(sys.argv[1])):
    IncrJob.perform_later(0.0)
"""


def _callgrind(cmd: list[str], log: Path) -> list[str]:
    """``cmd`` under callgrind, its summary in ``log``: the worker's own log lines go to a file
    nobody reads, since a pipe left unread would fill and stall the worker's log writes."""
    log.parent.mkdir(parents=True, exist_ok=True)
    return ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", f"--log-file={log}", *cmd]


def _count(log: Path, what: str) -> int:
    text = log.read_bytes()
    found = _COLLECTED.findall(text)
    if not found:
        raise RuntimeError(f"{what}: callgrind printed no count:\n{text.decode()[-2000:]}")
    return int(found[-1])


# Callgrind runs the worker some 50 times slower, so work done every few seconds (a beat, the
# scheduled-job poller) would fall on 50 times fewer jobs than at full speed. These settings
# stretch those periods by as much; ``SETTINGS`` of each tree supplies the rest.
SLOWDOWN = 50
_SLOW_SETTINGS = f"""from {SETTINGS} import *  # noqa: F403
ASYNC_JOBS = {{**ASYNC_JOBS, "HEARTBEAT_TIMEOUT": 3000, "HEARTBEAT_INTERVAL": 250, "POLL_INTERVAL": 25}}  # noqa: F405
"""
# The same for the acknowledgements: the acker waits ``LINGER`` (2 ms) for more finished jobs
# before a settle round trip, which at full speed gathers ten or more no-op jobs; slowed down,
# one. Stretched as well, each settle step carries as many jobs as it would at full speed.
_WORKER = f"""
import sys
import django
django.setup()
from django.core.management import execute_from_command_line
from django_async_jobs.worker import acker
acker.LINGER *= {SLOWDOWN}
execute_from_command_line(["django", "runworker", "-c", sys.argv[1]])
"""


def _slow_settings() -> Path:
    folder = RESULTS_DIR / "callgrind"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "callgrind_settings.py").write_text(_SLOW_SETTINGS)
    return folder


def worker_instructions(tree: Path, jobs: int, conn: redis.Redis, threads: int = 1) -> int:
    """Instructions the worker process of ``tree`` executed to start, run ``jobs`` jobs, stop."""
    conn.flushdb()
    bulk_enqueue(_job(), jobs, 0.0)
    path = f"{tree}:{_slow_settings()}"
    env = bench_env({"DJANGO_SETTINGS_MODULE": "callgrind_settings", "PYTHONPATH": path})
    log = RESULTS_DIR / "callgrind-worker.log"
    proc = subprocess.Popen(
        _callgrind([sys.executable, "-c", _WORKER, str(threads)], log), cwd=tree, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 1800
    while int(conn.get(COUNTER_KEY) or 0) < jobs:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"worker of {tree} ran {conn.get(COUNTER_KEY)} of {jobs} jobs")
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=600)
    conn.flushdb()
    return _count(log, f"worker of {tree}")


def client_instructions(tree: Path, jobs: int, conn: redis.Redis) -> int:
    conn.flushdb()
    env = bench_env({"DJANGO_SETTINGS_MODULE": SETTINGS, "PYTHONPATH": str(tree)})
    log = RESULTS_DIR / "callgrind-client.log"
    subprocess.run(
        _callgrind([sys.executable, "-c", _CLIENT, str(jobs)], log), cwd=tree, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
    )
    conn.flushdb()
    return _count(log, f"client of {tree}")


# The processing step alone, in one thread of one process: decode, the worker's chain around a
# no-op ``perform``, the settle entry (``processor.process``), no Redis and no log line. What the
# layers cost a job, without the threads whose timing moves the worker's count.
_STEP = """
import logging
import sys
import django
django.setup()
from django_async_jobs import ApplicationJob
from django_async_jobs.worker import processor

class NoopJob(ApplicationJob):
    def perform(self, value):
        pass

# One payload, the same bytes for every tree: only the processing is counted, not its making.
raw = b'{"jid":"01a24b0000000000000000aa","job":"__main__.NoopJob","queue":"default","args":["x"],"enqueued_at":1796550000.0}'
logging.getLogger("django_async_jobs").setLevel(logging.WARNING)
for _ in range(int(sys.argv[1])):
    processor.process("field", raw)
"""


def step_instructions(tree: Path, jobs: int, conn: redis.Redis) -> int:
    env = bench_env({"DJANGO_SETTINGS_MODULE": SETTINGS, "PYTHONPATH": str(tree)})
    log = RESULTS_DIR / "callgrind-step.log"
    subprocess.run(
        _callgrind([sys.executable, "-c", _STEP, str(jobs)], log), cwd=tree, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
    )
    return _count(log, f"processing step of {tree}")


def _job() -> type:
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", SETTINGS)
    import django

    django.setup()
    from bench.djapp.jobs import IncrJob

    return IncrJob


def per_job(measure, tree: Path, small: int, large: int, conn: redis.Redis) -> float:
    return (measure(tree, large, conn) - measure(tree, small, conn)) / (large - small)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", default="", help="commits to compare, separated by commas")
    parser.add_argument("--jobs", default="500,2500", help="N1,N2: the two queue lengths (default 500,2500)")
    args = parser.parse_args(argv)
    small, large = (int(n) for n in args.jobs.split(","))
    trees = {"ours": _REPO}
    for ref in (r.strip() for r in args.against.split(",") if r.strip()):
        trees[f"ours@{ref}"] = _worktree(ref)
    conn = redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=REDIS_DB["ours"])
    rows = []
    for name, tree in trees.items():
        started = time.monotonic()
        worker = per_job(worker_instructions, tree, small, large, conn)
        client = per_job(client_instructions, tree, small, large, conn)
        step = per_job(step_instructions, tree, small, large, conn)
        rows.append((name, worker, client, step))
        print(f"{name}: worker {worker:,.0f} client {client:,.0f} step {step:,.0f} instructions/job "
              f"[{time.monotonic() - started:.0f}s]", flush=True)
    base = rows[0][1:]
    print("\n| tree | worker instructions per job | vs ours | perform_later instructions per job | vs ours "
          "| processing step instructions per job | vs ours |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, *counts in rows:
        print(f"| {name} | " + " | ".join(f"{count:,.0f} | {count / first:.3f}" for count, first in zip(counts, base, strict=True)) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
