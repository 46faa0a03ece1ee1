"""From a manifest path to a plan: load + validate, read the lockfile, fingerprint, plan.

Shared by plan, apply and status so they agree on every step.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from runner import cache as usercache
from runner.api.endpoint import target_identity
from runner.atomic import UnsafeStateFile, check_state_dir
from runner.engine.plan import Plan, make_plan
from runner.errors import InputError
from runner.gcpause import paused_gc
from runner.models import Fingerprinted, Manifest
from runner.state.fingerprint import DigestCache, fingerprint_jobs
from runner.state.lockfile import LockState, read_lockfile

# runner's own state beside a manifest: the apply lock (``.runner/NAME.lock``) and the
# embedded sandbox's database and files. Never followed through a symlink (issue 12).
STATE_DIRS = (".runner", ".runner/sandbox", ".runner/sandbox/uploads", ".runner/sandbox/outputs")
STATE_FILES = tuple(f".runner/sandbox/sandbox.sqlite3{s}" for s in ("", "-wal", "-shm", "-journal"))


def digest_cache_path(manifest: Manifest) -> Path | None:
    """In the per-user cache folder (``runner.cache``), never beside the manifest."""
    return usercache.cache_file(manifest.folder, usercache.DIGESTS.file)


def check_state_folder(folder: Path) -> None:
    """Refuse a ``.runner`` (or the sandbox's folders and database in it) that is a symlink
    or not what runner made: plan and apply would write through it wherever it points."""
    present: set[str] = set()
    for rel in STATE_DIRS:
        parent = rel.rpartition("/")[0]
        if parent and parent not in present:
            continue  # not there: nothing below it either
        path = folder / rel
        try:
            if check_state_dir(path):
                present.add(rel)
        except UnsafeStateFile as exc:
            raise _unsafe_state(path, exc) from None
    if ".runner/sandbox" not in present:
        return
    for rel in STATE_FILES:
        path = folder / rel
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise InputError(f"{path}: cannot check it: {exc.strerror or exc}") from None
        if not stat.S_ISREG(st.st_mode):
            kind = "is a symlink" if stat.S_ISLNK(st.st_mode) else "is not a regular file"
            raise _unsafe_state(path, UnsafeStateFile(0, kind, str(path)))


def _unsafe_state(path: Path, exc: OSError) -> InputError:
    return InputError(
        f"{path} {exc.strerror}: runner keeps its state there (the apply lock, the embedded "
        "sandbox's database) and never reads or writes it through a symlink; remove it "
        "(it is not part of the repository: add .runner/ to .gitignore) and run again"
    )


def lockfile_for(manifest: Manifest, flag: str | None) -> Path:
    return Path(flag).absolute() if flag else manifest.default_lockfile()


def load(manifest_path: str, stats: dict[str, os.stat_result] | None = None) -> Manifest:
    """Validate fully except decoding images, which fingerprinting does for files it reads.

    ``stats`` receives each image file's ``stat``, for ``fingerprint`` to reuse.
    """
    from runner.manifest.read import load_or_raise

    folder = Path(os.path.abspath(manifest_path)).parent
    check_state_folder(folder)
    cache = usercache.cache_file(folder, usercache.SCHEMA_VALID.file)
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
    from runner.manifest.images import check_content, check_file

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
        from runner.manifest.read import load_or_raise

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


def check_uploads(manifest: Manifest, display: str, plan: Plan) -> None:
    """Refuse (exit 1, nothing sent) a job apply would submit whose request is larger than
    ``api.max_upload_mb``; jobs left as they are cost nothing (a no-op plan reads no image)."""
    if manifest.api.max_upload_mb is None:
        return
    from runner.engine.plan import SUBMITTING_ACTIONS
    from runner.engine.upload import upload_problems
    from runner.manifest.resize import ResizeCache

    sent = [c.job for c in plan.changes if c.job is not None and c.action in {*SUBMITTING_ACTIONS, "blocked"}]
    if not sent:
        return
    cache = ResizeCache.for_manifest(manifest.folder)
    try:
        problems = upload_problems(manifest, display, sent, cache)
    except OSError as exc:
        raise InputError(f"{display}: cannot downscale an image to size the upload: {exc}") from exc
    finally:
        cache.close()
    if problems:
        raise InputError(problems)


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
    check_uploads(manifest, manifest_path, plan)
    return Prepared(manifest, manifest_path, lockfile, state, jobs, plan, tuple(targets), api)
