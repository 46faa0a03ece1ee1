"""Target 3: a no-op ``runner plan`` after one apply, and the bytes it reads.

    python3 benchmarks/bench_plan.py [--jobs 10000] [--images 10] [--runs 5] [--keep DIR]

Writes JOBS jobs x IMAGES small PNGs (a quarter of the jobs name a folder, a quarter a
list of files, a quarter a glob, a quarter a folder again), applies them once for real
(``runner apply`` against ``runner sandbox serve`` in its own process, instant training),
then times ``runner plan --format json --detailed-exitcode`` as a subprocess RUNS times.
The first plan after the apply reads the new lockfile (and fills the parsed-lockfile and
schema caches); the others are the warm no-op case the target is about (≤ 2 s). Each run
reports the bytes the process read (``rchar`` from /proc/self/io, everything read()
returned, page cache or not) next to the size of the images and of the metadata files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, build_plan_fixture, print_command, run_measured, runner_cmd, sandbox

# Runs main() in the child and reports what /proc says it read, after the work is done.
PROBE = (
    "import sys,time;t=time.perf_counter();from runner.cli import main;"
    "rc=main(sys.argv[1:]);"
    "io=dict(l.split(': ') for l in open('/proc/self/io').read().splitlines() if l);"
    "print('PROBE',rc,time.perf_counter()-t,io['rchar'],io['read_bytes'],file=sys.stderr)"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--keep", metavar="DIR", help="build (or reuse) the fixture in DIR")
    args = parser.parse_args()
    print_command()
    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="runner-plan-"))
    try:
        manifest = folder / "plan.yaml"
        fresh = not manifest.exists()
        if fresh:
            t0 = time.perf_counter()
            folder.mkdir(parents=True, exist_ok=True)
            build_plan_fixture(folder, args.jobs, args.images)
            print(f"fixture: {args.jobs} jobs x {args.images} images written in "
                  f"{time.perf_counter() - t0:.1f} s under {folder}", flush=True)
        with sandbox(folder / ".sandbox") as server:
            text = manifest.read_text()
            start = text.index("  endpoint: ")
            end = text.index("\n", start)
            limits = ("" if "requests_per_second" in text else
                      "\n  requests_per_second: 1000\n  burst: 100\n  max_in_flight: 64\n"
                      "  max_uploads: 16\n  poll_interval: 50ms")
            manifest.write_text(text[:start] + f"  endpoint: {server.url}" + limits + text[end:])
            if fresh or not (folder / "plan.lock.yaml").exists():
                applied = run_measured(runner_cmd("-q", "apply", "plan.yaml"), cwd=folder)
                print(f"apply: {args.jobs} jobs in {applied.wall:.1f} s "
                      f"({args.jobs / applied.wall:.0f} jobs/s)", flush=True)
            runs = []
            for _ in range(args.runs):
                cmd = [sys.executable, "-c", PROBE, "plan", "plan.yaml", "--format", "json",
                       "--detailed-exitcode"]
                r = run_measured(cmd, cwd=folder, check=False)
                probe = next(line.split() for line in r.stderr.splitlines() if line.startswith("PROBE"))
                plan = json.loads(r.stdout)
                assert probe[1] == "0" and plan["summary"]["noop"] == args.jobs, (probe, plan["summary"])
                runs.append((r.wall, r.cpu, int(probe[3]), int(probe[4]), r.maxrss_mb))
        images = sum(p.stat().st_size for p in (folder / "data").rglob("*.png"))
        meta = {p.name: p.stat().st_size for p in
                [manifest, folder / "plan.lock.yaml", *_cache_files(folder)]}
        first, warm = runs[0], runs[1:] or runs
        walls = [w for w, *_ in warm]
        print(f"no-op plan: {args.jobs} jobs x {args.images} images "
              f"(command: runner plan plan.yaml --format json --detailed-exitcode)")
        print(f"  first run after the apply: {first[0]:.2f} s wall, {first[1]:.2f} s CPU")
        print(f"  warm runs: best {min(walls):.2f} s, median {statistics.median(walls):.2f} s wall; "
              f"best {min(c for _, c, *_ in warm):.2f} s CPU; peak RSS {max(m for *_, m in warm):.0f} MB")
        rchar = max(r for _, _, r, _, _ in warm)
        print(f"  bytes read per run: {rchar / 1e6:.1f} MB (from disk: {max(b for *_, b, _ in warm) / 1e6:.1f} MB)"
              f" vs {images / 1e6:.1f} MB of images; metadata files "
              + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in meta.items()))
        reads_images = rchar > sum(meta.values()) + 5e6  # + the interpreter's own modules
        best = min(walls)
        print(f"  target <= 2 s on a warm cache: best {best:.2f} s -> "
              f"{'MET' if best <= 2.0 else 'NOT MET'}; reads image bytes: "
              f"{'YES' if reads_images else 'no'}")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


def _cache_files(folder: Path) -> list[Path]:
    """The plan's cache files: in the per-user cache folder (runner.cache), or in
    ``.runner/`` for runners before it existed."""
    try:
        from runner.cache import folder_for
    except ImportError:
        return sorted((folder / ".runner").glob("*.json"))
    where = folder_for(folder, create=False)
    return sorted(where.glob("*.json")) if where is not None else []


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
