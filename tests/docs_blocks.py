"""The fenced code blocks of the docs, and the markers that say how each python block is tested.

A python block is run by ``tests/test_docs.py`` unless an HTML comment (invisible on a code
host and in the built site) right before its fence says otherwise:

* ``<!-- fragment: why -->``: deliberately not run (a settings excerpt, a line of a larger
  example); the reason is required, so an untested block is always a decision;
* ``<!-- mirrors: example_project/deliveries/jobs.py::ClassName -->``: the block is that
  class's (or function's) source, compared after normalising whitespace;
* ``<!-- run: continues -->``: runs after the page's previous runnable block, in its namespace;
* ``<!-- run: worker -->``: a worker runs while the block does, and the queues must drain.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC_FILES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
MARKER = re.compile(r"^<!--\s*(\w[\w-]*)\s*:\s*(.*?)\s*-->$")
KINDS = {"fragment", "mirrors", "run"}
RUN_OPTIONS = {"continues", "worker"}
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
PATH_COMMENT = re.compile(r"^#\s*([\w/]+)\.py\b")


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    code: str
    marker: tuple[str, str] | None = None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def run_options(self) -> set[str]:
        if self.marker and self.marker[0] == "run":
            return {part.strip() for part in self.marker[1].split(",")}
        return set()

    @property
    def module(self) -> str:
        """The module a block's classes belong to: its ``# app/jobs.py`` comment, or a unique one.

        Job names come from it, so a recurring entry's ``"class": "app.jobs.Job"`` finds the job
        a ``# app/jobs.py`` block defines.
        """
        match = PATH_COMMENT.match(self.code)
        if match:
            return match.group(1).replace("/", ".").removesuffix(".__init__")
        slug = re.sub(r"\W", "_", self.path.stem)
        return f"docs_examples.{slug}_{self.line}"


@dataclass
class Group:
    """A block to run and the ``continues`` blocks after it: one test."""

    blocks: list[Block] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.blocks[0].name

    @property
    def worker(self) -> bool:
        return any("worker" in block.run_options for block in self.blocks)


@dataclass
class Stray:
    """A marker comment that is not right before a python block: a mistake to report."""

    path: Path
    line: int
    text: str


def parse(path: Path) -> tuple[list[Block], list[Stray]]:
    blocks: list[Block] = []
    strays: list[Stray] = []
    lines = path.read_text().splitlines()
    pending: tuple[tuple[str, str], int] | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        marker = MARKER.match(stripped)
        fence = FENCE.match(line)
        if marker and marker.group(1) in KINDS:
            if pending:
                strays.append(Stray(path, pending[1], "marker followed by another marker"))
            pending = ((marker.group(1), marker.group(2)), i + 1)
        elif fence:
            indent, lang = fence.groups()
            body: list[str] = []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            code = textwrap.dedent("\n".join(body)) + "\n"
            block = Block(path, i - len(body), lang, code)
            if pending:
                if lang != "python":
                    strays.append(Stray(path, pending[1], f"marker before a {lang or 'plain'} block"))
                else:
                    block.marker = pending[0]
                pending = None
            blocks.append(block)
        elif stripped and pending:
            strays.append(Stray(path, pending[1], "marker not right before a code block"))
            pending = None
        elif stripped.startswith("<!--") and re.match(r"<!--\s*(fragment|mirrors?|run|test)\b", stripped):
            strays.append(Stray(path, i + 1, f"unknown marker {stripped!r}"))
        i += 1
    if pending:
        strays.append(Stray(path, pending[1], "marker at the end of the file"))
    return blocks, strays


def python_blocks() -> list[Block]:
    return [block for path in DOC_FILES for block in parse(path)[0] if block.lang == "python"]


def strays() -> list[Stray]:
    return [stray for path in DOC_FILES for stray in parse(path)[1]]


def groups() -> list[Group]:
    """Runnable blocks, each with the ``continues`` blocks that follow it on its page."""
    out: list[Group] = []
    for block in python_blocks():
        kind = block.marker[0] if block.marker else "run"
        if kind != "run":
            continue
        if "continues" in block.run_options and out and out[-1].blocks[-1].path == block.path:
            out[-1].blocks.append(block)
        else:
            out.append(Group([block]))
    return out


def assigns(code: str, name: str) -> bool:
    """Whether the block binds (or updates an item of) ``name`` at top level."""
    for node in ast.parse(code).body:
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        for target in targets:
            while isinstance(target, ast.Subscript):
                target = target.value
            if isinstance(target, ast.Name) and target.id == name:
                return True
    return False


def definition_source(path: Path, name: str) -> str:
    """The source of a top-level class or function of ``path``, decorators included."""
    source = path.read_text()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            return "\n".join(source.splitlines()[start - 1:node.end_lineno]) + "\n"
    raise LookupError(f"{path.relative_to(ROOT)} has no top-level {name!r}")


def normalised(code: str) -> str:
    """Compare code, not layout: no trailing spaces, no blank lines."""
    return "\n".join(line.rstrip() for line in textwrap.dedent(code).splitlines() if line.strip())
