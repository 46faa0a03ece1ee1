"""Target 8: sandbox throughput, POST /finetune per second with 3 small images, over loopback.

    python3 benchmarks/bench_sandbox.py [--posts 600] [--concurrency 8] [--in-process]

Starts ``runner sandbox serve --port 0`` in a subprocess (so client and server do not share
a GIL; ``--in-process`` uses ``start_server`` in a thread instead), then sends POSTS
multipart POSTs, CONCURRENCY at a time, each with three distinct ~1 KB PNGs made with
Pillow and its own ``Idempotency-Key``. Every answer must be a 200. Prints POSTs/second,
latency percentiles, the command line that produced them, and the headroom: this capacity
over the fastest request rate benchmarks 1-7 ask of the server (``DRIVEN_RPS``), so they
measure the client, not the server.
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import sandbox  # noqa: E402

KEY = "bench-key"
# The highest request rate the other benchmarks drive: bench_baselines.py lets runner go at
# 50 requests/s (bench_rate.py: 20/s; the others stay well below).
DRIVEN_RPS = 50.0


def png(seed: int) -> bytes:
    buf = io.BytesIO()
    image = Image.new("RGB", (32, 32), (seed * 37 % 256, seed * 91 % 256, 128))
    image.putpixel((seed % 32, 0), (255, 255, 255))
    image.save(buf, format="PNG")
    return buf.getvalue()


@contextmanager
def subprocess_server(state_dir: Path) -> Iterator[str]:
    with sandbox(state_dir) as running:
        yield running.url


@contextmanager
def thread_server(state_dir: Path) -> Iterator[str]:
    from runner.sandbox.config import SandboxConfig
    from runner.sandbox.serve import start_server

    with start_server(SandboxConfig(state_dir=state_dir, train_seconds=0)) as running:
        yield running.url


async def drive(url: str, posts: int, concurrency: int) -> tuple[float, list[float]]:
    images = [png(i) for i in range(3)]
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def one(i: int) -> None:
            files = [
                ("image_files", (f"{i}_{n}.png", data, "image/png"))
                for n, data in enumerate(images)
            ]
            headers = {"X-Api-Key": KEY, "Idempotency-Key": f"bench-{i}"}
            started = time.perf_counter()
            response = await client.post(
                "/finetune", headers=headers, files=files, data={"lora_prefix": "BENCH"}
            )
            latencies.append(time.perf_counter() - started)
            if response.status_code != 200:
                raise SystemExit(f"POST {i} answered {response.status_code}: {response.text[:200]}")

        async def worker(queue: list[int]) -> None:
            while queue:
                await one(queue.pop())

        for i in range(min(20, posts)):  # warm-up: connections, imports, SQLite pages
            await one(-1 - i)
        latencies.clear()
        queue = list(range(posts))
        started = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for _ in range(concurrency):
                tg.start_soon(worker, queue)
        elapsed = time.perf_counter() - started
    return elapsed, latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--posts", type=int, default=600)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--in-process", action="store_true", help="server in a thread of this process"
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        serve = thread_server if args.in_process else subprocess_server
        with serve(Path(tmp) / "state") as url:
            elapsed, latencies = anyio.run(drive, url, args.posts, args.concurrency)
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    print(f"command: python3 {shlex.join(sys.argv)}")
    print(
        f"server: {'in-process thread' if args.in_process else 'runner sandbox serve subprocess'};"
        f" python {sys.version.split()[0]}; {os.cpu_count()} CPUs"
    )
    print(f"{args.posts} POSTs x 3 images, {args.concurrency} at a time, in {elapsed:.2f} s")
    print(f"throughput: {args.posts / elapsed:.1f} POSTs/s")
    headroom = args.posts / elapsed / DRIVEN_RPS
    print(f"headroom: {headroom:.1f}x the fastest rate the other benchmarks drive ({DRIVEN_RPS:g} "
          f"requests/s, and POSTs are its most expensive requests) -> "
          f"{'server is not the bottleneck' if headroom >= 2 else 'SERVER MAY LIMIT'}")
    print(
        f"latency ms: p50 {pct(0.5):.1f}  p95 {pct(0.95):.1f}  p99 {pct(0.99):.1f}"
        f"  mean {statistics.fmean(latencies) * 1000:.1f}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
