"""The code stays lint- and type-clean: ruff over the tree, mypy over runner/."""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO_ROOT


def test_ruff_is_clean() -> None:
    """ruff check . reports nothing."""
    done = subprocess.run([sys.executable, "-m", "ruff", "check", "."], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_mypy_is_clean() -> None:
    """mypy (configured in pyproject.toml) finds no type errors in runner/."""
    done = subprocess.run([sys.executable, "-m", "mypy"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
