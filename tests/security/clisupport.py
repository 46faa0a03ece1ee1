"""What every attack test needs: the real ``runner`` as a subprocess that must never show a
traceback, and git in a temporary repository (a pull request is a commit on top of main)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from helpers import REPO_ROOT


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


def pythonpath() -> str:
    """This checkout first, so subprocesses never import another installed copy."""
    return os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])


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
