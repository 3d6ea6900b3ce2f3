"""Medians over repeats, ratios to the best peer, targets, and the Markdown table."""

from __future__ import annotations

import math
from typing import Any

from bench.metrics import METRICS, Metric, median

# Targets from the performance brief: "ratio" is ours over the best peer, "abs_*" a fixed bound.
TARGETS: dict[str, tuple[str, float]] = {
    "drain": ("ratio", 2.0),
    "enqueue_one": ("ratio", 1.2),
    "enqueue_bulk": ("abs_min", 50_000),
    "latency_p50": ("abs_max", 1.0),
    "latency_p99": ("abs_max", 2.0),
    "rss_per_process_mb": ("abs_max", 60.0),
}


def medians(cells: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, float]]:
    """(system, mode) -> metric -> median over the repeats."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cell in cells:
        grouped.setdefault((cell["system"], cell["mode"]), []).append(cell)
    out: dict[tuple[str, str], dict[str, float]] = {}
    for key, runs in grouped.items():
        out[key] = {m.key: median([float(r.get(m.key, math.nan)) for r in runs]) for m in METRICS}
        out[key]["drain_complete"] = float(all(r.get("drain_complete", False) for r in runs))
    return out


def best_peer(values: dict[str, float], metric: Metric) -> tuple[str, float]:
    peers = {name: v for name, v in values.items() if not name.startswith("ours") and v == v}
    if not peers:
        return "", math.nan
    pick = max if metric.higher_is_better else min
    name = pick(peers, key=lambda k: peers[k])
    return name, peers[name]


def target_met(metric: Metric, ours: float, ratio: float) -> str:
    if metric.key not in TARGETS or ours != ours:
        return ""
    kind, value = TARGETS[metric.key]
    if kind == "ratio":
        ok = ratio >= value
        return f"{'yes' if ok else 'no'} (>= {value:g}x)"
    if kind == "abs_min":
        return f"{'yes' if ours >= value else 'no'} (>= {value:,.0f})"
    return f"{'yes' if ours <= value else 'no'} (<= {value:g})"


def fmt(value: float, unit: str) -> str:
    if value != value:
        return "n/a"
    if unit == "jobs/s":
        return f"{value:,.0f}"
    return f"{value:.2f}" if unit == "ms" else f"{value:.1f}"


def table(
    cells: list[dict[str, Any]], systems: list[str], modes: list[str]
) -> tuple[str, list[dict[str, Any]]]:
    """The Markdown table and the same rows as data (for the JSON)."""
    med = medians(cells)
    header = ["mode", "metric", *systems, "best peer", "ours / best", "target met"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows: list[dict[str, Any]] = []
    for mode in modes:
        for metric in METRICS:
            values = {s: med.get((s, mode), {}).get(metric.key, math.nan) for s in systems}
            peer, peer_value = best_peer(values, metric)
            ours = values.get("ours", math.nan)
            ratio = ours / peer_value if peer_value and peer_value == peer_value else math.nan
            met = target_met(metric, ours, ratio)
            cells_txt = []
            for s in systems:
                txt = fmt(values[s], metric.unit)
                if metric.key == "drain" and med.get((s, mode), {}).get("drain_complete") == 0.0:
                    txt += " (partial)"
                cells_txt.append(txt)
            ratio_txt = "n/a" if ratio != ratio else f"{ratio:.2f}x"
            lines.append(
                f"| {mode} | {metric.label} ({metric.unit}, {'higher' if metric.higher_is_better else 'lower'} is better) | "
                + " | ".join(cells_txt)
                + f" | {peer or 'n/a'} | {ratio_txt} | {met} |"
            )
            rows.append(
                {
                    "mode": mode,
                    "metric": metric.key,
                    "unit": metric.unit,
                    "values": values,
                    "best_peer": peer,
                    "best_peer_value": peer_value,
                    "ratio": ratio,
                    "target": met,
                }
            )
    return "\n".join(lines), rows
