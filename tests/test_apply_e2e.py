"""End to end: the runner CLI as a subprocess against the real sandbox over loopback."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from support.apply import SECRET, ledger, plan_json, runner, sandbox
from support.images import make_image
from support.manifests import lock_doc, write_manifest

from runner.state.lockfile import read_lockfile


def test_twenty_jobs_then_noop_then_replace_create_orphan_prune(tmp_path: Path) -> None:
    """20 jobs apply concurrently; a re-apply is a byte-identical no-op; edits plan as expected."""
    with sandbox(tmp_path / "sb") as url:
        manifest = write_manifest(tmp_path, n_jobs=20, url=url, filename="m.yaml")
        first = runner("apply", "m.yaml", cwd=tmp_path)
        assert first.code == 0, first.stderr
        lock = tmp_path / "m.lock.yaml"
        doc = lock_doc(lock)
        assert len(doc["jobs"]) == 20
        assert all(e["status"] == "succeeded" and e["trigger_word"] for e in doc["jobs"].values())
        assert all(e["trigger_word"].startswith(f"P{n[-3:]}_") for n, e in doc["jobs"].items())
        assert ledger(url)["credits_charged"] == 20
        before = lock.read_bytes()
        posts = ledger(url)["posts"]

        second = runner("apply", "m.yaml", cwd=tmp_path)
        assert second.code == 0, second.stderr
        assert lock.read_bytes() == before
        assert ledger(url)["posts"] == posts

        make_image(tmp_path / "data" / "job003" / "img0.png", (16, 16), seed=999)  # changed content
        manifest_doc = lock_doc(manifest)
        manifest_doc["jobs"] = manifest_doc["jobs"][1:]  # job-000 removed
        make_image(tmp_path / "data" / "extra" / "a.png", (16, 16), seed=1234)
        manifest_doc["jobs"].append({"name": "extra", "lora_prefix": "EXTRA", "images": "data/extra"})
        manifest.write_text(json.dumps(manifest_doc))
        plan = plan_json(manifest)
        assert plan["summary"] == {"create": 1, "replace": 1, "resume": 0, "retry": 0,
                                   "blocked": 0, "noop": 18, "orphan": 1}
        replace = [j for j in plan["jobs"] if j["action"] == "replace"]
        assert [(j["name"], j["reasons"]) for j in replace] == [("job-003", ["images"])]
        assert runner("plan", "m.yaml", "--detailed-exitcode", cwd=tmp_path).code == 2

        third = runner("apply", "m.yaml", cwd=tmp_path)
        assert third.code == 0, third.stderr
        doc3 = lock_doc(lock)
        assert "job-000" in doc3["jobs"]  # orphan kept without --prune
        assert doc3["jobs"]["job-003"]["trigger_word"] != doc["jobs"]["job-003"]["trigger_word"]
        assert ledger(url)["credits_charged"] == 22
        pruned = runner("apply", "m.yaml", "--prune", cwd=tmp_path)
        assert pruned.code == 0, pruned.stderr
        assert "job-000" not in lock_doc(lock)["jobs"]
        assert runner("plan", "m.yaml", "--detailed-exitcode", cwd=tmp_path).code == 0


def test_credit_exhaustion_exits_4_and_later_apply_finishes_the_rest(tmp_path: Path) -> None:
    """With 3 credits for 6 jobs apply exits 4; after a top-up only the rest is submitted."""
    with sandbox(tmp_path / "sb", credits=3) as url:
        write_manifest(tmp_path, n_jobs=6, url=url, api={"max_in_flight": 1, "max_uploads": 1}, filename="m.yaml")
        result = runner("apply", "m.yaml", cwd=tmp_path)
        assert result.code == 4, result.stderr
        assert "402" in result.stderr
        entries = lock_doc(tmp_path / "m.lock.yaml")["jobs"]
        assert sum(e["status"] == "succeeded" for e in entries.values()) == 3
    with sandbox(tmp_path / "sb", credits=10) as url:  # state survives; balance reset to 10
        write_manifest(tmp_path, n_jobs=6, url=url, api={"max_in_flight": 1, "max_uploads": 1}, filename="m.yaml")
        result = runner("apply", "m.yaml", cwd=tmp_path)
        assert result.code == 0, result.stderr
        assert ledger(url)["credits_charged"] == 6


def test_faults_end_with_every_job_succeeded_and_no_double_charge(tmp_path: Path) -> None:
    """Under --fault-rate 0.3 (every kind) all jobs succeed and credits equal jobs."""
    with sandbox(tmp_path / "sb", fault_rate=0.3, fault_delay=0.2, seed=7) as url:
        write_manifest(tmp_path, n_jobs=12, url=url, filename="m.yaml")
        result = runner("apply", "m.yaml", cwd=tmp_path, timeout=240)
        entries = lock_doc(tmp_path / "m.lock.yaml")["jobs"]
        # Lost POST answers are replayed under the same key, because the sandbox echoes it.
        assert result.code == 0, result.stderr
        assert all(e["status"] == "succeeded" for e in entries.values())
        assert ledger(url)["credits_charged"] == 12


def test_kill_9_never_corrupts_and_reapply_converges(tmp_path: Path) -> None:
    """kill -9 at random moments leaves a readable lockfile; re-apply finishes, no double charge."""
    rng = random.Random(42)
    with sandbox(tmp_path / "sb", train_seconds=0.5) as url:
        write_manifest(tmp_path, n_jobs=10, url=url, api={"max_in_flight": 4, "max_uploads": 2, "requests_per_second": 30}, filename="m.yaml")
        env = {**os.environ, "VIMMERSE_API_KEY": SECRET, "CI": "true"}
        for _ in range(4):
            proc = subprocess.Popen([sys.executable, "-m", "runner", "apply", "m.yaml"], cwd=tmp_path,
                                    env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(rng.uniform(0.3, 1.5))
            proc.kill()
            proc.wait()
            read_lockfile(tmp_path / "m.lock.yaml")  # parses, validates, replays the journal
        result = runner("apply", "m.yaml", cwd=tmp_path)
        assert result.code == 0, result.stderr
        assert ledger(url)["credits_charged"] == 10


def test_sigint_exits_130_with_a_valid_lockfile_and_resume_converges(tmp_path: Path) -> None:
    """SIGINT mid-run: exit 130, a valid lockfile; the next apply finishes without paying twice."""
    with sandbox(tmp_path / "sb", train_seconds=2) as url:
        write_manifest(tmp_path, n_jobs=6, url=url, filename="m.yaml")
        env = {**os.environ, "VIMMERSE_API_KEY": SECRET, "CI": "true"}
        proc = subprocess.Popen([sys.executable, "-m", "runner", "apply", "m.yaml"], cwd=tmp_path,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 30
        lock = tmp_path / "m.lock.yaml"
        journal = tmp_path / "m.lock.journal"
        while time.monotonic() < deadline and not (journal.exists() and journal.stat().st_size):
            time.sleep(0.05)
        time.sleep(0.3)
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        state = read_lockfile(lock)
        assert lock.exists() and not journal.exists()
        assert state.entries, "the lockfile holds what was started"
        result = runner("apply", "m.yaml", cwd=tmp_path)
        assert result.code == 0, result.stderr
        assert ledger(url)["credits_charged"] == 6


def test_corrupt_lockfile_is_refused_and_untouched(tmp_path: Path) -> None:
    """A hand-broken lockfile: exit 1, a message naming it, and its bytes unchanged."""
    with sandbox(tmp_path / "sb") as url:
        write_manifest(tmp_path, n_jobs=1, url=url, filename="m.yaml")
        lock = tmp_path / "m.lock.yaml"
        lock.write_text("version: 1\njobs:\n  job-000: {status: maybe}\n")
        before = lock.read_bytes()
        result = runner("apply", "m.yaml", cwd=tmp_path)
        assert result.code == 1
        assert "m.lock.yaml" in result.stderr and "Traceback" not in result.stderr
        assert lock.read_bytes() == before
        assert ledger(url)["posts"] == 0


def test_secret_never_printed(tmp_path: Path) -> None:
    """The API key is in no output (verbose, JSON logs), the lockfile or .runner/."""
    with sandbox(tmp_path / "sb") as url:
        write_manifest(tmp_path, n_jobs=2, url=url, jobs=[{"name": "bad", "lora_prefix": "FAILME", "images": "data/job000"}], filename="m.yaml")
        outputs = []
        for args in (["apply", "m.yaml", "-v", "--log-format", "json"], ["plan", "m.yaml", "--format", "json"],
                     ["status", "m.yaml", "--format", "json"], ["plan", "m.yaml", "-v"]):
            result = runner(*args, cwd=tmp_path)
            outputs += [result.stdout, result.stderr]
        assert "job.succeeded" in "".join(outputs)
        for text in outputs:
            assert SECRET not in text
        for path in tmp_path.rglob("*"):
            if path.is_file() and "sb" not in path.relative_to(tmp_path).parts:
                assert SECRET.encode() not in path.read_bytes(), path
