"""Fault matrix: every sandbox fault kind, alone and mixed, at several rates; and every
answer dialect under no faults, gateway timeouts and mixed faults, with and without an API
that honours Idempotency-Key.

For each cell: the jobs end as the dialect allows (succeeded; ``opaque``: uncertain with the
answer kept), credits charged equal jobs and no training is duplicated (nothing paid twice),
and the requests sent and wall time are recorded. CI runs the 0.3 row; ``--long`` runs
0.1/0.3/0.5 with more jobs (dialect cells at 0.5).
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest
from figures import record
from support.apply import SECRET, ledger, sandbox
from support.manifests import write_manifest

from runner.api.client import ApiClient
from runner.api.ratelimit import TokenBucket
from runner.engine.pipeline import prepare
from runner.engine.scheduler import Applier, ApplyOptions
from runner.sandbox.config import FAULT_KINDS
from runner.state.lockfile import read_lockfile
from runner.state.session import LockSession

KINDS = [*FAULT_KINDS, "mixed"]


def apply_in_process(manifest: Path, url: str, api_name: str = "sandbox") -> tuple[int, int, float]:
    """Run one apply in this process; (exit code, requests sent, wall seconds)."""
    started = time.monotonic()
    first = prepare(str(manifest), None, [])
    with LockSession(first.lockfile) as session:
        prepared = prepare(str(manifest), None, [], state=session.state)
        api = prepared.manifest.api

        async def main() -> tuple[int, int]:
            async with ApiClient(url, SECRET, TokenBucket(api.requests_per_second, api.burst)) as client:
                applier = Applier(prepared.plan, session, client, api, ApplyOptions(), api=api_name)
                result = await applier.run()
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
        manifest = write_manifest(tmp_path, n_jobs=jobs, url=url, api={"job_timeout": "10m"}, filename="m.yaml")
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


DIALECTS = ["envelope", "args", "bare", "opaque"]
DIALECT_FAULTS = ["none", "gateway_timeout", "mixed"]
# (fault, API echoes Idempotency-Key): with no faults the echo makes no difference.
DIALECT_CELLS = [("none", True), ("gateway_timeout", True), ("gateway_timeout", False),
                 ("mixed", True), ("mixed", False)]


@pytest.mark.parametrize(("fault", "idempotency"), DIALECT_CELLS,
                         ids=[f"{f}-{'keys' if i else 'nokeys'}" for f, i in DIALECT_CELLS])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_dialect_cell(tmp_path: Path, dialect: str, fault: str, idempotency: bool, long_run: bool) -> None:
    """Every dialect under faults: never a duplicate training, never a guess. Readable
    dialects succeed where keys are echoed; without keys a POST whose answer was lost or
    was a 5xx is uncertain (blocked), never retried; opaque is always uncertain, answer kept."""
    jobs = 10 if long_run else 4
    rate = 0.0 if fault == "none" else (0.5 if long_run else 0.3)
    kinds = FAULT_KINDS if fault == "mixed" else ("gateway_timeout",)
    seed = DIALECTS.index(dialect) * 10 + DIALECT_FAULTS.index(fault) + (0 if idempotency else 5)
    with sandbox(tmp_path / "sb", fault_rate=rate, fault_kinds=kinds, fault_delay=0.3, seed=seed,
                 dialect=dialect, idempotency=idempotency) as url:
        manifest = write_manifest(tmp_path, n_jobs=jobs, url=url, api={"job_timeout": "10m"}, filename="m.yaml")
        code, requests, wall = apply_in_process(manifest, url)
        book = ledger(url)
    entries = read_lockfile(tmp_path / "m.lock.yaml").entries
    by_status = {s: sum(e.status == s for e in entries.values()) for s in ("succeeded", "uncertain", "failed")}
    record("dialect", dialect=dialect, fault=fault, rate=rate, idempotency=idempotency, jobs=jobs,
           succeeded=by_status["succeeded"], uncertain=by_status["uncertain"],
           charged=book["credits_charged"], duplicates=book["duplicate_trainings"],
           replays=book["replays"], requests=requests, wall_s=round(wall, 2))
    assert book["duplicate_trainings"] == 0
    assert by_status["failed"] == 0, {n: e.error for n, e in entries.items()}
    if dialect == "opaque":
        assert by_status["uncertain"] == jobs and code == 3
        assert all(e.answer and e.asset_id for e in entries.values() if e.error and e.error["status"] == 200)
    elif idempotency:
        assert code == 0 and by_status["succeeded"] == jobs
    else:
        assert by_status["succeeded"] + by_status["uncertain"] == jobs
        assert code == (3 if by_status["uncertain"] else 0)
    # Every POST that reached the service started exactly one training, charged once; a
    # job whose POST never reached it (drop, plain 5xx) was not charged at all.
    assert book["credits_charged"] <= jobs
    if idempotency or fault != "mixed":
        assert book["credits_charged"] == jobs
