"""Apply's rules one by one (DESIGN section 6), each against the real sandbox over loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from support.apply import SECRET, ledger, plan_json, runner, sandbox
from support.manifests import lock_doc, write_manifest


def test_422_fails_only_that_job_and_plans_a_retry(tmp_path: Path) -> None:
    """A job the API rejects (422) is failed with the server's message; the others succeed."""
    with sandbox(tmp_path / "sb") as url:
        write_manifest(tmp_path, n_jobs=3, url=url, jobs=[
            {"name": "too-long", "lora_prefix": "LONG", "num_iterations": 500000, "images": "data/job000"}], filename="m.yaml")
        result = runner("apply", "m.yaml", cwd=tmp_path)
        assert result.code == 3, result.stderr
        jobs = lock_doc(tmp_path / "m.lock.yaml")["jobs"]
        assert jobs["too-long"]["status"] == "failed"
        assert jobs["too-long"]["error"]["status"] == 422
        assert "num_iterations" in jobs["too-long"]["error"]["message"]
        assert [jobs[f"job-00{i}"]["status"] for i in range(3)] == ["succeeded"] * 3
        assert {j["name"]: j["action"] for j in plan_json(tmp_path / "m.yaml")["jobs"]}["too-long"] == "retry"


def test_failed_training_is_retried_with_a_new_key(tmp_path: Path) -> None:
    """A training that fails is retried on the next apply as attempt 2 with a new Idempotency-Key."""
    with sandbox(tmp_path / "sb") as url:
        write_manifest(tmp_path, n_jobs=0, url=url, jobs=[{"name": "doomed", "lora_prefix": "FAILX", "images": "data/x"}], api={}, filename="m.yaml")
        from support.images import make_image

        make_image(tmp_path / "data" / "x" / "a.png", (16, 16), seed=1)
        assert runner("apply", "m.yaml", cwd=tmp_path).code == 3
        first = lock_doc(tmp_path / "m.lock.yaml")["jobs"]["doomed"]
        assert first["status"] == "failed" and first["attempt"] == 1
        assert runner("apply", "m.yaml", cwd=tmp_path).code == 3
        second = lock_doc(tmp_path / "m.lock.yaml")["jobs"]["doomed"]
        assert second["attempt"] == 2
        assert second["idempotency_key"] != first["idempotency_key"]
        assert ledger(url)["credits_charged"] == 2


def test_no_wait_then_refresh_then_resume(tmp_path: Path) -> None:
    """--no-wait exits 3 with jobs training; refresh sees them finish; apply resumes without posting."""
    with sandbox(tmp_path / "sb", train_seconds=1.0) as url:
        write_manifest(tmp_path, n_jobs=3, url=url, filename="m.yaml")
        result = runner("apply", "m.yaml", "--no-wait", cwd=tmp_path)
        assert result.code == 3, result.stderr
        assert {e["status"] for e in lock_doc(tmp_path / "m.lock.yaml")["jobs"].values()} == {"training"}
        assert plan_json(tmp_path / "m.yaml")["summary"]["resume"] == 3
        time.sleep(1.5)
        refreshed = runner("plan", "m.yaml", "--refresh", "--format", "json", cwd=tmp_path)
        assert json.loads(refreshed.stdout)["summary"]["noop"] == 3
        status = runner("status", "m.yaml", "--refresh", "--format", "json", cwd=tmp_path)
        assert {j["status"] for j in json.loads(status.stdout)["jobs"]} == {"succeeded"}
        assert {e["status"] for e in lock_doc(tmp_path / "m.lock.yaml")["jobs"].values()} == {"training"}
        posts = ledger(url)["posts"]
        assert runner("apply", "m.yaml", cwd=tmp_path).code == 0
        assert ledger(url)["posts"] == posts
        assert {e["status"] for e in lock_doc(tmp_path / "m.lock.yaml")["jobs"].values()} == {"succeeded"}


def test_target_submits_only_the_named_job(tmp_path: Path) -> None:
    """--target job-001 submits that job alone."""
    with sandbox(tmp_path / "sb") as url:
        write_manifest(tmp_path, n_jobs=3, url=url, filename="m.yaml")
        assert runner("apply", "m.yaml", "--target", "job-001", cwd=tmp_path).code == 0
        assert set(lock_doc(tmp_path / "m.lock.yaml")["jobs"]) == {"job-001"}
        assert runner("apply", "m.yaml", "--target", "nope", cwd=tmp_path).code == 1


def test_budget_guard_refuses_before_sending(tmp_path: Path) -> None:
    """max_submissions below the plan's trainings: exit 1, nothing posted; the flag overrides."""
    with sandbox(tmp_path / "sb") as url:
        write_manifest(tmp_path, n_jobs=3, url=url, api={"max_submissions": 2}, filename="m.yaml")
        refused = runner("apply", "m.yaml", cwd=tmp_path)
        assert refused.code == 1
        assert "max_submissions" in refused.stderr and "nothing was submitted" in refused.stderr
        assert ledger(url)["posts"] == 0
        assert not (tmp_path / "m.lock.yaml").exists()
        assert runner("apply", "m.yaml", "--max-submissions", "3", cwd=tmp_path).code == 0


def test_lost_answer_without_idempotency_is_blocked_until_resubmit(tmp_path: Path) -> None:
    """Against an API that ignores keys, a lost POST answer blocks the job until --resubmit-uncertain."""
    state = tmp_path / "sb"
    with sandbox(state, idempotency=False, fault_rate=1.0, fault_kinds=("lost_post",)) as url:
        write_manifest(tmp_path, n_jobs=1, url=url, filename="m.yaml")
        result = runner("apply", "m.yaml", cwd=tmp_path)
        assert result.code == 3, result.stderr
        assert lock_doc(tmp_path / "m.lock.yaml")["jobs"]["job-000"]["status"] == "uncertain"
        assert ledger(url)["credits_charged"] == 1  # it did start training
    with sandbox(state, idempotency=False) as url:
        write_manifest(tmp_path, n_jobs=1, url=url, filename="m.yaml")
        assert plan_json(tmp_path / "m.yaml")["summary"]["blocked"] == 1
        blocked = runner("apply", "m.yaml", cwd=tmp_path)
        assert blocked.code == 3
        assert "--resubmit-uncertain" in blocked.stderr
        assert ledger(url)["credits_charged"] == 1
        resubmitted = runner("apply", "m.yaml", "--resubmit-uncertain", cwd=tmp_path)
        assert resubmitted.code == 0, resubmitted.stderr
        assert ledger(url)["credits_charged"] == 2  # the price of not knowing, paid knowingly


def test_lost_answer_with_echoing_api_is_replayed_without_a_second_charge(tmp_path: Path) -> None:
    """With the sandbox's echo, lost POST answers are replayed under their key and charged once."""
    with sandbox(tmp_path / "sb", fault_rate=0.3, fault_kinds=("lost_post",), seed=3) as url:
        write_manifest(tmp_path, n_jobs=6, url=url, filename="m.yaml")
        result = runner("apply", "m.yaml", cwd=tmp_path)
        assert result.code == 0, result.stderr
        book = ledger(url)
        assert book["replays"] > 0, book  # answers really were lost and replayed
        assert book["credits_charged"] == 6


def test_second_apply_on_the_same_lockfile_fails_fast(tmp_path: Path) -> None:
    """While one apply runs, another on the same lockfile exits 1 at once, naming the lock."""
    # The first apply holds the lock for its 10 s trainings: the second's start-up (seconds
    # on a machine loaded by parallel test workers) must end well inside that window, or it
    # would find the first one done and the lock free.
    with sandbox(tmp_path / "sb", train_seconds=10) as url:
        write_manifest(tmp_path, n_jobs=2, url=url, filename="m.yaml")
        env = {**os.environ, "VIMMERSE_API_KEY": SECRET, "CI": "true"}
        first = subprocess.Popen([sys.executable, "-m", "runner", "apply", "m.yaml"], cwd=tmp_path, env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 20
            while not (tmp_path / "m.lock.journal").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            started = time.monotonic()
            second = runner("apply", "m.yaml", cwd=tmp_path)
            assert second.code == 1
            assert "another runner apply holds the lock" in second.stderr
            assert time.monotonic() - started < 10
        finally:
            assert first.wait(timeout=60) == 0
        assert ledger(url)["credits_charged"] == 2


def test_plain_http_to_a_remote_host_is_refused(tmp_path: Path) -> None:
    """An http:// endpoint off loopback is refused before anything is sent."""
    write_manifest(tmp_path, n_jobs=1, url="sandbox", filename="m.yaml")
    result = runner("apply", "m.yaml", "--endpoint", "http://api.example.com", cwd=tmp_path)
    assert result.code == 1
    assert "only allowed to this machine" in result.stderr


def test_markdown_plan_is_a_table(tmp_path: Path) -> None:
    """plan --format markdown gives a PR-comment table naming each changing job."""
    write_manifest(tmp_path, n_jobs=2, url="sandbox", filename="m.yaml")
    result = runner("plan", "m.yaml", "--format", "markdown", cwd=tmp_path)
    assert result.code == 0
    assert "| action | job | why |" in result.stdout
    assert "| create | `job-000` |" in result.stdout


def test_many_manifests_all_validated_before_anything_is_sent(tmp_path: Path) -> None:
    """apply over a glob: one invalid manifest means exit 1 and no POST; fixed, both apply."""
    with sandbox(tmp_path / "sb") as url:
        write_manifest(tmp_path, n_jobs=2, url=url, filename="a.yaml")
        write_manifest(tmp_path, n_jobs=1, url=url, filename="b.yaml")
        (tmp_path / "b.yaml").write_text((tmp_path / "b.yaml").read_text().replace("lora_prefix", "lora_prefx"))
        refused = runner("apply", "*.yaml", cwd=tmp_path)
        assert refused.code == 1
        assert "b.yaml" in refused.stderr and "nothing was submitted" in refused.stderr
        assert ledger(url)["posts"] == 0
        write_manifest(tmp_path, n_jobs=1, url=url, filename="b.yaml")
        done = runner("apply", "*.yaml", cwd=tmp_path)
        assert done.code == 0, done.stderr
        assert (tmp_path / "a.lock.yaml").exists() and (tmp_path / "b.lock.yaml").exists()
        assert runner("apply", "*.yaml", "--max-submissions", "0", cwd=tmp_path).code == 0  # all noop


def test_api_key_that_cannot_be_a_header_is_a_usage_error(tmp_path: Path) -> None:
    """A non-ASCII or multi-line key: exit 1 with a clear message, the key not shown."""
    write_manifest(tmp_path, n_jobs=1, url="http://127.0.0.1:9", filename="m.yaml")
    for key in ("sk-Ωmega-123", "sk-line\nbreak"):
        result = runner("apply", "m.yaml", cwd=tmp_path, env={"VIMMERSE_API_KEY": key})
        assert result.code == 1
        assert "characters an HTTP header cannot carry" in result.stderr
        assert "Traceback" not in result.stderr
        assert key not in result.stderr


def test_job_timeout_leaves_the_job_training_and_the_next_apply_resumes(tmp_path: Path) -> None:
    """job_timeout ends the wait (exit 3, still training); a later apply follows it to the end."""
    with sandbox(tmp_path / "sb", train_seconds=3) as url:
        write_manifest(tmp_path, n_jobs=1, url=url, api={"job_timeout": "500ms"}, filename="m.yaml")
        started = time.monotonic()
        result = runner("apply", "m.yaml", cwd=tmp_path)
        assert result.code == 3, result.stderr
        assert "job_timeout" in result.stderr
        assert time.monotonic() - started < 15
        assert lock_doc(tmp_path / "m.lock.yaml")["jobs"]["job-000"]["status"] == "training"
        write_manifest(tmp_path, n_jobs=1, url=url, api={"job_timeout": "60s"}, filename="m.yaml")
        assert plan_json(tmp_path / "m.yaml")["summary"]["resume"] == 1
        assert runner("apply", "m.yaml", cwd=tmp_path).code == 0
        assert ledger(url)["credits_charged"] == 1


def test_polls_learn_how_long_a_shape_trains(tmp_path: Path) -> None:
    """After the first training of a shape ends, later ones are first asked about when it had
    ended: about one status request each instead of one every poll_interval."""
    with sandbox(tmp_path / "sb", train_seconds=0.6) as url:
        write_manifest(tmp_path, n_jobs=5, url=url, api={"max_in_flight": 1, "poll_interval": "50ms"}, filename="m.yaml")
        result = runner("apply", "m.yaml", cwd=tmp_path)
        assert result.code == 0, result.stderr
        checks = ledger(url)["status_checks"]
    # Unlearned, each 0.6 s training costs ~12 polls at 50 ms (60 for five jobs): the first
    # still does, the four after it 1-2 each.
    assert 5 <= checks <= 14 + 4 * 3, checks
