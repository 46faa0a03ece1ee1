"""Target 9: upload economy. Phone photos through a CI runner's uplink, with and without
``upload.max_side``.

    python3 benchmarks/bench_upload.py [--jobs 8] [--images 40] [--mbps 50] [--max-side 1536]

JOBS jobs of IMAGES photo-like JPEGs of 4032 x 3024 (made here: a scene of gradients and
shapes at 1/8 size, upscaled, with film grain, so each is a 2-5 MB JPEG at quality 90,
and every one distinct), one ``runner apply`` as a subprocess against ``runner sandbox
serve --bandwidth-mbps MBPS`` in another process (the server reads request bodies no
faster than that, over all uploads together), once as they are and once with
``upload.max_side``, each from a cold per-user cache. Printed side by side: bytes the
sandbox stored (what crossed the link), wall time, CPU and peak RSS of the apply (VmHWM,
see _common.py), and the CPU one downscale takes, measured in this process. Targets: at
least 5x fewer bytes and 4x less wall time with max_side; peak RSS within 120 MB.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import KEY, REPO, env, print_command, run_measured, runner_cmd, sandbox, write_manifest

WIDTH, HEIGHT = 4032, 3024
_grain: object = None


def _init_grain() -> None:
    """One field of luminance grain per worker process (the slow part), shifted per photo."""
    global _grain
    from PIL import Image

    _grain = Image.effect_noise((WIDTH, HEIGHT), 7)


def photo(args: tuple[int, str]) -> int:
    """Write one photo-like JPEG (seeded: the same on every run); returns its size."""
    from PIL import Image, ImageChops, ImageDraw, ImageFilter

    seed, path = args
    rnd = random.Random(seed)
    w, h = WIDTH // 8, HEIGHT // 8
    sky = Image.linear_gradient("L").resize((w, h)).rotate(rnd.choice([0, 180]))
    ends = [rnd.randrange(60, 200) for _ in range(6)]
    bands = [sky.point(lambda v, a=ends[i], b=ends[i + 3]: a + (b - a) * v // 255) for i in range(3)]
    scene = Image.merge("RGB", bands)
    draw = ImageDraw.Draw(scene)
    for _ in range(25):
        x, y, s = rnd.randrange(w), rnd.randrange(h), rnd.randrange(8, 160)
        fill = tuple(rnd.randrange(256) for _ in range(3))
        shape = draw.ellipse if rnd.random() < 0.5 else draw.rectangle
        shape((x, y, x + s, y + int(s * rnd.uniform(0.3, 1.5))), fill=fill)
    scene = scene.filter(ImageFilter.GaussianBlur(1.5)).resize((WIDTH, HEIGHT), Image.Resampling.BICUBIC)
    grain = ImageChops.offset(_grain, rnd.randrange(WIDTH), rnd.randrange(HEIGHT))  # type: ignore[arg-type]
    image = ImageChops.add(scene, Image.merge("RGB", (grain, grain, grain)), 1.0, -128)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    Path(path).write_bytes(buf.getvalue())
    return len(buf.getvalue())


def make_photos(folder: Path, jobs: int, images: int) -> list[int]:
    """JOBS folders of IMAGES photos (kept between runs with --keep: made only once)."""
    todo = []
    for j in range(jobs):
        (folder / f"j{j:02d}").mkdir(parents=True, exist_ok=True)
        for k in range(images):
            path = folder / f"j{j:02d}" / f"IMG_{k:04d}.jpg"
            if not path.exists():
                todo.append((j * 1000 + k, str(path)))
    if todo:
        with ProcessPoolExecutor(max_workers=os.cpu_count() or 2, initializer=_init_grain) as pool:
            list(pool.map(photo, todo, chunksize=4))
    return [p.stat().st_size for p in sorted(folder.glob("j*/*.jpg"))][: jobs * images]


def downscale_cpu(paths: list[Path], max_side: int) -> float:
    """CPU seconds one downscale takes (the median of ``paths``), in this process."""
    sys.path.insert(0, str(REPO))
    from runner.manifest.resize import Setting, downscale

    downscale(paths[0], Setting(max_side))  # imports and first-use costs out of the figure
    times = []
    for path in paths:
        started = time.process_time()
        downscale(path, Setting(max_side))
        times.append(time.process_time() - started)
    return statistics.median(times)


def one(work: Path, photos: Path, jobs: int, mbps: float, max_side: int | None) -> dict[str, float]:
    """One cold apply of every job through the link; what crossed it and what it cost."""
    import httpx

    project = work / ("side" if max_side else "plain")
    shutil.rmtree(project, ignore_errors=True)
    project.mkdir(parents=True)
    (project / "photos").symlink_to(photos, target_is_directory=True)
    cache = work / f"cache-{project.name}"
    shutil.rmtree(cache, ignore_errors=True)
    with sandbox(work / f"state-{project.name}", "--bandwidth-mbps", str(mbps), "--max-upload-mb", "1000") as server:
        api = {"endpoint": server.url, "requests_per_second": 20, "burst": 10, "max_in_flight": 8,
               "max_uploads": 2, "poll_interval": "100ms"}
        entries = []
        for j in range(jobs):
            job: dict[str, object] = {"name": f"job-{j:02d}", "lora_prefix": f"U{j}", "images": f"photos/j{j:02d}"}
            if max_side:
                job["upload"] = f"{{max_side: {max_side}}}"
            entries.append(job)
        write_manifest(project, "bench.yaml", api, entries)
        r = run_measured(runner_cmd("-q", "apply", "--allow-outside-links", "bench.yaml"), cwd=project,
                         environ=env(RUNNER_CACHE_DIR=str(cache)))
        ledger = httpx.get(f"{server.url}/_sandbox/ledger", headers={"X-Api-Key": KEY}, timeout=30).json()
    return {"bytes": ledger["stored_bytes"], "side": ledger["largest_image_side"], "wall": r.wall,
            "cpu": r.cpu, "rss": r.maxrss_mb, "trainings": ledger["trainings"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--images", type=int, default=40, help="photos per job")
    parser.add_argument("--mbps", type=float, default=50.0, help="the sandbox's --bandwidth-mbps")
    parser.add_argument("--max-side", type=int, default=1536)
    parser.add_argument("--keep", type=Path, help="keep the photos here for the next run")
    args = parser.parse_args()
    print_command()
    work = Path(tempfile.mkdtemp(prefix="runner-upload-"))
    photos = args.keep.resolve() if args.keep else work / "photos-src"
    try:
        started = time.perf_counter()
        sizes = make_photos(photos, args.jobs, args.images)
        print(f"photos: {len(sizes)} JPEGs of {WIDTH}x{HEIGHT}, {min(sizes) / 1e6:.1f}-{max(sizes) / 1e6:.1f} MB "
              f"(median {statistics.median(sizes) / 1e6:.1f} MB), {sum(sizes) / 1e6:.0f} MB in all "
              f"(made in {time.perf_counter() - started:.0f} s)", flush=True)
        cpu = downscale_cpu(sorted(photos.glob("j00/*.jpg"))[:8], args.max_side)
        print(f"downscale to {args.max_side}: {cpu * 1000:.0f} ms CPU per photo (median of 8)", flush=True)
        plain = one(work, photos, args.jobs, args.mbps, None)
        side = one(work, photos, args.jobs, args.mbps, args.max_side)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{args.jobs} jobs x {args.images} photos through {args.mbps:g} Mbit/s:")
    print(f"  {'':22s} {'as they are':>14s} {'max_side ' + str(args.max_side):>16s}")
    print(f"  {'bytes sent':22s} {plain['bytes'] / 1e6:11.0f} MB {side['bytes'] / 1e6:13.0f} MB")
    print(f"  {'largest side sent':22s} {plain['side']:11.0f} px {side['side']:13.0f} px")
    print(f"  {'wall time':22s} {plain['wall']:12.1f} s {side['wall']:14.1f} s")
    print(f"  {'apply CPU':22s} {plain['cpu']:12.1f} s {side['cpu']:14.1f} s")
    print(f"  {'peak RSS':22s} {plain['rss']:11.1f} MB {side['rss']:13.1f} MB")
    fewer, faster = plain["bytes"] / side["bytes"], plain["wall"] / side["wall"]
    rss = max(plain["rss"], side["rss"])
    ok = fewer >= 5 and faster >= 4 and rss <= 120 and plain["trainings"] == side["trainings"] == args.jobs
    print(f"  {fewer:.1f}x fewer bytes (target >= 5), {faster:.1f}x less wall time (target >= 4), "
          f"peak RSS {rss:.1f} MB (target <= 120) -> {'MET' if ok else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
