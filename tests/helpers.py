"""Test helpers any test module can import (``from helpers import make_image``).

A plain module, not fixtures, so helpers can be called with arguments and composed; the
fixtures in ``conftest.py`` are thin wrappers around these.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


def make_image(
    path: Path,
    size: tuple[int, int] = (32, 32),
    color: tuple[int, int, int] = (200, 30, 30),
    fmt: str = "PNG",
) -> Path:
    """Write a small real image (PNG, JPEG or WEBP) and return its path; parents are created."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, format=fmt)
    return path


def make_bomb_png(path: Path, width: int = 40_000, height: int = 40_000) -> Path:
    """A tiny PNG whose header claims ``width x height`` pixels: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to a fraction of its size, like an interrupted copy."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def write_manifest(
    tmp_path: Path,
    jobs: Sequence[Mapping[str, Any]] | None = None,
    api: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    filename: str = "manifest.yaml",
    images_per_job: int = 2,
) -> Path:
    """Write a valid manifest in ``tmp_path`` and return its path.

    Without ``jobs``: one FluxFinetune job ``demo`` reading the folder ``images/demo`` of
    ``images_per_job`` real PNGs. Given jobs are written as they are, except that a job
    with neither ``images``, ``image_urls`` nor ``pairs`` gets a fresh folder of images
    (``images/<name>``), so ``jobs=[{"name": "a"}, {"name": "b"}]`` is valid too.
    ``api`` defaults to ``{"endpoint": "sandbox"}``.
    """
    if jobs is None:
        jobs = [{"name": "demo", "lora_prefix": "DEMO"}]
    written: list[dict[str, Any]] = []
    for job in jobs:
        job = dict(job)
        if not any(k in job for k in ("images", "image_urls", "pairs")):
            name = str(job.get("name", "job"))
            for i in range(images_per_job):
                make_image(tmp_path / "images" / name / f"{i:03d}.png", color=(40 * i % 256, 90, 160))
            job["images"] = f"images/{name}"
        written.append(job)
    doc: dict[str, Any] = {"version": 1, "api": dict(api or {"endpoint": "sandbox"})}
    if defaults:
        doc["defaults"] = dict(defaults)
    doc["jobs"] = written
    path = tmp_path / filename
    path.write_text(dump_yaml(doc), encoding="utf-8")
    return path


def run_runner(
    *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m runner ARGS`` in a real subprocess, importing this checkout."""
    full_env = dict(os.environ if env is None else env)
    full_env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO_ROOT), *filter(None, [full_env.get("PYTHONPATH")])]
    )
    full_env.setdefault("NO_COLOR", "1")
    return subprocess.run(
        [sys.executable, "-m", "runner", *args],
        cwd=cwd or REPO_ROOT,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def read_body(receive: Any) -> bytes:
    """The whole request body, for the small ASGI stand-ins of APIs the sandbox is not."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


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
