"""Property-based fuzzing of the sandbox from its own /openapi.json finds no server error."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sandbox_support import HEADERS


def _schemathesis() -> list[str]:
    exe = shutil.which("schemathesis") or shutil.which("st")
    if exe:
        return [exe]
    pytest.importorskip("schemathesis", reason="schemathesis is not installed")
    return [sys.executable, "-m", "schemathesis.cli"]


@pytest.mark.slow
def test_schemathesis_finds_no_server_error(
    server: Callable[..., Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """schemathesis (examples, coverage, fuzzing) against /openapi.json at fault rate 0: no 5xx."""
    command = _schemathesis()
    with caplog.at_level(logging.ERROR), server(train_seconds=0, fault_rate=0.0) as running:
        result = subprocess.run(
            [
                *command, "run", f"{running.url}/openapi.json",
                "--checks", "not_a_server_error",
                "--header", f"X-Api-Key: {HEADERS['X-Api-Key']}",
                "--max-examples", "100",
                "--seed", "20260101",
                "--generation-database", "none",
                "--workers", "2",
                "--no-color",
                "--report", "junit", "--report-dir", str(tmp_path / "report"),
            ],
            capture_output=True, text=True, timeout=120, cwd=tmp_path,
        )  # fmt: skip
        ledger = httpx.get(f"{running.url}/_sandbox/ledger", headers=HEADERS).json()
        time.sleep(0.1)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "passed" in result.stdout
    assert ledger["posts"] > 20  # it really reached the API with the key
    server_errors = [r for r in caplog.records if r.name.startswith("uvicorn")]
    assert not server_errors, [r.getMessage() for r in server_errors]
