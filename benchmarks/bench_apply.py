"""Apply throughput against the client rate limit, and no-op plan time, measured in one run.

    python benchmarks/bench_apply.py [--jobs 200] [--rate 20] [--plan-jobs 2000] [--images 10]

1. Rate: JOBS jobs of one small image against the sandbox (instant training, no server rate
   limit), client ``requests_per_second: RATE, burst: 1``. Every request's send time is
   recorded by a wrapping transport; prints requests/s ÷ RATE over the run and the busiest
   5-second window (must stay ≤ 1.0).
2. No-op plan: PLAN_JOBS jobs × IMAGES images applied once, then ``runner plan`` timed as a
   subprocess on the warm digest cache, with the bytes it read (from /proc/self/io).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from bisect import bisect_left
from pathlib import Path

import anyio
import httpx
import yaml
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runner.apply import Applier, ApplyOptions
from runner.client import ApiClient
from runner.lockfile import LockSession
from runner.ratelimit import TokenBucket
from runner.sandbox.config import SandboxConfig
from runner.sandbox.serve import start_server
from runner.workspace import prepare

KEY = "bench-key"
REPO = Path(__file__).resolve().parents[1]


class Recording(httpx.AsyncBaseTransport):
    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.times: list[float] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.times.append(time.monotonic())
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def make_manifest(folder: Path, url: str, jobs: int, images: int, api: dict) -> Path:
    data = folder / "data"
    data.mkdir(parents=True, exist_ok=True)
    entries = []
    for i in range(jobs):
        names = []
        for k in range(images):
            path = data / f"j{i}_{k}.png"
            Image.new("RGB", (8, 8), (i % 256, k * 20 % 256, (i // 256) % 256)).save(path)
            names.append(f"data/j{i}_{k}.png")
        entries.append({"name": f"job-{i:05d}", "lora_prefix": f"B{i}", "images": names})
    doc = {"version": 1, "api": {"endpoint": url, **api}, "jobs": entries}
    path = folder / "bench.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def rate_benchmark(jobs: int, rate: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, start_server(
        SandboxConfig(state_dir=Path(tmp) / "sb", train_seconds=0)
    ) as server:
        manifest = make_manifest(
            Path(tmp), server.url, jobs, 1,
            {"requests_per_second": rate, "burst": 1, "max_in_flight": 64, "max_uploads": 16,
             "poll_interval": "50ms"},
        )
        prepared = prepare(str(manifest), None, [])
        transport = Recording()

        async def main() -> None:
            bucket = TokenBucket(rate, 1)
            with LockSession(prepared.lockfile) as session:
                async with ApiClient(server.url, KEY, bucket, transport=transport) as client:
                    result = await Applier(prepared.plan, session, client, prepared.manifest.api,
                                           ApplyOptions()).run()
            assert result.exit_code == 0, result.outcomes

        started = time.monotonic()
        anyio.run(main)
        wall = time.monotonic() - started
    times = sorted(transport.times)
    span = times[-1] - times[0]
    achieved = (len(times) - 1) / span if span > 0 else float("inf")
    window = 5.0
    busiest = max(bisect_left(times, t + window) - i for i, t in enumerate(times))
    return {
        "requests": len(times),
        "wall_s": wall,
        "achieved_rps": achieved,
        "ratio": achieved / rate,
        "busiest_5s_ratio": busiest / (rate * window),
    }


def noop_plan_benchmark(jobs: int, images: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, start_server(
        SandboxConfig(state_dir=Path(tmp) / "sb", train_seconds=0)
    ) as server:
        folder = Path(tmp)
        manifest = make_manifest(
            folder, server.url, jobs, images,
            {"requests_per_second": 1000, "burst": 100, "max_in_flight": 64, "max_uploads": 16,
             "poll_interval": "50ms"},
        )
        env = {**os.environ, "VIMMERSE_API_KEY": KEY, "CI": "true",
               "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
        t0 = time.monotonic()
        subprocess.run([sys.executable, "-m", "runner", "-q", "apply", manifest.name], cwd=folder,
                       env=env, check=True, capture_output=True)
        apply_s = time.monotonic() - t0
        code = (
            "import resource,sys,time;from runner.cli import main;t=time.monotonic();"
            "rc=main(['plan',sys.argv[1],'--format','json','--detailed-exitcode']);"
            "io=dict(l.split(': ') for l in open('/proc/self/io').read().split('\\n') if l);"
            "print(rc,time.monotonic()-t,io['rchar'],io['read_bytes'],file=sys.stderr)"
        )
        best = None
        for _ in range(3):
            t0 = time.monotonic()
            proc = subprocess.run([sys.executable, "-c", code, manifest.name], cwd=folder, env=env,
                                  capture_output=True, text=True)
            wall = time.monotonic() - t0
            rc, inner, rchar, _read_bytes = proc.stderr.strip().splitlines()[-1].split()
            assert rc == "0", proc.stderr
            plan = json.loads(proc.stdout)
            assert plan["summary"]["noop"] == jobs
            if best is None or wall < best["wall_s"]:
                best = {"wall_s": wall, "in_process_s": float(inner), "rchar": int(rchar)}
        assert best is not None
        image_bytes = sum(p.stat().st_size for p in (folder / "data").iterdir())
        lock_bytes = (folder / "bench.lock.yaml").stat().st_size
        cache_bytes = (folder / ".runner" / "digests.json").stat().st_size
        manifest_bytes = manifest.stat().st_size
        best.update(apply_s=apply_s, image_bytes=image_bytes,
                    metadata_bytes=lock_bytes + cache_bytes + manifest_bytes)
        return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--plan-jobs", type=int, default=2000)
    parser.add_argument("--images", type=int, default=10)
    args = parser.parse_args()
    print("command:", " ".join([sys.executable, *sys.argv]))
    r = rate_benchmark(args.jobs, args.rate)
    print(f"rate: {r['requests']} requests in {r['wall_s']:.1f}s, {r['achieved_rps']:.2f} req/s "
          f"vs limit {args.rate:g} -> ratio {r['ratio']:.3f}; busiest 5s window ratio "
          f"{r['busiest_5s_ratio']:.3f}")
    p = noop_plan_benchmark(args.plan_jobs, args.images)
    print(f"no-op plan: {args.plan_jobs} jobs x {args.images} images: {p['wall_s']:.2f}s wall "
          f"({p['in_process_s']:.2f}s inside main), read {p['rchar']/1e6:.1f} MB total vs "
          f"{p['image_bytes']/1e6:.1f} MB of images and {p['metadata_bytes']/1e6:.1f} MB of "
          f"manifest+lockfile+cache (first apply took {p['apply_s']:.1f}s)")


if __name__ == "__main__":
    main()
