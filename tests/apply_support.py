"""Support for end-to-end apply tests: a real sandbox on loopback, real manifests and images,
and ``runner`` run as a real subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from helpers import make_image

SECRET = "sk-e2e-Zq8VtW3pL0x"


def image(path: Path, seed: int) -> Path:
    """A small real PNG whose colour (so content and digest) follows ``seed``."""
    return make_image(path, (16, 16), ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))


def write_manifest(
    folder: Path,
    url: str,
    n_jobs: int,
    *,
    images_per_job: int = 2,
    api: dict[str, Any] | None = None,
    name: str = "m.yaml",
    extra_jobs: list[dict[str, Any]] | None = None,
) -> Path:
    jobs: list[dict[str, Any]] = []
    for i in range(n_jobs):
        job_dir = folder / "data" / f"job{i:03d}"
        for k in range(images_per_job):
            image(job_dir / f"img{k}.png", i * 10 + k)
        jobs.append({"name": f"job-{i:03d}", "lora_prefix": f"P{i:03d}", "images": f"data/job{i:03d}"})
    jobs += extra_jobs or []
    doc = {
        "version": 1,
        "api": {
            "endpoint": url,
            "requests_per_second": 200,
            "burst": 50,
            "max_in_flight": 32,
            "max_uploads": 8,
            "poll_interval": "100ms",
            "job_timeout": "60s",
            **(api or {}),
        },
        "jobs": jobs,
    }
    path = folder / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def runner(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> Run:
    full_env = {**os.environ, "VIMMERSE_API_KEY": SECRET, "CI": "true", **(env or {})}
    proc = subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


def ledger(url: str, key: str = SECRET) -> dict[str, Any]:
    response = httpx.get(f"{url}/_sandbox/ledger", headers={"X-Api-Key": key}, timeout=10)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def lock_doc(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text())
    return doc


@contextlib.contextmanager
def sandbox(state_dir: Path, **config: Any) -> Iterator[str]:
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
