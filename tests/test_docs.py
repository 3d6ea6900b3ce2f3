"""The docs' python blocks run, or mirror the example project, or are marked as fragments.

A reader copies examples from the docs; one that no longer works is a bug. See
``tests/docs_blocks.py`` for the markers.
"""

from __future__ import annotations

import ast
import builtins
import dis
import inspect
import re
import sys
import unittest
from types import CodeType, ModuleType

import pytest
from django.test import override_settings

from django_async_jobs import checks, conf, registry
from django_async_jobs.broker.client import get_broker
from django_async_jobs.broker.keys import escape_glob
from django_async_jobs.worker.launcher import Worker
from tests import docs_blocks
from tests.docs_blocks import ROOT
from tests.helpers import wait_for

GROUPS = docs_blocks.groups()
MIRRORS = [b for b in docs_blocks.python_blocks() if b.marker and b.marker[0] == "mirrors"]

# The guide's seven queues, which the docs' examples use.
GUIDE_QUEUES = [
    ("critical", 6), ("default", 5), ("notifications", 4), ("integrations", 3),
    ("bulk", 2), ("scheduled", 1), ("low", 1),
]


def test_markers_are_well_formed():
    problems = [f"{s.path.relative_to(ROOT)}:{s.line}: {s.text}" for s in docs_blocks.strays()]
    for block in docs_blocks.python_blocks():
        if not block.marker:
            continue
        kind, value = block.marker
        if kind == "fragment" and not value:
            problems.append(f"{block.name}: a fragment marker needs a reason")
        if kind == "run" and not block.run_options <= docs_blocks.RUN_OPTIONS:
            problems.append(f"{block.name}: unknown run option in {value!r}")
        if "continues" in block.run_options and any(g.blocks[0] is block for g in GROUPS):
            problems.append(f"{block.name}: 'continues' but no runnable block before it on the page")
    assert not problems, "\n".join(problems)


def test_every_page_is_in_the_nav():
    """mkdocs only reports a page missing from the nav; a reader would never find it."""
    nav = (ROOT / "mkdocs.yml").read_text()
    missing = [p.name for p in (ROOT / "docs").glob("*.md") if not re.search(rf":\s*{re.escape(p.name)}\s*$", nav, re.M)]
    assert not missing


def test_configuration_lists_every_key_with_its_default():
    text = (ROOT / "docs" / "configuration.md").read_text()
    rows = dict(re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \|", text, re.M))
    missing = sorted((set(conf.DEFAULTS) | conf.LATER_KEYS) - set(rows))
    assert not missing, f"configuration.md has no row for {missing}"
    wrong = {
        key: rows[key] for key, default in conf.DEFAULTS.items()
        if ast.literal_eval(rows[key].strip().strip("`")) != default
    }
    assert not wrong, f"configuration.md gives these defaults wrongly: {wrong}"


@pytest.mark.parametrize("block", MIRRORS, ids=lambda b: b.name)
def test_mirrored_block_matches_the_example_project(block):
    target, _, names = block.marker[1].partition("::")
    source = "\n".join(docs_blocks.definition_source(ROOT / target, name.strip()) for name in names.split(","))
    assert docs_blocks.normalised(block.code) == docs_blocks.normalised(source), (
        f"{block.name} no longer matches {block.marker[1]}; copy the source again"
    )


@pytest.fixture
def own_registry(monkeypatch):
    """Jobs a block defines are registered for its test only, never seen by another test."""
    monkeypatch.setattr(registry, "_jobs", dict(registry._jobs))
    return set(registry._jobs)


@pytest.mark.parametrize("group", [
    # A worker's threads see only committed rows.
    pytest.param(g, marks=pytest.mark.django_db(transaction=g.worker), id=g.name) for g in GROUPS
])
def test_example_runs(group, request, prefix, settings, own_registry, monkeypatch):
    settings.ASYNC_JOBS = {**settings.ASYNC_JOBS, "QUEUES": GUIDE_QUEUES}
    worker = Worker() if group.worker else None
    if worker:
        worker.start()
    namespace: dict = {}
    config = None
    try:
        for block in group.blocks:
            module = _module(block.module, monkeypatch)
            module.__dict__.update({k: v for k, v in namespace.items() if not k.startswith("__")})
            exec(compile(block.code, block.name, "exec"), module.__dict__)
            namespace.update(module.__dict__)
            if docs_blocks.assigns(block.code, "ASYNC_JOBS"):
                config = namespace["ASYNC_JOBS"]
        undefined = {name for block in group.blocks for name in _globals_used(block)} - set(namespace) - set(dir(builtins))
        assert not undefined, f"names the example uses but never defines or imports: {sorted(undefined)}"
        for name, test in list(namespace.items()):
            if name.startswith("test_") and callable(test):  # an example test: run it, with its fixtures
                test(**{arg: request.getfixturevalue(arg) for arg in inspect.signature(test).parameters})
            elif isinstance(test, type) and issubclass(test, unittest.TestCase) and test.__module__ in {b.module for b in group.blocks}:
                result = unittest.TestResult()
                unittest.defaultTestLoader.loadTestsFromTestCase(test).run(result)
                assert result.wasSuccessful(), result.errors + result.failures
        if worker:
            wait_for(_drained, timeout=30, what="the example's jobs finish")
            stat = get_broker().redis.get
            assert stat(get_broker().keys.stat("processed")), "the worker ran none of the example's jobs"
            assert not stat(get_broker().keys.stat("failed")), "a job of the example failed"
    finally:
        if worker:
            worker.stop(timeout=2)
    _assert_checks_pass(config, own_registry)


def _module(name: str, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """The block's module, in ``sys.modules`` for the test: a later block can import from a
    ``# app/jobs.py`` block as the reader's code would, and dataclasses find their module."""
    module = ModuleType(name)
    parts = name.split(".")
    for depth in range(1, len(parts)):
        package = ".".join(parts[:depth])
        if package not in sys.modules:
            monkeypatch.setitem(sys.modules, package, ModuleType(package))
            sys.modules[package].__path__ = []
    monkeypatch.setitem(sys.modules, name, module)
    if len(parts) > 1:
        monkeypatch.setattr(sys.modules[".".join(parts[:-1])], parts[-1], module, raising=False)
    return module


def _globals_used(block: docs_blocks.Block) -> set[str]:
    """Global names the block's functions read: a method body is checked even if never called."""
    names: set[str] = set()
    stored: set[str] = set()  # module-level names, some gone by the end (``except ... as exc``)
    todo: list[CodeType] = [compile(block.code, block.name, "exec")]
    while todo:
        code = todo.pop()
        todo.extend(c for c in code.co_consts if isinstance(c, CodeType))
        for instruction in dis.get_instructions(code):
            if instruction.opname in ("LOAD_GLOBAL", "LOAD_NAME") and not instruction.argval.startswith("__"):
                names.add(instruction.argval)
            elif instruction.opname in ("STORE_NAME", "STORE_GLOBAL"):
                stored.add(instruction.argval)
    return names - stored


def _drained() -> bool:
    """No job waits in a queue and none is in flight (scheduled and retrying ones may wait)."""
    redis = get_broker().redis
    keys = get_broker().keys
    queued = any(redis.zcard(keys.queue(name)) for name, _ in GUIDE_QUEUES)
    inflight = any(redis.hlen(key) for key in redis.scan_iter(f"{escape_glob(keys.inflight_base)}*"))
    return not queued and not inflight


def _assert_checks_pass(config: dict | None, before: set[str]) -> None:
    """The system checks pass for the example's settings (or the docs' queues) and its jobs."""
    own = {name: cls for name, cls in registry._jobs.items() if name not in before}
    with override_settings(ASYNC_JOBS=config if config is not None else {"QUEUES": GUIDE_QUEUES}):
        saved, registry._jobs = registry._jobs, own
        try:
            problems = checks.check_settings()
        finally:
            registry._jobs = saved
    assert not problems, problems
