"""Target 1: apply's request rate against the client limit, measured in one run.

    python3 benchmarks/bench_rate.py [--jobs 200] [--rate 20]

JOBS jobs of one small image against ``runner sandbox serve`` in its own process (no
training time, no server rate limit), client ``requests_per_second: RATE, burst: 1``. The
scheduler runs in this process (runner.engine.scheduler.Applier, as ``runner apply`` runs it) with a
transport that records the moment every request leaves. Prints requests/s ÷ RATE over
the run (target ≥ 0.95) and the busiest 5-second window ÷ (RATE × 5) (must be ≤ 1.0).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from bisect import bisect_left
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import anyio
import httpx
from _common import KEY, print_command, sandbox, write_jobs, write_manifest

from runner import logsetup
from runner.api.client import ApiClient
from runner.api.ratelimit import TokenBucket
from runner.engine.pipeline import prepare
from runner.engine.scheduler import Applier, ApplyOptions
from runner.state.session import LockSession


class Recording(httpx.AsyncBaseTransport):
    """Notes when each request is handed to the network (after the token bucket)."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.times: list[float] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.times.append(time.monotonic())
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def run(jobs: int, rate: float) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp, sandbox(Path(tmp) / "sb") as server:
        folder = Path(tmp)
        names = write_jobs(folder, jobs, 1)
        api = {"endpoint": server.url, "requests_per_second": rate, "burst": 1,
               "max_in_flight": 64, "max_uploads": 16, "poll_interval": "50ms"}
        manifest = write_manifest(folder, "rate.yaml", api, [
            {"name": f"job-{i:05d}", "lora_prefix": f"R{i}", "images": n[0]}
            for i, n in enumerate(names)
        ])
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
        cpu0 = server.cpu_seconds()
        anyio.run(main)
        wall = time.monotonic() - started
        server_cpu = server.cpu_seconds() - cpu0
    times = sorted(transport.times)
    span = times[-1] - times[0]
    achieved = (len(times) - 1) / span if span > 0 else float("inf")
    window = 5.0
    busiest = max(bisect_left(times, t + window) - i for i, t in enumerate(times))
    return {"requests": len(times), "wall": wall, "rps": achieved, "ratio": achieved / rate,
            "busiest": busiest / (rate * window), "server_cpu_share": server_cpu / wall}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rate", type=float, default=20)
    args = parser.parse_args()
    print_command()
    logsetup.configure("json", -1, io.StringIO())  # the job events are not the point here
    r = run(args.jobs, args.rate)
    ok = r["ratio"] >= 0.95 and r["busiest"] <= 1.0
    print(f"rate: {r['requests']:.0f} requests in {r['wall']:.1f} s = {r['rps']:.2f} req/s "
          f"vs limit {args.rate:g}")
    print(f"  ratio achieved/limit {r['ratio']:.3f} (target >= 0.95); busiest 5 s window "
          f"{r['busiest']:.3f} (must be <= 1.0); sandbox busy {r['server_cpu_share']:.0%} of one "
          f"core -> {'MET' if ok else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
