"""Crashes and signals: kill -9, SIGINT and SIGTERM at seeded random moments.

After every kill the lockfile alone (without the journal) parses and validates, and with the
journal replayed it still does; the final apply converges with zero double charges.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml
from figures import record
from support.apply import SECRET, ledger, runner, sandbox
from support.manifests import write_manifest

from runner.state.files import journal_path
from runner.state.lockfile import read_lockfile

ENV = {**os.environ, "VIMMERSE_API_KEY": SECRET, "CI": "true"}


def start_apply(folder: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "runner", "apply", "m.yaml"], cwd=folder, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def check_lockfile(folder: Path) -> int:
    """The lockfile by itself is valid, and so is it with the journal replayed; entries seen."""
    lock = folder / "m.lock.yaml"
    alone = folder / "alone"
    alone.mkdir(exist_ok=True)
    if lock.exists():
        shutil.copy(lock, alone / "m.lock.yaml")
        read_lockfile(alone / "m.lock.yaml")  # no journal beside the copy
    return len(read_lockfile(lock).entries)


def rotate_work(manifest: Path, rng: random.Random, round_no: int, count: int = 3) -> None:
    """Give some jobs a new lora_prefix, so every round has trainings to start (replaces)."""
    doc = yaml.safe_load(manifest.read_text())
    for job in rng.sample(doc["jobs"], count):
        job["lora_prefix"] = f"{job['lora_prefix'].split('R')[0]}R{round_no}"
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))


def test_kill_9_loop_converges_without_double_charges(tmp_path: Path, long_run: bool) -> None:
    """kill -9 at N seeded random moments never corrupts; no training is ever paid twice."""
    kills = 100 if long_run else 10
    jobs = 12
    rng = random.Random(20261124)
    with sandbox(tmp_path / "sb", train_seconds=1.5) as url:
        manifest = write_manifest(tmp_path, n_jobs=jobs, url=url, api={"max_in_flight": 4, "max_uploads": 2,
                                                            "requests_per_second": 40}, filename="m.yaml")
        journals_left = 0
        mid_run = 0
        for round_no in range(kills):
            proc = start_apply(tmp_path)
            time.sleep(rng.uniform(0.3, 1.6))
            mid_run += proc.poll() is None
            proc.kill()
            proc.wait()
            journals_left += journal_path(tmp_path / "m.lock.yaml").exists()
            check_lockfile(tmp_path)
            rotate_work(manifest, rng, round_no, count=4)
        final = runner("apply", "m.yaml", cwd=tmp_path, timeout=300)
        book = ledger(url)
    record("crash", kills=kills, killed_mid_run=mid_run, journals_left=journals_left, jobs=jobs,
           trainings=book["trainings"], duplicate_trainings=book["duplicate_trainings"],
           replays=book["replays"], final_exit=final.code)
    assert final.code == 0, final.stderr
    assert mid_run >= kills * 0.8, "most kills must land while the apply is working"
    assert book["duplicate_trainings"] == 0
    assert {e.status for e in read_lockfile(tmp_path / "m.lock.yaml").entries.values()} == {"succeeded"}


def test_sigint_and_sigterm_save_and_exit_130(tmp_path: Path, long_run: bool) -> None:
    """SIGINT/SIGTERM at random moments: exit 130, journal folded in, valid lockfile, then converge."""
    rounds = 10 if long_run else 2
    jobs = 8
    rng = random.Random(7)
    codes: list[int] = []
    with sandbox(tmp_path / "sb", train_seconds=1.5) as url:
        manifest = write_manifest(tmp_path, n_jobs=jobs, url=url, api={"max_in_flight": 3, "max_uploads": 2}, filename="m.yaml")
        for i in range(rounds * 2):
            rotate_work(manifest, rng, i, count=3)
            sig = signal.SIGINT if i % 2 == 0 else signal.SIGTERM
            proc = start_apply(tmp_path)
            # Wait until the apply is under way (its journal exists), then a random moment more.
            deadline = time.monotonic() + 20
            while not journal_path(tmp_path / "m.lock.yaml").exists() and time.monotonic() < deadline:
                if proc.poll() is not None:
                    break
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 1.0))
            proc.send_signal(sig)
            _out, err = proc.communicate(timeout=60)
            codes.append(proc.returncode)
            assert proc.returncode in (130, 0), err.decode()
            assert b"Traceback" not in err
            if proc.returncode == 130:
                assert not journal_path(tmp_path / "m.lock.yaml").exists(), "the lockfile was saved first"
            check_lockfile(tmp_path)
        final = runner("apply", "m.yaml", cwd=tmp_path, timeout=300)
        book = ledger(url)
    record("signals", rounds=len(codes), exit_130=codes.count(130), trainings=book["trainings"],
           duplicate_trainings=book["duplicate_trainings"], jobs=jobs)
    assert codes.count(130) >= len(codes) * 0.8, codes
    assert final.code == 0, final.stderr
    assert book["duplicate_trainings"] == 0


def test_concurrent_applies_exactly_one_proceeds(tmp_path: Path) -> None:
    """Four applies started together on one lockfile: one proceeds, three exit 1 at once."""
    with sandbox(tmp_path / "sb", train_seconds=1.0) as url:
        write_manifest(tmp_path, n_jobs=4, url=url, filename="m.yaml")
        procs = [start_apply(tmp_path) for _ in range(4)]
        started = time.monotonic()
        results = []
        for proc in procs:
            _out, err = proc.communicate(timeout=120)
            results.append((proc.returncode, err.decode(), time.monotonic() - started))
        book = ledger(url)
    codes = sorted(code for code, _e, _t in results)
    assert codes == [0, 1, 1, 1], results
    for code, err, _t in results:
        if code == 1:
            assert "another runner apply holds the lock" in err
    assert book["credits_charged"] == 4
