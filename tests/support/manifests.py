"""Manifests and lockfiles on disk: one ``write_manifest`` for every test."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from support.images import make_image

# The api block of ``write_manifest(url=...)``: quick enough that a real apply against the
# loopback sandbox takes a fraction of a second per job.
FAST_API: dict[str, Any] = {
    "requests_per_second": 200,
    "burst": 50,
    "max_in_flight": 32,
    "max_uploads": 8,
    "poll_interval": "100ms",
    "job_timeout": "60s",
}


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def lock_doc(path: Path) -> dict[str, Any]:
    """A lockfile (or any YAML file), parsed."""
    doc: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return doc


def numbered_jobs(folder: Path, n_jobs: int, images_per_job: int) -> list[dict[str, Any]]:
    """Jobs ``job-000``... (trigger prefix ``P000``...), each reading ``data/job000``... of
    ``images_per_job`` 16x16 PNGs whose colours differ from job to job."""
    jobs: list[dict[str, Any]] = []
    for i in range(n_jobs):
        for k in range(images_per_job):
            make_image(folder / "data" / f"job{i:03d}" / f"img{k}.png", (16, 16), seed=i * 10 + k)
        jobs.append({"name": f"job-{i:03d}", "lora_prefix": f"P{i:03d}", "images": f"data/job{i:03d}"})
    return jobs


def with_images(folder: Path, job: Mapping[str, Any], images_per_job: int) -> dict[str, Any]:
    """``job``, given a fresh folder ``images/<name>`` of real PNGs when it names no source."""
    job = dict(job)
    if not any(k in job for k in ("images", "image_urls", "pairs")):
        name = str(job.get("name", "job"))
        for i in range(images_per_job):
            make_image(folder / "images" / name / f"{i:03d}.png", color=(40 * i % 256, 90, 160))
        job["images"] = f"images/{name}"
    return job


def write_manifest(
    folder: Path,
    jobs: Sequence[Mapping[str, Any]] | None = None,
    *,
    n_jobs: int | None = None,
    url: str | None = None,
    api: Mapping[str, Any] | None = None,
    defaults: Mapping[str, Any] | None = None,
    filename: str = "manifest.yaml",
    images_per_job: int = 2,
) -> Path:
    """Write a valid manifest in ``folder`` and return its path.

    Jobs: with ``n_jobs``, that many ``numbered_jobs`` followed by ``jobs`` as given; else
    ``jobs`` (default: one job ``demo``), where a job naming no ``images``, ``image_urls``
    nor ``pairs`` gets a folder ``images/<name>`` of ``images_per_job`` real PNGs.
    The api block: ``api`` as given, or ``{"endpoint": "sandbox"}``; with ``url``, the
    quick ``FAST_API`` settings against ``url`` with ``api`` merged over them.
    """
    if n_jobs is not None:
        written = numbered_jobs(folder, n_jobs, images_per_job) + [dict(j) for j in jobs or []]
    else:
        if jobs is None:
            jobs = [{"name": "demo", "lora_prefix": "DEMO"}]
        written = [with_images(folder, j, images_per_job) for j in jobs]
    if url is not None:
        api_block = {"endpoint": url, **FAST_API, **(api or {})}
    else:
        api_block = dict(api or {"endpoint": "sandbox"})
    doc: dict[str, Any] = {"version": 1, "api": api_block}
    if defaults:
        doc["defaults"] = dict(defaults)
    doc["jobs"] = written
    path = folder / filename
    path.write_text(dump_yaml(doc), encoding="utf-8")
    return path
