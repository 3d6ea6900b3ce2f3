"""The package reads as layers (docs/architecture.md): no module imports a higher layer, and no
import inside a function dodges a cycle. Checked on the source, so a new module must be placed."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "django_async_jobs"

# Lowest first. A module may import its own layer and those below.
LAYERS = {
    "foundations": ["conf", "serialization", "registry", "signals"],
    "storage": ["broker", "models", "deadjobs", "migrations"],
    "job API": [
        "__init__", "middleware", "job", "callbacks", "retries", "locks", "idempotency", "progress",
        "dispatch", "outbox", "memory", "cron", "api", "flow", "resumable", "iterable", "batches",
        "metrics", "prometheus", "tracing",
    ],
    "worker runtime": ["worker"],
    "Django surface": [
        "apps", "checks", "admin", "dashboard", "management", "tasks", "jobs", "testing",
        "pytest_plugin", "views", "urls", "templatetags",
    ],
}
RANK = {name: rank for rank, names in enumerate(LAYERS.values()) for name in names}
LAYER_NAMES = list(LAYERS)

# Imports inside functions that are not there to dodge a cycle: Django's models, which modules
# reachable from the package's __init__ may not import while the app registry loads; the checks,
# registered when the app is ready; the test helpers, which a pytest plugin loads before Django
# is configured.
LAZY_ALLOWED = {"django_async_jobs.models", "django_async_jobs.checks", "django_async_jobs.testing"}


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        yield path, parts


def _imports(tree: ast.AST):
    """(module imported, inside a function?, line) for each project import run at import time;
    ``if TYPE_CHECKING:`` blocks name types for annotations only, and are skipped."""
    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and ast.unparse(child.test) == "TYPE_CHECKING":
                continue
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("django_async_jobs"):
                names = [child.module] if child.module != "django_async_jobs" else [
                    f"django_async_jobs.{a.name}" for a in child.names
                ]
                for name in names:
                    yield name, inside, child.lineno
            elif isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("django_async_jobs"):
                        yield alias.name, inside, child.lineno
            yield from visit(child, inside)

    yield from visit(tree, False)


def test_every_module_has_a_layer():
    unplaced = sorted({parts[0] for _, parts in _modules()} - set(RANK))
    assert not unplaced, f"place these in LAYERS (and docs/architecture.md): {unplaced}"


@pytest.mark.parametrize("path,parts", list(_modules()), ids=lambda v: "/".join(v) if isinstance(v, tuple) else "")
def test_no_module_imports_a_higher_layer_or_hides_an_import(path, parts):
    tree = ast.parse(path.read_text())
    own = RANK[parts[0]]
    for name, in_function, line in _imports(tree):
        target = name.split(".")[1] if name.count(".") else "__init__"
        if target not in RANK:  # a name imported from the package itself, e.g. ApplicationJob
            target = "__init__"
        where = f"{path.relative_to(PACKAGE.parent)}:{line}"
        assert RANK[target] <= own, (
            f"{where} imports {name} ({LAYER_NAMES[RANK[target]]}) from the {LAYER_NAMES[own]} layer"
        )
        if in_function:
            assert any(name == allowed or name.startswith(allowed + ".") for allowed in LAZY_ALLOWED), (
                f"{where} imports {name} inside a function; import it at the top of the module"
            )
