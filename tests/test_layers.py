"""The layering contract of pyproject.toml ([tool.importlinter]) holds: no import runs up a
layer, and only archive.cli imports click (checked with import-linter, as CI runs it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _lint_imports() -> subprocess.CompletedProcess:
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    assert command, "import-linter is not installed (it is in the test extras)"
    return subprocess.run([command, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_no_import_runs_up_a_layer():
    result = _lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 2 kept, 0 broken." in result.stdout


def test_the_contract_catches_an_upward_import(tmp_path):
    """The contract is not vacuous: a copy of the package in which db imports reduce breaks it."""
    shutil.copytree(ROOT / "archive", tmp_path / "archive", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    bad = tmp_path / "archive" / "db" / "frames.py"
    bad.write_text(bad.read_text() + "\nfrom archive.reduce import pipeline  # noqa: E402,F401\n")
    command = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or shutil.which("lint-imports")
    result = subprocess.run([command, "--no-cache"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(tmp_path), "PATH": str(Path(sys.executable).parent)})
    assert result.returncode != 0
    assert "archive.db.frames -> archive.reduce.pipeline" in result.stdout
