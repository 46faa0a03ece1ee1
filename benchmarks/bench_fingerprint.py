"""Target 4: cold fingerprinting throughput vs a bare hashlib reference and sha256sum.

    python3 benchmarks/bench_fingerprint.py [--jobs 10000] [--images 10] [--keep DIR]

The same files as the no-op plan benchmark (JOBS x IMAGES small PNGs; ``--keep DIR``
shares its fixture). Three readers of the same file list, page cache warm for all (the
fixture was just written), measured in this run, each the best of two:

- runner: ``workspace.fingerprint`` with no digest cache, exactly what a first plan does:
  every file is header-checked with Pillow (so a damaged image is refused before it is
  trusted into the cache), read and hashed, in 2 threads;
- reference: only open, read and sha256 each file with hashlib in 2 threads;
- sha256sum: coreutils over the same list, one process (``xargs -0 sha256sum``).

Targets: runner ≥ 0.8 x the reference, ≥ 3 x sha256sum (files per second). Small files
measure per-file overhead (Python against C); ``--large NxMB`` (default 40 x 25 MB, the
memory benchmark's images) adds a set where hashing itself is the work.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import build_plan_fixture, print_command, write_jobs, write_manifest

from runner.engine import pipeline as workspace
from runner.gcpause import paused_gc
from runner.manifest import images as imagefiles
from runner.state.fingerprint import hash_file


def reference(paths: list[str]) -> float:
    """Open, read, sha256: nothing else, two threads each taking every other file."""

    def half(part: list[str]) -> None:
        buf = bytearray(1 << 20)
        view = memoryview(buf)
        for path in part:
            h = hashlib.sha256()
            with open(path, "rb", buffering=0) as fh:
                while n := fh.readinto(buf):
                    h.update(view[:n])
            h.hexdigest()

    started = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(half, [paths[0::2], paths[1::2]]))
    return time.perf_counter() - started


def sha256sum(paths: list[str]) -> float:
    data = b"\0".join(p.encode() for p in paths)
    started = time.perf_counter()
    subprocess.run(["xargs", "-0", "sha256sum"], input=data, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - started


def runner_cold(folder: Path, *, check: bool = True) -> float:
    cache = folder / ".runner" / "digests.json"
    cache.unlink(missing_ok=True)
    stats: dict[str, os.stat_result] = {}  # as in plan: validation's stats are reused
    manifest = workspace.load(str(folder / "plan.yaml"), stats)
    imagefiles._cache.clear()  # the per-process image check cache: cold as in a new process
    started = time.perf_counter()
    with paused_gc():  # as workspace.prepare runs it
        if check:
            workspace.fingerprint(manifest, stats)
        else:
            from runner.state.fingerprint import DigestCache, fingerprint_jobs

            fingerprint_jobs(manifest.jobs, DigestCache(None), stats=stats)
    return time.perf_counter() - started


def compare(label: str, folder: Path, paths: list[str]) -> None:
    size = sum(os.path.getsize(p) for p in paths)
    hash_file(Path(paths[0]))  # imports, buffers
    t_sum = min(sha256sum(paths) for _ in range(2))
    t_ref = min(reference(paths) for _ in range(2))
    t_run = min(runner_cold(folder) for _ in range(2))
    t_hash = min(runner_cold(folder, check=False) for _ in range(2))
    n = len(paths)
    print(f"cold fingerprinting, {label}: {n} files, {size / 1e6:.1f} MB (mean {size / n / 1e3:.1f} kB)")
    for name, t in (("runner (check + hash, as plan)", t_run), ("runner (hash only)", t_hash),
                    ("reference hashlib, 2 threads", t_ref), ("sha256sum (xargs, 1 process)", t_sum)):
        print(f"  {name:32s} {t:6.2f} s  {n / t:9.0f} files/s  {size / t / 1e6:7.1f} MB/s")
    r_ref, r_sum = t_ref / t_run, t_sum / t_run
    print(f"  runner / reference {r_ref:.2f} (target >= 0.8) -> {'MET' if r_ref >= 0.8 else 'NOT MET'}; "
          f"runner / sha256sum {r_sum:.2f} (target >= 3) -> {'MET' if r_sum >= 3 else 'NOT MET'}")
    print(f"  hash step alone: / reference {t_ref / t_hash:.2f}, / sha256sum {t_sum / t_hash:.2f}",
          flush=True)


def large_fixture(folder: Path, files: int, mb: int) -> None:
    names = write_jobs(folder, files, 1, size=mb * 1_000_000)
    write_manifest(folder, "plan.yaml", {"endpoint": "sandbox"}, [
        {"name": f"job-{i:05d}", "lora_prefix": f"L{i}", "images": n[0]} for i, n in enumerate(names)
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--keep", metavar="DIR", help="build (or reuse) the fixture in DIR")
    parser.add_argument("--large", default="40x25", metavar="NxMB",
                        help="also N images of MB megabytes, where hashing dominates ('' to skip)")
    args = parser.parse_args()
    print_command()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="runner-fp-"))
    try:
        if not (folder / "plan.yaml").exists():
            folder.mkdir(parents=True, exist_ok=True)
            build_plan_fixture(folder, args.jobs, args.images)
        manifest = workspace.load(str(folder / "plan.yaml"))
        paths = list(dict.fromkeys(str(p) for job in manifest.jobs for p in job.images))
        compare(f"{args.jobs} jobs x {args.images} small images (the no-op plan's files)", folder, paths)
        if args.large:
            files, mb = (int(x) for x in args.large.split("x"))
            with tempfile.TemporaryDirectory() as tmp:
                large_fixture(Path(tmp), files, mb)
                manifest = workspace.load(str(Path(tmp) / "plan.yaml"))
                paths = [str(p) for job in manifest.jobs for p in job.images]
                compare(f"{files} images of {mb} MB", Path(tmp), paths)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
