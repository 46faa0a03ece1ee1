"""How long ``runner validate`` takes on a big manifest (default: 2,000 jobs x 10 images).

Generates tiny real images and a manifest in a temporary folder, then times the real
command in a subprocess (start-up included, as a user would see it) and prints the timing
with the exact command, so the figure can be reproduced::

    python3 benchmarks/bench_validate.py [--jobs 2000] [--images 10] [--repeat 3] [--keep]

Half the jobs read a folder, a quarter a list of files, a quarter a glob, so every
resolution path is exercised. Images are distinct files (20,000 by default), so the
per-file cache does not hide the cost of the header checks.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from io import BytesIO
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _tiny_images() -> dict[str, bytes]:
    """One small PNG and one small JPEG, written many times under different names."""
    from PIL import Image

    out = {}
    for fmt, suffix in (("PNG", "png"), ("JPEG", "jpg")):
        buf = BytesIO()
        Image.new("RGB", (16, 16), (120, 30, 200)).save(buf, format=fmt)
        out[suffix] = buf.getvalue()
    return out


def generate(folder: Path, jobs: int, images: int) -> Path:
    blobs = _tiny_images()
    lines = ["version: 1", "api:", "  endpoint: sandbox", "defaults:", "  finetune_type: Auto", "jobs:"]
    for j in range(jobs):
        name = f"job-{j:05d}"
        job_dir = folder / "data" / name
        job_dir.mkdir(parents=True)
        suffix = "png" if j % 2 else "jpg"
        files = [f"{i:03d}.{suffix}" for i in range(images)]
        for file in files:
            (job_dir / file).write_bytes(blobs[suffix])
        lines += [f"  - name: {name}", f"    lora_prefix: J{j}"]
        kind = j % 4
        if kind in (0, 1):
            lines.append(f"    images: data/{name}")
        elif kind == 2:
            lines.append("    images:")
            lines += [f"      - data/{name}/{file}" for file in files]
        else:
            lines.append(f"    images: data/{name}/*.{suffix}")
    manifest = folder / "big.yaml"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the generated folder")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="runner-bench-"))
    try:
        started = time.perf_counter()
        manifest = generate(folder, args.jobs, args.images)
        size_kb = manifest.stat().st_size / 1024
        print(
            f"generated {args.jobs} jobs x {args.images} images in {time.perf_counter() - started:.1f}s "
            f"({size_kb:.0f} KB manifest) under {folder}"
        )
        command = [sys.executable, "-m", "runner", "validate", str(manifest)]
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
        print("command:", "PYTHONPATH=" + shlex.quote(str(REPO_ROOT)), shlex.join(command))
        times = []
        for run in range(args.repeat):
            t0 = time.perf_counter()
            result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
            elapsed = time.perf_counter() - t0
            times.append(elapsed)
            print(f"run {run + 1}: {elapsed:.2f}s exit={result.returncode} {result.stdout.strip().splitlines()[-1]}")
            if result.returncode != 0:
                print(result.stdout[-2000:], result.stderr[-2000:], file=sys.stderr)
                return 1
        print(f"best {min(times):.2f}s, median {sorted(times)[len(times) // 2]:.2f}s on {os.cpu_count()} CPUs")
    finally:
        if args.keep:
            print("kept", folder)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
