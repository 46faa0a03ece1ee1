"""Target 5: peak memory of ``runner apply`` while uploading big images, as data grows.

    python3 benchmarks/bench_memory.py [--mb 25] [--sizes 10,40]

For each JOBS in SIZES: JOBS jobs of one MB-megabyte PNG each (incompressible pixels), one
``runner apply`` as a subprocess against ``runner sandbox serve`` in another process (the
server's memory is not counted). Peak RSS of the apply process is its VmHWM, sampled from
/proc (wait4's ru_maxrss would report this script's own size: see _common.py). Defaults: 10 jobs (250 MB) and 40 jobs (1 GB) side by side; target ≤ 120 MB
and flat (the 1 GB run within 10 % of the 250 MB run).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import print_command, run_measured, runner_cmd, sandbox, write_jobs, write_manifest


def one(jobs: int, mb: int) -> tuple[float, float, float, float]:
    folder = Path(tempfile.mkdtemp(prefix="runner-mem-"))
    try:
        names = write_jobs(folder, jobs, 1, size=mb * 1_000_000)
        total = sum((folder / n[0]).stat().st_size for n in names)
        with sandbox(folder / ".sandbox", "--max-upload-mb", str(mb * 2 + 10)) as server:
            api = {"endpoint": server.url, "requests_per_second": 50, "burst": 10,
                   "max_in_flight": 8, "max_uploads": 2, "poll_interval": "100ms"}
            write_manifest(folder, "mem.yaml", api, [
                {"name": f"job-{i:05d}", "lora_prefix": f"M{i}", "images": n[0]}
                for i, n in enumerate(names)
            ])
            started = time.perf_counter()
            r = run_measured(runner_cmd("-q", "apply", "mem.yaml"), cwd=folder)
            wall = time.perf_counter() - started
        return total, r.maxrss_mb, wall, r.cpu
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=25, help="size of each image")
    parser.add_argument("--sizes", default="10,40", help="job counts to compare")
    args = parser.parse_args()
    print_command()
    # The floor: an interpreter that imports what apply imports and does nothing.
    floor = run_measured([sys.executable, "-c", "import runner.commands.apply, runner.engine.pipeline"])
    print(f"baseline: importing runner's apply path alone peaks at {floor.maxrss_mb:.0f} MB RSS")
    results = []
    for jobs in (int(x) for x in args.sizes.split(",")):
        total, rss, wall, cpu = one(jobs, args.mb)
        results.append(rss)
        print(f"  {jobs:3d} jobs x {args.mb} MB = {total / 1e6:6.0f} MB uploaded: peak RSS {rss:6.1f} MB; "
              f"{wall:.1f} s wall, {cpu:.1f} s CPU ({total / 1e6 / wall:.0f} MB/s)", flush=True)
    flat = max(results) <= min(results) * 1.10
    ok = max(results) <= 120 and flat
    print(f"  peak RSS {max(results):.1f} MB (target <= 120), growth {max(results) / min(results):.2f}x "
          f"(flat: within 10 %) -> {'MET' if ok else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
