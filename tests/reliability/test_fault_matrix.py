"""Fault matrix: every sandbox fault kind, alone and mixed, at several rates.

For each cell: every job succeeds, credits charged equal jobs (no double charge), and the
requests sent and wall time are recorded. CI runs the 0.3 row; ``--long`` runs 0.1/0.3/0.5
with more jobs.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from apply_support import SECRET, ledger, sandbox, write_manifest
from figures import record

from runner.apply import Applier, ApplyOptions
from runner.client import ApiClient
from runner.lockfile import LockSession, read_lockfile
from runner.ratelimit import TokenBucket
from runner.sandbox.config import FAULT_KINDS
from runner.workspace import prepare

KINDS = [*FAULT_KINDS, "mixed"]


def apply_in_process(manifest: Path, url: str) -> tuple[int, int, float]:
    """Run one apply in this process; (exit code, requests sent, wall seconds)."""
    started = time.monotonic()
    first = prepare(str(manifest), None, [])
    with LockSession(first.lockfile) as session:
        prepared = prepare(str(manifest), None, [], state=session.state)
        api = prepared.manifest.api

        async def main() -> tuple[int, int]:
            async with ApiClient(url, SECRET, TokenBucket(api.requests_per_second, api.burst)) as client:
                result = await Applier(prepared.plan, session, client, api, ApplyOptions()).run()
                return result.exit_code, client.requests_sent

        code, requests = anyio.run(main)
    return code, requests, time.monotonic() - started


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """CI runs the 0.3 row; --long every rate (generated, so CI shows no skips)."""
    if "rate" in metafunc.fixturenames:
        rates = [0.1, 0.3, 0.5] if metafunc.config.getoption("--long") else [0.3]
        metafunc.parametrize("rate", rates)


@pytest.mark.parametrize("kind", KINDS)
def test_fault_cell(tmp_path: Path, rate: float, kind: str, long_run: bool) -> None:
    """Under this fault kind and rate every job succeeds and no credit is charged twice."""
    jobs = 10 if long_run else 4
    kinds = FAULT_KINDS if kind == "mixed" else (kind,)
    with sandbox(tmp_path / "sb", fault_rate=rate, fault_kinds=kinds, fault_delay=0.3,
                 seed=int(rate * 100) + KINDS.index(kind)) as url:
        # A generous job_timeout: this test is about surviving faults, not about deadlines.
        manifest = write_manifest(tmp_path, url, jobs, api={"job_timeout": "10m"})
        code, requests, wall = apply_in_process(manifest, url)
        book = ledger(url)
    entries = read_lockfile(tmp_path / "m.lock.yaml").entries
    succeeded = sum(e.status == "succeeded" for e in entries.values())
    record("fault", rate=rate, kind=kind, jobs=jobs, succeeded=succeeded,
           charged=book["credits_charged"], replays=book["replays"], requests=requests,
           wall_s=round(wall, 2))
    assert code == 0, {n: (e.status, e.error) for n, e in entries.items() if e.status != "succeeded"}
    assert succeeded == jobs
    assert book["credits_charged"] == jobs
    assert book["duplicate_trainings"] == 0
