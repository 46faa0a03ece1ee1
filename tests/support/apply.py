"""End-to-end apply tests: a real sandbox on loopback and ``runner`` run as a real
subprocess with an API key, as CI would run it."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx

from support.cli import Run, run_runner

SECRET = "sk-e2e-Zq8VtW3pL0x"


def runner(*args: str, cwd: Path, env: Mapping[str, str] | None = None, timeout: float = 120) -> Run:
    """``run_runner`` with ``SECRET`` as the key and ``CI=true``; ``env`` is set on top."""
    return run_runner(
        *args, cwd=cwd, extra_env={"VIMMERSE_API_KEY": SECRET, "CI": "true", **(env or {})}, timeout=timeout
    )


def ledger(url: str, key: str = SECRET) -> dict[str, Any]:
    """The sandbox's record of what it was sent."""
    response = httpx.get(f"{url}/_sandbox/ledger", headers={"X-Api-Key": key}, timeout=10)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


@contextlib.contextmanager
def sandbox(state_dir: Path, **config: Any) -> Iterator[str]:
    """A sandbox server on loopback (trainings of 0.3 s unless told); yields its URL."""
    from runner.sandbox.config import SandboxConfig
    from runner.sandbox.serve import start_server

    config.setdefault("train_seconds", 0.3)
    with start_server(SandboxConfig(state_dir=state_dir, **config)) as server:
        yield server.url


def plan_json(manifest: Path) -> dict[str, Any]:
    result = runner("plan", manifest.name, "--format", "json", cwd=manifest.parent)
    assert result.code == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc
