"""Create ``bench/.venv`` (peers from PyPI + this repository editable) and re-run inside it."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

from bench.config import BENCH_DIR, REPO_DIR, VENV_DIR

REQUIREMENTS = BENCH_DIR / "requirements.txt"
MARKER = VENV_DIR / ".bench-requirements"


def _python() -> Path:
    return VENV_DIR / "bin" / "python"


def _wanted() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


def ensure() -> None:
    """Build or refresh the venv when requirements.txt changed since it was last installed."""
    if not _python().exists():
        print(f"creating {VENV_DIR}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(VENV_DIR)], check=True)
    if not MARKER.exists() or MARKER.read_text() != _wanted():
        pip = [str(_python()), "-m", "pip", "install", "--quiet"]
        subprocess.run([*pip, "--upgrade", "pip"], check=True)
        subprocess.run([*pip, "-r", str(REQUIREMENTS), "-e", str(REPO_DIR)], check=True)
        MARKER.write_text(_wanted())


def reexec_inside(argv: list[str]) -> None:
    """Replace this process with the same command run by the bench venv's interpreter."""
    if Path(sys.prefix).resolve() == VENV_DIR.resolve():
        return
    ensure()
    python = str(_python())
    os.execv(python, [python, *argv])
