"""Apply rules in-process: ``runner.engine.run.run_apply`` over ``httpx.ASGITransport`` against
the real sandbox app, with a thin transport in front of it where a test needs a fault."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support.manifests import write_manifest

from runner.engine.run import run_apply
from runner.sandbox.app import create_app
from runner.sandbox.config import SandboxConfig

API = {"endpoint": "sandbox", "poll_interval": "50ms", "job_timeout": "30s", "requests_per_second": 100, "burst": 50}
Fault = Callable[[httpx.Request, int], httpx.Response | None]


class Faulty(httpx.AsyncBaseTransport):
    """The sandbox app behind ``fault``: given a request and how many POSTs of a job form came
    before it, an answer in the app's place, or None to let the app answer."""

    def __init__(self, app: Any, fault: Fault) -> None:
        self.inner = httpx.ASGITransport(app=app)
        self.fault = fault
        self.job_posts = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "POST" and b"image_files" in await request.aread():
            self.job_posts += 1
            answer = self.fault(request, self.job_posts)
            if answer is not None:
                return answer
        return await self.inner.handle_async_request(request)


@pytest.fixture
def sandbox_app(tmp_path: Path) -> Iterator[Callable[..., Any]]:
    apps: list[Any] = []

    def make(**config: Any) -> Any:
        config.setdefault("train_seconds", 0.1)
        app = create_app(SandboxConfig(state_dir=tmp_path / "state", **config))
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.state.sandbox.close()


def lock(manifest: Path) -> dict[str, Any]:
    doc = yaml.safe_load(manifest.with_name(manifest.stem + ".lock.yaml").read_text())
    return dict(doc["jobs"])


def test_jobs_succeed_in_process(tmp_path: Path, sandbox_app: Callable[..., Any]) -> None:
    """Two jobs submitted and followed to the end: exit 0, trigger words in the lockfile."""
    manifest = write_manifest(tmp_path, jobs=[{"name": "a", "lora_prefix": "A"}, {"name": "b", "lora_prefix": "B"}], api=API)
    result = run_apply(manifest, transport=httpx.ASGITransport(app=sandbox_app()))
    assert result.exit_code == 0, result.outcomes
    jobs = lock(manifest)
    assert {j["status"] for j in jobs.values()} == {"succeeded"}
    assert jobs["a"]["trigger_word"].startswith("A_") and jobs["a"]["api"] == "sandbox"


def test_429_then_success(tmp_path: Path, sandbox_app: Callable[..., Any]) -> None:
    """A 429 (nothing started) is retried after its Retry-After: one training, exit 0."""
    manifest = write_manifest(tmp_path, api=API)
    transport = Faulty(sandbox_app(), lambda r, n: httpx.Response(429, headers={"Retry-After": "0.1"}) if n == 1 else None)
    result = run_apply(manifest, transport=transport)
    assert result.exit_code == 0, result.outcomes
    assert transport.job_posts == 2 and lock(manifest)["demo"]["status"] == "succeeded"


def test_5xx_on_post_is_uncertain_where_keys_are_not_honoured(tmp_path: Path, sandbox_app: Callable[..., Any]) -> None:
    """A 502 to the POST may have started a paid training: uncertain, never retried, exit 3."""
    manifest = write_manifest(tmp_path, api=API)
    transport = Faulty(sandbox_app(idempotency=False), lambda r, n: httpx.Response(502, text="bad gateway"))
    result = run_apply(manifest, transport=transport)
    assert result.exit_code == 3
    entry = lock(manifest)["demo"]
    assert transport.job_posts == 1
    assert entry["status"] == "uncertain" and entry["error"]["status"] == 502 and entry["answer"] == "bad gateway"


def test_5xx_on_post_is_replayed_under_the_same_key_where_keys_are_honoured(
    tmp_path: Path, sandbox_app: Callable[..., Any]
) -> None:
    """Where the API echoes Idempotency-Key, a 502 is replayed under the same key: one
    training, exit 0."""
    manifest = write_manifest(tmp_path, api=API)
    keys: list[str | None] = []

    def fault(request: httpx.Request, n: int) -> httpx.Response | None:
        keys.append(request.headers.get("Idempotency-Key"))
        return httpx.Response(502) if n == 1 else None

    result = run_apply(manifest, transport=Faulty(sandbox_app(), fault))
    assert result.exit_code == 0, result.outcomes
    assert len(keys) == 2 and keys[0] == keys[1] == lock(manifest)["demo"]["idempotency_key"]


def test_a_refused_key_is_fatal_before_any_job(tmp_path: Path, sandbox_app: Callable[..., Any]) -> None:
    """401: one message, exit 1, nothing submitted and the lockfile without an entry."""
    manifest = write_manifest(tmp_path, api=API)
    transport = Faulty(sandbox_app(api_keys=("another-key",)), lambda r, n: None)
    result = run_apply(manifest, transport=transport)
    assert result.exit_code == 1 and result.fatal and "refused the key (HTTP 401)" in result.fatal
    assert transport.job_posts == 0
    assert [o.status for o in result.outcomes] == ["skipped"]


def test_a_key_refused_at_submission_stops_the_run(tmp_path: Path, sandbox_app: Callable[..., Any]) -> None:
    """A 403 to the POST itself: the job stays as it was, no further job is sent, exit 1."""
    manifest = write_manifest(tmp_path, jobs=[{"name": "a"}, {"name": "b"}],
                              api={**API, "max_in_flight": 1, "max_uploads": 1})
    transport = Faulty(sandbox_app(), lambda r, n: httpx.Response(403, json={"message": "no permission"}))
    result = run_apply(manifest, transport=transport)
    assert result.exit_code == 1 and result.fatal == "the API refused the key (HTTP 403): no permission"
    assert transport.job_posts == 1
    assert {o.status for o in result.outcomes} == {"skipped"}


def test_a_bug_after_a_submission_exits_70_with_the_lockfile_saved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DESIGN section 2: a bug once a training was paid for exits 70 (not 1, "nothing was
    submitted"), and the lockfile already holds the trigger word."""
    from runner import cli
    from runner.engine import follow

    async def bug(*args: object) -> bool:
        raise RuntimeError("a bug in following")

    monkeypatch.setattr(follow, "_ask", bug)
    monkeypatch.setenv("RUNNER_SANDBOX_TRAIN_SECONDS", "0.1")
    manifest = write_manifest(tmp_path, api=API)
    assert cli.main(["apply", str(manifest), "--log-format", "json", "-q"]) == 70
    entry = lock(manifest)["demo"]
    assert entry["status"] == "training" and entry["trigger_word"].startswith("DEMO_")

