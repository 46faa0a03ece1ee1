"""What every attack test needs: the real ``runner`` as a subprocess that must never show a
traceback, and git in a temporary repository (a pull request is a commit on top of main)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from support.cli import Run


def run_cli(*args: str, cwd: Path, env: dict[str, str], timeout: float = 120) -> Run:
    """``python -m runner ARGS`` in ``cwd`` with exactly ``env``: never a traceback, whatever
    the attack."""
    proc = subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False,
    )
    result = Run(proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in result.text and "internal error" not in result.text, result.text
    return result


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false",
         *args],
        cwd=repo, capture_output=True, text=True, check=True,
    )
    return proc.stdout
