"""Re-record the sandbox traces in this folder: ``python tests/data/traces/record.py [DIALECT...]``.

For each dialect (default: all of ``runner.sandbox.config.DIALECTS``) this serves the
sandbox on loopback, runs ``runner apply --trace-http`` of a 2-job manifest (one image each)
as a subprocess, and writes the trace to ``<dialect>.jsonl`` here, normalised so a fixture
does not depend on the machine it was recorded on: the sandbox's host:port becomes
``127.0.0.1:8000`` (URLs, bodies, the Host header), and the volatile ``date`` header is
dropped. Run it from the repository's root with the project's venv
(``.venv/bin/python tests/data/traces/record.py``); tests/test_wire_replay.py replays every
``*.jsonl`` here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
sys.path.insert(0, str(ROOT))

from runner.sandbox.config import DIALECTS, SandboxConfig  # noqa: E402
from runner.sandbox.serve import start_server  # noqa: E402

STABLE_URL = "http://127.0.0.1:8000"
KEY = "sk-record-traces-0000"
VOLATILE_HEADERS = ("date",)


def manifest(folder: Path, url: str) -> Path:
    from PIL import Image

    jobs = []
    for i in range(2):
        image = folder / "data" / f"job{i}" / "img0.png"
        image.parent.mkdir(parents=True)
        Image.new("RGB", (8, 8), (60 * i, 120, 200)).save(image)
        jobs.append({"name": f"job-{i}", "lora_prefix": f"TR{i}", "images": f"data/job{i}"})
    doc = {"version": 1,
           "api": {"endpoint": url, "requests_per_second": 100, "burst": 20, "poll_interval": "150ms",
                   "job_timeout": "30s"},
           "jobs": jobs}
    path = folder / "m.yaml"
    path.write_text(json.dumps(doc), encoding="utf-8")  # JSON is YAML
    return path


def normalise(value: Any, url: str) -> Any:
    """The server's host:port (in URLs, bodies and the Host header) made stable."""
    if isinstance(value, str):
        return value.replace(url.split("://", 1)[1], STABLE_URL.split("://", 1)[1])
    if isinstance(value, dict):
        return {k: normalise(v, url) for k, v in value.items()
                if not (k in VOLATILE_HEADERS and isinstance(v, str))}
    if isinstance(value, list):
        return [normalise(v, url) for v in value]
    return value


def record(dialect: str) -> Path:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        config = SandboxConfig(state_dir=folder / "sb", train_seconds=0.4, dialect=dialect)
        with start_server(config) as server:
            manifest(folder, server.url)
            trace = folder / "trace.jsonl"
            env = {**os.environ, "VIMMERSE_API_KEY": KEY, "CI": "true",
                   "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
            env.pop("RUNNER_TRACE_HTTP", None)
            result = subprocess.run(
                [sys.executable, "-m", "runner", "apply", "m.yaml", "--trace-http", str(trace)],
                cwd=folder, env=env, capture_output=True, text=True, timeout=120, check=False,
            )
            print(f"{dialect}: apply exit {result.returncode}",
                  file=sys.stderr)
            lines = [normalise(json.loads(line), server.url) for line in trace.read_text().splitlines()]
    out = HERE / f"{dialect}.jsonl"
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    assert KEY not in text, "the key reached a trace"
    out.write_text(text, encoding="utf-8")
    print(f"{out.relative_to(ROOT)}: {len(lines)} exchanges, {len(text.encode())} bytes", file=sys.stderr)
    return out


def main(argv: list[str]) -> int:
    for dialect in argv or list(DIALECTS):
        if dialect not in DIALECTS:
            print(f"unknown dialect {dialect!r}; one of {', '.join(DIALECTS)}", file=sys.stderr)
            return 1
        record(dialect)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
