"""First contact with an API whose answers we did not design (issue 11, DESIGN sections 1, 6, 7).

Each test runs ``runner apply`` as a subprocess against a real server on loopback: the
sandbox in each of its dialects, or, for answers no sandbox dialect gives (a status that
never becomes readable), a small stand-in that answers only what the test says.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.apply import SECRET, ledger, runner, sandbox
from support.asgi import read_body
from support.manifests import lock_doc, write_manifest

from runner.sandbox.config import SandboxConfig

JOBS = 10


def _issued(url: str, word: str) -> bool:
    """The sandbox knows this trigger word: it issued it, to this key."""
    response = httpx.get(f"{url}/finetune/{word}", headers={"X-Api-Key": SECRET}, timeout=10)
    return response.status_code == 200


@pytest.mark.parametrize("dialect", ["envelope", "args", "bare"])
def test_every_readable_dialect_ends_with_the_issued_trigger_words(tmp_path: Path, dialect: str) -> None:
    """envelope, args, bare: 10 jobs succeed, each with the trigger word the sandbox issued."""
    with sandbox(tmp_path / "sb", dialect=dialect) as url:
        write_manifest(tmp_path, n_jobs=JOBS, url=url, images_per_job=1, filename="m.yaml")
        result = runner("apply", "m.yaml", cwd=tmp_path)
        assert result.code == 0, result.stderr
        jobs = lock_doc(tmp_path / "m.lock.yaml")["jobs"]
        assert {e["status"] for e in jobs.values()} == {"succeeded"}
        for name, entry in jobs.items():
            prefix = "P" + name[-3:]
            assert entry["trigger_word"].startswith(prefix + "_")
            assert _issued(url, entry["trigger_word"])
            assert entry["results"], entry
            assert entry["answer"] is None
        counts = ledger(url)
        assert counts["credits_charged"] == JOBS and counts["duplicate_trainings"] == 0


def test_opaque_answers_are_kept_charged_once_and_never_resubmitted(tmp_path: Path) -> None:
    """opaque: exit 3, every job uncertain with its answer kept; a second apply sends no POST."""
    with sandbox(tmp_path / "sb", dialect="opaque") as url:
        write_manifest(tmp_path, n_jobs=JOBS, url=url, images_per_job=1, filename="m.yaml")
        result = runner("apply", "m.yaml", cwd=tmp_path)
        assert result.code == 3, result.stderr
        jobs = lock_doc(tmp_path / "m.lock.yaml")["jobs"]
        assert {e["status"] for e in jobs.values()} == {"uncertain"}
        for entry in jobs.values():
            assert entry["trigger_word"] is None
            assert entry["asset_id"] and entry["asset_id"] in entry["answer"]
        first = ledger(url)
        assert first["credits_charged"] == JOBS
        again = runner("apply", "m.yaml", cwd=tmp_path)
        assert again.code == 3, again.stderr
        assert "--resubmit-uncertain" in again.stderr
        second = ledger(url)
        assert second["posts"] == first["posts"], "a second apply sent a POST"
        assert second["credits_charged"] == JOBS


def test_gateway_timeouts_never_pay_twice_without_idempotency(tmp_path: Path) -> None:
    """504 after the training started, API without keys: affected jobs blocked, no duplicates."""
    with sandbox(tmp_path / "sb", fault_kinds=("gateway_timeout",), fault_rate=0.5,
                 idempotency=False, seed=7) as url:
        write_manifest(tmp_path, n_jobs=JOBS, url=url, images_per_job=1, filename="m.yaml")
        result = runner("apply", "m.yaml", cwd=tmp_path)
        jobs = lock_doc(tmp_path / "m.lock.yaml")["jobs"]
        blocked = [n for n, e in jobs.items() if e["status"] == "uncertain"]
        assert blocked, "seed 7 at rate 0.5 should hit some POSTs"
        assert result.code == 3
        for name in blocked:
            assert jobs[name]["error"]["status"] == 504
        assert {e["status"] for n, e in jobs.items() if n not in blocked} == {"succeeded"}
        counts = ledger(url)
        assert counts["duplicate_trainings"] == 0
        assert counts["credits_charged"] == JOBS  # the 504s were charged too: nothing twice
        again = runner("apply", "m.yaml", cwd=tmp_path)
        assert again.code == 3 and ledger(url)["duplicate_trainings"] == 0


def test_gateway_timeouts_are_replayed_safely_where_keys_are_echoed(tmp_path: Path) -> None:
    """Same faults, API that echoes Idempotency-Key: every job succeeds, each charged once."""
    with sandbox(tmp_path / "sb", fault_kinds=("gateway_timeout",), fault_rate=0.5, seed=7) as url:
        write_manifest(tmp_path, n_jobs=JOBS, url=url, images_per_job=1, filename="m.yaml")
        result = runner("apply", "m.yaml", cwd=tmp_path)
        assert result.code == 0, result.stderr
        jobs = lock_doc(tmp_path / "m.lock.yaml")["jobs"]
        assert {e["status"] for e in jobs.values()} == {"succeeded"}
        counts = ledger(url)
        assert counts["credits_charged"] == JOBS and counts["duplicate_trainings"] == 0
        assert counts["replays"] > 0


# ----- a stand-in for answers no sandbox dialect gives ---------------------------------------


class OddApi:
    """A tiny ASGI app: POST /finetune answers a trigger word, GET answers ``status_body``."""

    def __init__(self, status_answer: Callable[[int], tuple[int, bytes]]) -> None:
        self.status_answer = status_answer
        self.posts = 0
        self.gets = 0
        self.words: list[str] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        if scope["path"].startswith("/_sandbox/"):  # not a sandbox: no health route
            status, body = 404, b'{"detail": "Not Found"}'
        elif scope["method"] == "POST" and b"runner-idempotency-probe" in body:
            status, body = 422, b'{"detail": [{"loc": ["body", "option"], "msg": "bad", "type": "x"}]}'
        elif scope["method"] == "POST":
            self.posts += 1
            word = f"P000_{self.posts:04d}"
            self.words.append(word)
            status, body = 200, b'{"data": {"id": "odd%d", "trigger_word": "%s"}}' % (self.posts, word.encode())
        else:
            self.gets += 1
            status, body = self.status_answer(self.gets)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def odd_api(tmp_path: Path, answer: Callable[[int], tuple[int, bytes]]) -> Iterator[tuple[str, OddApi]]:
    from runner.sandbox.serve import start_server

    app = OddApi(answer)
    with start_server(SandboxConfig(state_dir=tmp_path / "unused"), app=app) as server:
        yield server.url, app


@pytest.mark.parametrize(
    "answer",
    [
        (200, b'{"data": {"status": "warming_up"}}'),
        (200, b"<html>maintenance</html>"),
        (400, b'{"message": "unknown trigger word"}'),
    ],
    ids=["unknown-word", "not-json", "http-400"],
)
def test_a_status_that_never_becomes_readable_stops_after_5_polls(
    tmp_path: Path, answer: tuple[int, bytes]
) -> None:
    """Unreadable status: exit 3 within 5 polls, trigger word and training state kept;
    the next apply polls again and never POSTs."""
    with odd_api(tmp_path, lambda n: answer) as (url, api):
        write_manifest(tmp_path, n_jobs=1, url=url, images_per_job=1, api={"poll_interval": "100ms", "job_timeout": "1h"}, filename="m.yaml")
        started = time.monotonic()
        result = runner("apply", "m.yaml", cwd=tmp_path)
        assert result.code == 3, result.stderr
        assert time.monotonic() - started < 30
        entry = lock_doc(tmp_path / "m.lock.yaml")["jobs"]["job-000"]
        assert entry["status"] == "training" and entry["trigger_word"] == api.words[0]
        assert entry["answer"] == answer[1].decode()
        assert "could not be read" in entry["error"]["message"]
        # the reach check asks once; then at most 5 polls for the one job
        assert api.gets <= 1 + 5, api.gets
        polled = api.gets
        again = runner("apply", "m.yaml", cwd=tmp_path)
        assert again.code == 3
        assert api.posts == 1 and api.gets > polled


def test_a_status_that_becomes_readable_is_followed_to_the_end(tmp_path: Path) -> None:
    """A few unreadable answers, then a readable one: the job succeeds; no answer is kept."""
    def answer(n: int) -> tuple[int, bytes]:
        if n <= 3:  # the reach GET, then two odd polls
            return 200, b'{"data": {"status": "warming_up"}}'
        return 200, b'{"data": [{"URL": "https://cdn.example/out.png"}]}'

    with odd_api(tmp_path, answer) as (url, _api):
        write_manifest(tmp_path, n_jobs=1, url=url, images_per_job=1, filename="m.yaml")
        result = runner("apply", "m.yaml", cwd=tmp_path)
        assert result.code == 0, result.stderr
        entry = lock_doc(tmp_path / "m.lock.yaml")["jobs"]["job-000"]
        assert entry["status"] == "succeeded" and entry["results"] == ["https://cdn.example/out.png"]
        assert entry["answer"] is None and entry["error"] is None


def test_an_unreachable_endpoint_fails_fast_naming_the_host(tmp_path: Path) -> None:
    """20 jobs, nothing listening: exit 1 within 30 s, host and cause named, no job marked."""
    # Bound, never listening (refused), and held for the run: no other test or xdist worker
    # can start a server on the port meanwhile.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        write_manifest(tmp_path, n_jobs=20, url=f"http://127.0.0.1:{port}", images_per_job=1, filename="m.yaml")
        started = time.monotonic()
        result = runner("apply", "m.yaml", cwd=tmp_path)
        took = time.monotonic() - started
    assert result.code == 1, result.stderr
    # The 30 s is runner's own: its retries end within their budget, by its clock ("tried N
    # times over Ns"). The wall time adds the start-up and the image checks of 20 jobs, seconds
    # more on a machine loaded by parallel test workers (30.7 s once): only a hang guard here.
    spent = re.search(r"\(tried \d+ times over (\d+)s\)", result.stderr)
    assert spent and int(spent.group(1)) < 30, result.stderr
    assert took < 90, took
    assert f"127.0.0.1:{port}" in result.stderr and "refused" in result.stderr
    lockfile = tmp_path / "m.lock.yaml"
    jobs = lock_doc(lockfile)["jobs"] if lockfile.exists() else {}
    assert not any(e["status"] == "failed" for e in (jobs or {}).values())
