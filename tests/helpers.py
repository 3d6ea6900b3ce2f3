"""Shared test helpers: deadlines instead of sleeps, worker subprocesses, private redis-servers."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from django_async_jobs.testing import wait_for  # noqa: F401  (the suite imports it from here)

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class WorkerProcess:
    """A ``runworker`` subprocess in its own process group, its output kept in a file for failures."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "django", "runworker", "-v", "1", *args],
            cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"worker {self.pid} still running after {timeout}s:\n{self.output()}") from None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def output(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")

    def cleanup(self) -> None:
        """Kill the whole group: a supervisor's children must not outlive the test."""
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        self._log_file.close()


def worker_env(prefix: str, redis_url: str | None = None, overrides: dict[str, Any] | None = None) -> dict[str, str]:
    """The environment tests/settings.py reads: same key prefix, Redis and settings as the test."""
    env = dict(os.environ)
    env["DJANGO_SETTINGS_MODULE"] = "tests.settings"
    env["ASYNC_JOBS_KEY_PREFIX"] = prefix
    env["PYTHONUNBUFFERED"] = "1"
    if redis_url:
        env["REDIS_URL"] = redis_url
    env["ASYNC_JOBS_OVERRIDES"] = json.dumps(overrides or {})
    return env


def registered(broker: Any) -> dict[str, int]:
    """Live worker processes as the heartbeat records them: process id -> OS pid."""
    out: dict[str, int] = {}
    for member in broker.redis.zrange(broker.keys.processes, 0, -1):
        process_id = member.decode()
        pid = broker.redis.hget(broker.keys.process(process_id), "pid")
        if pid is not None:
            out[process_id] = int(pid)
    return out


class RedisServer:
    """A redis-server of the test's own, on a free port, that the test may kill, restart and freeze.

    ``persist``: an append-only file synced on every write (``"always"``, survives kill -9), or
    the fsync policy to use (``"everysec"``). ``debug``: allow ``DEBUG SLEEP`` (Redis 7 refuses
    DEBUG unless the server enables it).
    """

    def __init__(self, workdir: Path, persist: bool | str = False, debug: bool = False) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.fsync = persist if isinstance(persist, str) else "always" if persist else None
        self.debug = debug
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        aof = ["--appendonly", "yes", "--appendfsync", self.fsync] if self.fsync else ["--appendonly", "no"]
        debug = ["--enable-debug-command", "local"] if self.debug else []
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *aof, *debug, "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        wait_for(lambda: _pings(client), 5, "redis-server start")
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)  # a frozen server must not outlive the test
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def freeze(self) -> None:
        """SIGSTOP: connections stay open, nothing is answered; commands sent meanwhile run at
        ``thaw()``, even those whose client gave up and closed its connection."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def add_stats(broker: Any, processed: int, failed: int) -> None:
    """Seed the processed/failed counters (total and today) as settled jobs would."""
    from django_async_jobs.broker.client import today

    for name, amount in (("processed", processed), ("failed", failed)):
        broker.redis.incrby(broker.keys.stat(name), amount)
        broker.redis.incrby(broker.keys.stat(name, today()), amount)


def fetch(broker: Any, process_id: str, queues: list[str], count: int) -> list[tuple[bytes, bytes]]:
    """One fetch as a worker makes it: by a registered process (a beat first, if it never beat),
    numbered after the last attempt Redis ran, whose reply it read."""
    if broker.redis.zscore(broker.keys.processes, process_id) is None:
        broker.heartbeat(process_id, {}, ttl=60)
    last = int(broker.redis.hget(broker.keys.fetched(process_id), "attempt") or 0)
    return broker.fetch(process_id, queues, count, attempt=last + 1, received=last)
