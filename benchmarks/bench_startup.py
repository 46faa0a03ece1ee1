"""Target 6: start-up of ``runner --version`` and ``runner validate`` vs importing httpx.

    python3 benchmarks/bench_startup.py [--repeat 21]

Each command runs REPEAT times as a fresh process (``python3 -m runner``, as the console
script does), alternating with the reference ``python3 -c 'import httpx'``, so machine
noise hits all of them alike; medians are compared. ``validate`` checks a one-job
manifest of one image (its image is decoded, so Pillow is loaded, as a user would see).
Also lists which heavy packages each command imported (target: sandbox, FastAPI, rich and
Pillow only when needed). Target: each ≤ 1.5 x the reference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import env, png, print_command

HEAVY = ("fastapi", "uvicorn", "rich", "PIL", "structlog", "httpx", "anyio", "jsonschema",
         "runner.sandbox")


def timed(cmd: list[str], cwd: Path) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def loaded(args: list[str], cwd: Path) -> list[str]:
    code = ("import sys, runpy; sys.argv = ['runner', *sys.argv[1:]]\n"
            "try:\n    runpy.run_module('runner', run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env(),
                         capture_output=True, text=True)
    return out.stderr.strip().splitlines()[-1].split() if out.stderr.strip() else []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=21)
    args = parser.parse_args()
    print_command()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "one.png").write_bytes(png(1))
        (folder / "one.yaml").write_text(
            "version: 1\njobs:\n  - name: one\n    lora_prefix: ONE\n    images: one.png\n")
        commands = {
            "python -c 'import httpx'": [sys.executable, "-c", "import httpx"],
            "runner --version": [sys.executable, "-m", "runner", "--version"],
            "runner validate one.yaml": [sys.executable, "-m", "runner", "validate", "one.yaml"],
        }
        times: dict[str, list[float]] = {k: [] for k in commands}
        for _ in range(args.repeat):
            for label, cmd in commands.items():
                times[label].append(timed(cmd, folder))
        base = statistics.median(times["python -c 'import httpx'"])
        ok = True
        for label, values in times.items():
            med = statistics.median(values)
            line = f"  {label:28s} median {med * 1000:6.1f} ms  best {min(values) * 1000:6.1f} ms"
            if label.startswith("runner"):
                ratio = med / base
                ok &= ratio <= 1.5
                heavy = loaded(commands[label][3:], folder)
                line += f"  ratio {ratio:.2f}  loads: {', '.join(heavy) or 'none of ' + '/'.join(HEAVY[:4])}"
            print(line)
        print(f"  target: each runner command <= 1.5 x the reference -> {'MET' if ok else 'NOT MET'}")
        print(f"  ({os.cpu_count()} CPUs; medians of {args.repeat} runs, interleaved)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
