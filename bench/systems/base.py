"""The interface every benchmarked system implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import redis

from bench.config import REDIS_DB, REDIS_HOST, REDIS_PORT, REPO_DIR
from bench.procs import bench_env


@dataclass(frozen=True)
class Mode:
    """A worker layout: ``A`` is one process with ten threads, ``B`` is two processes."""

    name: str
    processes: int
    threads: int


MODE_A = Mode("A", processes=1, threads=10)
MODE_B = Mode("B", processes=2, threads=10)
MODES = {"A": MODE_A, "B": MODE_B}


class System(ABC):
    """A job system on its own Redis database, with the one bench job registered."""

    name: str
    version: str = ""
    cwd: Path = REPO_DIR  # where the worker commands run

    @property
    def db(self) -> int:
        return REDIS_DB[self.name]

    def redis(self) -> redis.Redis:
        return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, db=self.db)

    def flush(self) -> None:
        self.redis().flushdb()

    @abstractmethod
    def prepare(self) -> None:
        """Import and configure the client side in the bench process (once)."""

    def env(self) -> dict[str, str]:
        return bench_env()

    @abstractmethod
    def enqueue_one(self, enqueued_at: float) -> None:
        """Enqueue one job through the system's usual per-job API."""

    @abstractmethod
    def enqueue_bulk(self, n: int) -> None:
        """Enqueue ``n`` jobs the fastest documented way (a bulk API where there is one)."""

    @abstractmethod
    def worker_commands(self, mode: Mode) -> list[list[str]]:
        """The command line(s) that run this system's workers in ``mode``."""

    def describe(self, mode: Mode) -> str:
        return " & ".join(" ".join(_short(c) for c in cmd) for cmd in self.worker_commands(mode))


def _short(arg: str) -> str:
    return arg.rsplit("/", 1)[-1] if arg.startswith("/") else arg
