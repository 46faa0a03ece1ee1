"""From a manifest path to a plan: load + validate, read the lockfile, fingerprint, plan.

Shared by plan, apply and status so they agree on every step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from runner.endpoint import target_identity
from runner.errors import InputError
from runner.fingerprint import DigestCache, Fingerprinted, fingerprint_jobs
from runner.gcpause import paused_gc
from runner.lockfile import LockState, read_lockfile
from runner.models import Manifest
from runner.plan import Plan, make_plan


def digest_cache_path(manifest: Manifest) -> Path:
    return manifest.folder / ".runner" / "digests.json"


def lockfile_for(manifest: Manifest, flag: str | None) -> Path:
    return Path(flag).absolute() if flag else manifest.default_lockfile()


def load(manifest_path: str, stats: dict[str, os.stat_result] | None = None) -> Manifest:
    """Validate fully except decoding images, which fingerprinting does for files it reads.

    ``stats`` receives each image file's ``stat``, for ``fingerprint`` to reuse.
    """
    from runner.manifest import load_or_raise

    cache = Path(os.path.abspath(manifest_path)).parent / ".runner" / "schema-valid.json"
    return load_or_raise(Path(manifest_path), check_images=False, stats=stats, schema_cache=cache)


def fingerprint(
    manifest: Manifest,
    stats: dict[str, os.stat_result] | None = None,
    display: str | None = None,
) -> list[Fingerprinted]:
    """Fingerprint every job; images not in the digest cache are decoded-checked first.

    A no-op plan therefore reads no image bytes, while a new or changed file is checked as
    thoroughly as ``runner validate`` would (and reported at its place in the manifest).
    """
    from runner.images import check_content, check_file

    bad: list[str] = []

    def check(path: Path, content: bytes | None) -> None:
        problem = check_file(path) if content is None else check_content(content)
        if problem:
            bad.append(f"{path}: {problem}")
            raise _BadImage(problem)

    cache = DigestCache(digest_cache_path(manifest))
    try:
        fps = fingerprint_jobs(manifest.jobs, cache, check=check, stats=stats)
    except (_BadImage, OSError) as exc:
        from runner.manifest import load_or_raise

        # Re-validate with image checks to report the problem at its manifest position.
        load_or_raise(Path(display) if display else manifest.path, check_images=True)
        raise InputError("; ".join(bad) or f"cannot read an image: {exc}") from exc
    try:
        cache.save()
    except OSError as exc:
        # A read-only checkout only loses the cache (speed), never correctness.
        from runner import logsetup

        logsetup.get_logger("runner").debug("digest cache not saved", error=str(exc))
    return fps


class _BadImage(Exception):
    """An image failed its decode check while being fingerprinted."""


@dataclass(frozen=True)
class Prepared:
    manifest: Manifest
    display: str
    lockfile: Path
    state: LockState
    jobs: list[Fingerprinted]
    plan: Plan
    targets: tuple[str, ...] = ()
    # The identity of the endpoint planned against (endpoint.target_identity).
    api: str | None = None


def prepare(
    manifest_path: str,
    lockfile_flag: str | None,
    targets: list[str],
    state: LockState | None = None,
    *,
    endpoint: str | None = None,
) -> Prepared:
    """Load, fingerprint and plan; entries made against another API than the target
    (``endpoint`` flag, else ``RUNNER_ENDPOINT``, else ``api.endpoint``) plan as create."""
    stats: dict[str, os.stat_result] = {}  # one stat per image file, shared by both steps
    with paused_gc(freeze=True):
        manifest = load(manifest_path, stats)
        api = target_identity(manifest, endpoint, os.environ)
        lockfile = lockfile_for(manifest, lockfile_flag)
        if state is None:
            state = read_lockfile(lockfile)
        jobs = fingerprint(manifest, stats, manifest_path)
        plan = make_plan(manifest_path, jobs, state.entries, targets, api=api)
    return Prepared(manifest, manifest_path, lockfile, state, jobs, plan, tuple(targets), api)
