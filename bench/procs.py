"""Worker processes: start them in their own session, find their tree, read memory, stop them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.config import REPO_DIR, RESULTS_DIR


def bench_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO_DIR)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def venv_bin(name: str) -> str:
    """A console script of the interpreter running the bench (the bench venv's bin/)."""
    return str(Path(sys.executable).parent / name)


@dataclass
class WorkerGroup:
    """A started worker command; ``pid`` leads its own session so nothing else is touched."""

    name: str
    procs: list[subprocess.Popen[bytes]]
    log_path: Path

    def tree(self) -> list[int]:
        roots = [p.pid for p in self.procs]
        return descendants(roots)

    def alive(self) -> bool:
        return all(p.poll() is None for p in self.procs)

    def stop(self, timeout: float = 15.0) -> None:
        pids = self.tree()
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for p in self.procs:  # whatever did not stop in time, and its children
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        for pid in pids:  # children that outlived their parent
            if _exists(pid) and _session(pid) in {p.pid for p in self.procs}:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def start(
    name: str, commands: list[list[str]], env: dict[str, str], cwd: Path = REPO_DIR
) -> WorkerGroup:
    logs = RESULTS_DIR / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    log_path = logs / f"{name}.log"
    log = open(log_path, "ab")  # noqa: SIM115 - the children keep writing to it
    procs = [
        subprocess.Popen(
            cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        for cmd in commands
    ]
    log.close()
    return WorkerGroup(name, procs, log_path)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name may hold spaces or parentheses; fields after the last ')' are fixed.
    return raw[raw.rindex(")") + 2 :].split()


def _exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _session(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[3]) if fields else None


def descendants(roots: list[int]) -> list[int]:
    """``roots`` and every live process below them, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    stack = [r for r in roots if _exists(r)]
    while stack:
        pid = stack.pop()
        found.append(pid)
        stack.extend(children.get(pid, []))
    return found


def peak_rss_mb(pid: int) -> float:
    """VmHWM (peak resident set size) of one process, in MiB; 0 if it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def leaves(pids: list[int]) -> list[int]:
    """The processes of a tree that have no children of their own: the ones running jobs."""
    parents = set()
    for pid in pids:
        fields = _stat_fields(pid)
        if fields:
            parents.add(int(fields[1]))
    return [p for p in pids if p not in parents]


def memory(group: WorkerGroup) -> dict[str, float]:
    """Peak RSS summed over the whole worker tree, and the largest job-running process."""
    pids = group.tree()
    per = {pid: peak_rss_mb(pid) for pid in pids}
    workers = leaves(pids)
    return {
        "rss_total_mb": round(sum(per.values()), 1),
        "rss_per_process_mb": round(max((per[p] for p in workers), default=0.0), 1),
        "processes": len(pids),
    }
