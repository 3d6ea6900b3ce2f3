"""One module per system under test, each with a ``System`` subclass; ``load`` builds them."""

from __future__ import annotations

from importlib import import_module

from bench.systems.base import Mode, System

ALL = ("ours", "rq", "celery", "dramatiq", "huey")
EXTRA = ("ours-nolog", "ours-batch")  # selectable with --systems, not part of the default run

_MODULES = {
    "ours": "bench.systems.ours",
    "ours-nolog": "bench.systems.ours_nolog",
    "ours-batch": "bench.systems.ours_batch",
    "rq": "bench.systems.rq",
    "celery": "bench.systems.celery",
    "dramatiq": "bench.systems.dramatiq",
    "huey": "bench.systems.huey",
}


def load(name: str) -> System:
    if name not in _MODULES:
        raise ValueError(f"unknown system {name!r}; choose from {', '.join(ALL + EXTRA)}")
    system: System = import_module(_MODULES[name]).SYSTEM
    return system


__all__ = ["ALL", "EXTRA", "Mode", "System", "load"]
