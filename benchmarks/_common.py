"""Helpers shared by the benchmarks: fixtures, a sandbox in its own process, timing, RSS.

Nothing here is part of runner. Every benchmark imports this checkout (not an installed
copy): subprocesses get ``PYTHONPATH`` pointing at the repository root.
"""

from __future__ import annotations

import os
import shlex
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
KEY = "bench-key"


def env(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: this checkout first on the path, logs as JSON."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "VIMMERSE_API_KEY": KEY, "CI": "true", **extra}


def print_command() -> None:
    """The first line of every benchmark: the command that produced its figures."""
    rel = os.path.relpath(sys.argv[0], os.getcwd())
    print(f"command: python3 {shlex.join([rel, *sys.argv[1:]])}  "
          f"(python {sys.version.split()[0]}, {os.cpu_count()} CPUs)", flush=True)


# -- images --------------------------------------------------------------------------------


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(seed: int, side: int = 8, *, padding: int = 0) -> bytes:
    """A small, valid, distinct PNG without Pillow (fast enough for 100,000 files).

    ``padding`` adds that many bytes of incompressible pixel data (a bigger image), for
    benchmarks that need a given size on disk.
    """
    if padding:
        side = max(side, int((padding / 3) ** 0.5) + 1)
        rnd = _random_bytes(seed, side * 3)
        rows = b"".join(b"\0" + rnd[(r * 7) % len(rnd):] + rnd[: (r * 7) % len(rnd)]
                        for r in range(side))
        raw = zlib.compress(rows, 0)
    else:
        colour = bytes(((seed * 37) % 256, (seed >> 8) % 256, (seed >> 16) % 256))
        raw = zlib.compress(b"".join(b"\0" + colour * side for _ in range(side)))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    text = _chunk(b"tEXt", b"seed\0" + str(seed).encode())
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + text + _chunk(b"IDAT", raw)
            + _chunk(b"IEND", b""))


def _random_bytes(seed: int, n: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


def write_jobs(folder: Path, jobs: int, images: int, *, size: int = 0, seed: int = 0) -> list[list[str]]:
    """Write ``jobs`` folders of ``images`` PNGs each; returns each job's relative paths."""
    out = []
    for j in range(jobs):
        job_dir = folder / "data" / f"j{j:05d}"
        job_dir.mkdir(parents=True, exist_ok=True)
        names = []
        for k in range(images):
            rel = f"data/j{j:05d}/{k:03d}.png"
            (folder / rel).write_bytes(png(seed + j * images + k, padding=size))
            names.append(rel)
        out.append(names)
    return out


def write_manifest(folder: Path, name: str, api: dict[str, Any], jobs: Sequence[dict[str, Any]]) -> Path:
    """A manifest written as plain text (fast and stable for 10,000 jobs)."""
    lines = ["version: 1", "api:"]
    lines += [f"  {k}: {v}" for k, v in api.items()]
    lines.append("jobs:")
    for job in jobs:
        first = True
        for key, value in job.items():
            lead = "  - " if first else "    "
            first = False
            if isinstance(value, list):
                lines.append(f"{lead}{key}:")
                lines += [f"      - {v}" for v in value]
            else:
                lines.append(f"{lead}{key}: {value}")
    path = folder / name
    path.write_text("\n".join(lines) + "\n")
    return path


def build_plan_fixture(folder: Path, jobs: int, images: int) -> Path:
    """``plan.yaml``: JOBS jobs x IMAGES PNGs; jobs name a folder, a list of files or a glob."""
    names = write_jobs(folder, jobs, images)
    entries = []
    for j, files in enumerate(names):
        kind = j % 4
        spec: object = f"data/j{j:05d}"
        if kind == 2:
            spec = files
        elif kind == 3:
            spec = f"data/j{j:05d}/*.png"
        entries.append({"name": f"job-{j:05d}", "lora_prefix": f"P{j}", "images": spec})
    return write_manifest(folder, "plan.yaml", {"endpoint": "sandbox"}, entries)


# -- processes -----------------------------------------------------------------------------


@dataclass
class Sandbox:
    url: str
    proc: subprocess.Popen[str]

    def cpu_seconds(self) -> float:
        """User + system CPU the server process has used so far (from /proc)."""
        return proc_cpu(self.proc.pid)


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def sandbox(state_dir: Path, *extra: str, train_seconds: float = 0) -> Iterator[Sandbox]:
    """``runner sandbox serve`` in its own process (its CPU and memory are not the client's)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "sandbox", "serve", "--port", "0",
         "--state-dir", str(state_dir), "--train-seconds", str(train_seconds), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env(), cwd=REPO,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if not line.startswith("sandbox listening on "):
            raise SystemExit(f"sandbox did not start: {line!r}")
        yield Sandbox(line.rsplit(" ", 1)[-1], proc)
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@dataclass
class Measured:
    returncode: int
    wall: float
    cpu: float  # user + system of the child (and its children)
    maxrss_mb: float  # the child's own peak (VmHWM), see _communicate_wait4
    stdout: str
    stderr: str


def run_measured(cmd: Sequence[str], *, cwd: Path | None = None, environ: dict[str, str] | None = None,
                 check: bool = True, shell: bool = False) -> Measured:
    """Run a command; wall time, CPU seconds and peak RSS of it and its children (wait4)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd if not shell else cmd[0], cwd=cwd, env=environ or env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, shell=shell)
    out, err = _communicate_wait4(proc)
    wall = time.perf_counter() - started
    rc, usage = out[0], out[1]
    if check and rc != 0:
        raise SystemExit(f"{shlex.join(cmd)} exited {rc}:\n{err[0][-3000:]}\n{err[1][-3000:]}")
    peak = usage.hwm_kb / 1024 if usage.hwm_kb else usage.ru_maxrss / 1024
    return Measured(rc, wall, usage.ru_utime + usage.ru_stime, peak, err[0], err[1])


def _communicate_wait4(proc: subprocess.Popen[str]) -> tuple[tuple[int, Any], tuple[str, str]]:
    """Wait for the child, with its rusage and its own peak RSS.

    The peak comes from sampling /proc/PID/status VmHWM (a high-water mark, so the last
    sample is the peak) every 2 ms: wait4's ru_maxrss is no use here, because a child
    started with vfork + exec counts the *parent's* resident memory before the exec, so a
    benchmark that just wrote 1 GB of images would see its own size in every child.
    """
    import threading

    chunks: dict[str, str] = {}
    hwm = [0]
    done = threading.Event()

    def read(name: str, stream: Any) -> None:
        chunks[name] = stream.read()

    def sample() -> None:
        status = Path(f"/proc/{proc.pid}/status")
        while not done.is_set():
            try:
                for line in status.read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        hwm[0] = max(hwm[0], int(line.split()[1]))
            except (OSError, ValueError):
                pass
            done.wait(0.002)

    threads = [threading.Thread(target=read, args=(n, s)) for n, s in
               (("out", proc.stdout), ("err", proc.stderr))]
    threads.append(threading.Thread(target=sample))
    for t in threads:
        t.start()
    _pid, status, usage = os.wait4(proc.pid, 0)
    done.set()
    for t in threads:
        t.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (proc.returncode, _Usage(usage, hwm[0])), (chunks["out"], chunks["err"])


class _Usage:
    def __init__(self, usage: Any, hwm_kb: int) -> None:
        self.ru_utime, self.ru_stime, self.ru_maxrss = usage.ru_utime, usage.ru_stime, usage.ru_maxrss
        self.hwm_kb = hwm_kb


def runner_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "runner", *args]
