"""Running ``runner`` from a test: as a real subprocess (``run_runner``) or in-process
through ``runner.cli.main`` (``run_main``, milliseconds instead of a Python start-up)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support.paths import REPO_ROOT


@dataclass
class Run:
    """What a run of ``runner`` left: its exit code and both outputs."""

    code: int
    stdout: str
    stderr: str

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


def pythonpath(env: Mapping[str, str] | None = None) -> str:
    """This checkout first, so subprocesses never import another installed copy."""
    env = os.environ if env is None else env
    return os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])


def run_runner(
    *args: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 60,
) -> Run:
    """``python -m runner ARGS`` in a real subprocess, importing this checkout.

    ``env`` is the whole environment (default: this process's), ``extra_env`` is set on top
    of it; ``NO_COLOR=1`` unless either sets it. ``cwd`` defaults to the checkout's root.
    """
    full_env = {**(os.environ if env is None else env), **(extra_env or {})}
    full_env["PYTHONPATH"] = pythonpath(full_env)
    full_env.setdefault("NO_COLOR", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd or REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def run_main(*argv: str, cwd: Path | None = None) -> Run:
    """``runner.cli.main(ARGV)`` in this process, from ``cwd`` if given, outputs captured."""
    from runner.cli import main

    out, err = io.StringIO(), io.StringIO()
    previous = os.getcwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
    finally:
        os.chdir(previous)
    return Run(code, out.getvalue(), err.getvalue())


def log_events(stderr: str) -> list[dict[str, Any]]:
    """Every stderr line of a run under JSON logs, parsed; fails on any line that is not one
    JSON object (DESIGN section 2: errors, too, are JSON lines then)."""
    events = []
    for line in stderr.splitlines():
        doc = json.loads(line)
        assert isinstance(doc, dict) and "event" in doc, line
        events.append(doc)
    return events


def error_text(stderr: str) -> str:
    """The error events of a run under JSON logs, one per line, as a person would read them."""
    return "\n".join(str(e["event"]) for e in log_events(stderr) if e.get("level") == "error")
