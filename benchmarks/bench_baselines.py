"""Target 7: runner vs what a user would write instead, same jobs, same sandbox, same concurrency.

    python3 benchmarks/bench_baselines.py [--jobs 100] [--train 1] [--concurrency 8] [--poll 0.2]

JOBS jobs of one small image, each training TRAIN seconds in ``runner sandbox serve``
(its own process, no server rate limit; a fresh server per contestant). Contestants:

- ``runner apply``: ``max_in_flight: CONCURRENCY``, ``poll_interval: POLL`` and a client
  limit of 50 requests/s (burst 5) that it must respect;
- ``baselines/sequential_httpx.py``: for each job, POST it, then poll it every POLL s until
  it ends;
- ``xargs -P CONCURRENCY`` running ``baselines/xargs_job.sh``: curl POST, then curl polls
  every POLL s.

Wall time and CPU seconds (user + system of the process and every child it waited for,
from wait4) of each. Target: runner's wall ≤ the faster baseline's, and CPU per job far
below both.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    KEY,
    Measured,
    env,
    print_command,
    run_measured,
    runner_cmd,
    sandbox,
    write_jobs,
    write_manifest,
)

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--train", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--poll", type=float, default=0.2)
    parser.add_argument("--skip-sequential", action="store_true", help="it takes JOBS x TRAIN s")
    args = parser.parse_args()
    print_command()
    results: dict[str, tuple[Measured, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        names = write_jobs(folder, args.jobs, 1)

        def contest(label: str, cmd: list[str], **kw: object) -> None:
            with sandbox(folder / f".sb-{len(results)}", train_seconds=args.train) as server:
                cpu0 = server.cpu_seconds()
                run = run_measured([c.replace("{URL}", server.url) for c in cmd], cwd=folder,
                                   environ=env(URL=server.url, KEY=KEY, DATA=str(folder / "data"),
                                               POLL=str(args.poll)), **kw)  # type: ignore[arg-type]
                results[label] = (run, server.cpu_seconds() - cpu0)
            print(f"  {label:28s} {run.wall:7.2f} s wall  {run.cpu:6.2f} s CPU  "
                  f"{run.cpu / args.jobs * 1000:6.1f} ms CPU/job   (sandbox: {results[label][1]:.2f} s CPU)",
                  flush=True)

        print(f"{args.jobs} jobs, {args.train:g} s training each, concurrency {args.concurrency}, "
              f"poll every {args.poll:g} s:")
        api = {"endpoint": "{URL}", "requests_per_second": 50, "burst": 5,
               "max_in_flight": args.concurrency, "max_uploads": args.concurrency,
               "poll_interval": f"{int(args.poll * 1000)}ms"}
        manifest = write_manifest(folder, "base.yaml", api, [
            {"name": f"job-{i:05d}", "lora_prefix": f"B{i}", "images": n[0]}
            for i, n in enumerate(names)
        ])
        template = manifest.read_text()

        # runner reads the endpoint from the manifest: write it once the server is up.
        def runner_with_url() -> None:
            with sandbox(folder / ".sb-runner", train_seconds=args.train) as server:
                manifest.write_text(template.replace("{URL}", server.url))
                cpu0 = server.cpu_seconds()
                run = run_measured(runner_cmd("-q", "apply", "base.yaml"), cwd=folder)
                results["runner apply"] = (run, server.cpu_seconds() - cpu0)
                # The same command again is a no-op: its cost is runner's fixed overhead
                # (interpreter, imports, validation, lockfile), paid once per run.
                noop = run_measured(runner_cmd("-q", "apply", "base.yaml"), cwd=folder)
            print(f"  {'runner apply':28s} {run.wall:7.2f} s wall  {run.cpu:6.2f} s CPU  "
                  f"{run.cpu / args.jobs * 1000:6.1f} ms CPU/job   (sandbox: {results['runner apply'][1]:.2f} s CPU)",
                  flush=True)
            print(f"  {'  of which fixed (no-op apply)':28s} {noop.wall:7.2f} s wall  {noop.cpu:6.2f} s CPU; "
                  f"per job beyond it: {(run.cpu - noop.cpu) / args.jobs * 1000:.1f} ms CPU", flush=True)

        runner_with_url()
        contest(f"xargs -P {args.concurrency} + curl",
                ["sh", "-c", f"seq 0 {args.jobs - 1} | xargs -P {args.concurrency} -n 1 sh "
                 f"{HERE / 'baselines' / 'xargs_job.sh'}"])
        if not args.skip_sequential:
            contest("sequential httpx script",
                    [sys.executable, str(HERE / "baselines" / "sequential_httpx.py"), "{URL}", KEY,
                     str(folder / "data"), str(args.jobs), str(args.poll)])
    run_r = results["runner apply"][0]
    others = {k: v[0] for k, v in results.items() if k != "runner apply"}
    fastest = min(others, key=lambda k: others[k].wall)
    wall_ok = run_r.wall <= others[fastest].wall
    cpu_ratio = min(o.cpu for o in others.values()) / run_r.cpu
    print(f"  runner vs fastest baseline ({fastest}): wall {run_r.wall / others[fastest].wall:.2f}x "
          f"({'MET' if wall_ok else 'NOT MET'}: target <= 1.0); baselines use "
          f"{cpu_ratio:.1f}x or more of runner's CPU")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
