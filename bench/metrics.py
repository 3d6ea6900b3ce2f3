"""Small statistics helpers and the list of reported metrics with their direction."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), linear between the closest ranks."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def median(values: Sequence[float]) -> float:
    clean = [v for v in values if v == v]  # drop NaN
    return statistics.median(clean) if clean else float("nan")


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    higher_is_better: bool


METRICS = (
    Metric("enqueue_one", "enqueue one at a time", "jobs/s", True),
    Metric("enqueue_bulk", "bulk enqueue", "jobs/s", True),
    Metric("drain", "drain throughput", "jobs/s", True),
    Metric("latency_p50", "idle latency p50", "ms", False),
    Metric("latency_p99", "idle latency p99", "ms", False),
    Metric("rss_total_mb", "worker peak RSS, all processes", "MB", False),
    Metric("rss_per_process_mb", "worker peak RSS, per job process", "MB", False),
)
