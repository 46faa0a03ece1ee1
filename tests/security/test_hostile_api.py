"""A hostile or broken API cannot stall, exhaust or crash apply (issue 12, item 6).

A real loopback server (uvicorn) answers as an attacker would: a 400 MB answer, a
``Retry-After`` of 30 years, an answer dripping one byte at a time, JSON nested 100,000
deep. ``runner apply`` runs as a subprocess where memory and exit codes matter; the
client in-process (with its deadlines shortened) where only time does.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from support.apply import SECRET, runner
from support.asgi import read_body
from support.images import make_image
from support.manifests import lock_doc, write_manifest

from runner.api import transport as transport_module
from runner.api import wire
from runner.api.client import ApiClient, RetryPolicy
from runner.api.ratelimit import TokenBucket
from runner.errors import Uncertain
from runner.models import Job
from runner.sandbox.config import SandboxConfig

PROBE = b"runner-idempotency-probe"


class Hostile:
    """POST /finetune answers a trigger word (or ``post_mode``); GET answers ``get_mode``."""

    def __init__(self, get_mode: str, post_mode: str = "ok") -> None:
        self.get_mode = get_mode
        self.post_mode = post_mode
        self.requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        self.requests += 1
        if scope["path"].startswith("/_sandbox/"):
            await _answer(send, 404, b"{}")
            return
        if scope["method"] == "POST":
            if PROBE in body:
                await _answer(send, 422, b'{"detail": []}')
            else:
                await self._post(send)
            return
        if "runner-doctor-" in scope["path"]:  # the reach check: a plain 400, as documented
            await _answer(send, 400, b'{"message": "no such finetune"}')
            return
        await self._get(send)

    async def _post(self, send: Any) -> None:
        if self.post_mode == "deep":
            await _answer(send, 200, b'{"data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
        elif self.post_mode == "drip":
            await _drip(send)
        elif self.post_mode == "retry_after":
            self.post_mode = "ok"
            await _answer(send, 429, b'{"message": "slow down"}', [(b"retry-after", b"999999999")])
        else:
            await _answer(send, 200, b'{"data": {"id": "h1", "trigger_word": "P000_hostile"}}')

    async def _get(self, send: Any) -> None:
        if self.get_mode == "huge":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json")]})
            chunk = b" " * (1 << 20)
            await send({"type": "http.response.body", "body": b'{"data": "', "more_body": True})
            for _ in range(400):  # 400 MB, as fast as the client takes it
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b'"}'})
        elif self.get_mode == "deep":
            await _answer(send, 200, b"[" * 100_000)
        elif self.get_mode == "drip":
            await _drip(send)
        else:
            await _answer(send, 200, b'{"data": [{"URL": "https://cdn.example/x.png"}]}')


async def _answer(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


async def _drip(send: Any) -> None:
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json")]})
    for byte in b'{"data": [{"URL": "https://cdn.example/slow.png"}]}' * 1000:
        await send({"type": "http.response.body", "body": bytes([byte]), "more_body": True})
        await anyio.sleep(0.5)
    await send({"type": "http.response.body", "body": b""})


@contextlib.contextmanager
def hostile(tmp_path: Path, get_mode: str, post_mode: str = "ok") -> Iterator[tuple[str, Hostile]]:
    from runner.sandbox.serve import start_server

    app = Hostile(get_mode, post_mode)
    with start_server(SandboxConfig(state_dir=tmp_path / "unused"), app=app) as server:
        yield server.url, app


def _apply_rss(tmp_path: Path, url: str) -> tuple[int, str, int]:
    """Run ``runner apply`` as a grandchild under a wrapper that reports that one process's
    peak RSS (RUSAGE_CHILDREN of this test process would include every earlier child)."""
    wrapper = (
        "import resource, subprocess, sys\n"
        "r = subprocess.run([sys.executable, '-m', 'runner', 'apply', 'm.yaml'], capture_output=True, text=True)\n"
        "sys.stderr.write(r.stderr)\n"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
        "sys.exit(r.returncode)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", wrapper], cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "VIMMERSE_API_KEY": SECRET, "CI": "true"},
    )
    return proc.returncode, proc.stderr, int(proc.stdout.strip().splitlines()[-1]) // 1024


def test_a_400_mb_status_answer_is_unreadable_and_memory_stays_flat(tmp_path: Path) -> None:
    """The client reads at most 8 MiB of an answer: the 400 MB one is unreadable, RSS small."""
    with hostile(tmp_path, "huge") as (url, _api):
        write_manifest(tmp_path, n_jobs=1, url=url, images_per_job=1, api={"poll_interval": "100ms"}, filename="m.yaml")
        code, stderr, peak_mib = _apply_rss(tmp_path, url)
    assert code == 3, stderr
    assert "Traceback" not in stderr
    entry = lock_doc(tmp_path / "m.lock.yaml")["jobs"]["job-000"]
    assert entry["status"] == "training" and entry["trigger_word"] == "P000_hostile"
    assert "larger than 8 MiB" in entry["error"]["message"]
    assert len(entry["answer"]) <= wire.KEEP_ANSWER_CHARS
    assert peak_mib < 250, f"peak RSS {peak_mib} MiB"


def test_json_nested_100000_deep_is_unreadable_not_a_crash(tmp_path: Path) -> None:
    """Deep JSON in a POST and a status answer: uncertain / unreadable, never exit 70."""
    with hostile(tmp_path, "deep", post_mode="deep") as (url, _api):
        write_manifest(tmp_path, n_jobs=1, url=url, images_per_job=1, filename="m.yaml")
        result = runner("apply", "m.yaml", cwd=tmp_path)
    assert result.code == 3, result.stderr
    assert "Traceback" not in result.stderr
    entry = lock_doc(tmp_path / "m.lock.yaml")["jobs"]["job-000"]
    assert entry["status"] == "uncertain" and entry["answer"].startswith('{"data": [[[')
    with hostile(tmp_path, "deep") as (url, _api):
        write_manifest(tmp_path, n_jobs=1, url=url, images_per_job=1, filename="n.yaml", api={"poll_interval": "100ms"})
        result = runner("apply", "n.yaml", cwd=tmp_path)
    assert result.code == 3 and "Traceback" not in result.stderr
    assert lock_doc(tmp_path / "n.lock.yaml")["jobs"]["job-000"]["status"] == "training"


def test_a_dripping_status_answer_cannot_hold_apply_past_job_timeout(tmp_path: Path) -> None:
    """One byte every 0.5 s: the job ends at job_timeout (still training), not hours later."""
    with hostile(tmp_path, "drip") as (url, _api):
        write_manifest(tmp_path, n_jobs=1, url=url, images_per_job=1, api={"poll_interval": "100ms", "job_timeout": "3s"}, filename="m.yaml")
        started = time.monotonic()
        result = runner("apply", "m.yaml", cwd=tmp_path)
        took = time.monotonic() - started
    assert result.code == 3, result.stderr
    assert took < 20, took
    assert lock_doc(tmp_path / "m.lock.yaml")["jobs"]["job-000"]["status"] == "training"


@pytest.fixture()
def job(tmp_path: Path) -> Job:
    return Job(name="a", lora_prefix="P000", images=(make_image(tmp_path / "a.png", (8, 8), (1, 2, 3)),))


def _client_run(url: str, fn: Any) -> Any:
    async def main() -> Any:
        policy = RetryPolicy(attempts=3, timeout=10, wait_initial=0.01, wait_max=0.05, wait_jitter=0.0)
        async with ApiClient(url, SECRET, TokenBucket(None), retry=policy) as client:
            return await fn(client)

    return anyio.run(main)


def test_a_dripping_post_answer_is_uncertain_within_its_deadline(
    tmp_path: Path, job: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A POST whose answer drips is cut at its deadline and is uncertain (it may have started)."""
    monkeypatch.setattr(transport_module, "POST_DEADLINE", 2.0)
    with hostile(tmp_path, "ok", post_mode="drip") as (url, _api):
        started = time.monotonic()
        with pytest.raises(Uncertain, match="did not finish"):
            _client_run(url, lambda c: c.submit(job, "k"))
    assert time.monotonic() - started < 10


def test_retry_after_is_clamped(tmp_path: Path, job: Job, monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry-After: 999999999 pauses for the clamp, not for 30 years; then the POST goes on."""
    monkeypatch.setattr(transport_module, "MAX_RETRY_AFTER", 1.0)
    with hostile(tmp_path, "ok", post_mode="retry_after") as (url, _api):
        started = time.monotonic()
        result = _client_run(url, lambda c: c.submit(job, "k"))
    assert result.trigger_word == "P000_hostile"
    assert time.monotonic() - started < 10
