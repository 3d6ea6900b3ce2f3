"""Shared constants: where Redis is, which database each system uses, the bench's own keys."""

from __future__ import annotations

import os
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
VENV_DIR = BENCH_DIR / ".venv"

REDIS_HOST = os.environ.get("BENCH_REDIS_HOST", "127.0.0.1")
REDIS_PORT = int(os.environ.get("BENCH_REDIS_PORT", "6379"))

# One Redis database per system, flushed before every measurement: no system sees another's keys.
REDIS_DB = {"ours": 11, "ours-nolog": 11, "ours-batch": 11, "rq": 12, "celery": 13, "dramatiq": 14, "huey": 15}

# Keys the job writes (in its system's database).
COUNTER_KEY = "bench:counter"
FIRST_KEY = "bench:first_start"
LATENCY_KEY = "bench:latency"

N_FULL = 20_000
N_QUICK = 2_000
REPEATS_FULL = 3
LATENCY_JOBS = 500
LATENCY_RATE = 100.0  # jobs per second during the idle-latency test


def redis_url(db: int) -> str:
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{db}"
