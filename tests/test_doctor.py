"""``runner doctor``: free checks of endpoint, key and API, as a subprocess over real loopback
HTTP (DESIGN section 2; issue 11: exit 0 against the sandbox, 1 with the cause against a
closed port and against a refused key)."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.apply import SECRET, ledger, runner, sandbox
from support.manifests import write_manifest

CHECKS = ["endpoint", "key", "name resolution", "connection", "key accepted", "idempotency", "answers"]


def doctor_json(*args: str, cwd: Path, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    result = runner("doctor", *args, "--format", "json", cwd=cwd, env=env)
    return result.code, json.loads(result.stdout), result.stderr


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["checks"]}


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A loopback port that refuses connections: bound, never listening, and held until the
    block ends, so no other test (or xdist worker) can start a server on it meanwhile."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        yield port


def test_embedded_sandbox_passes_and_leaves_nothing_behind(tmp_path: Path) -> None:
    """``runner doctor`` with runner.yaml here (endpoint sandbox): every check ok, exit 0, the
    key never printed, and no sandbox state left beside the manifest."""
    write_manifest(tmp_path, n_jobs=1, url="sandbox", images_per_job=1, filename="runner.yaml")
    result = runner("doctor", cwd=tmp_path)
    assert result.code == 0, result.stdout + result.stderr
    assert SECRET not in result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("runner doctor: http://127.0.0.1:")
    for name in CHECKS:
        line = next(line for line in lines if f"  {name}  " in line)
        assert line.split()[0] == ("skip" if name == "name resolution" else "ok"), line
    assert "the API echoes Idempotency-Key" in result.stdout
    assert "HTTP 400" in result.stdout and "HTTP 422" in result.stdout
    assert lines[-1].startswith("All checks passed")
    assert not (tmp_path / ".runner" / "sandbox").exists()


@pytest.mark.parametrize("idempotency", [True, False])
def test_served_sandbox_passes_and_tells_whether_keys_are_echoed(tmp_path: Path, idempotency: bool) -> None:
    """Against a served sandbox (--endpoint, no manifest): exit 0; the JSON document says
    whether Idempotency-Key is echoed and what each answer's status and shape were; nothing
    was charged."""
    with sandbox(tmp_path / "sb", idempotency=idempotency) as url:
        code, doc, stderr = doctor_json("--endpoint", url, cwd=tmp_path)
        counts = ledger(url)
    assert code == 0, (doc, stderr)
    assert doc["ok"] is True and doc["endpoint"] == url and doc["embedded"] is False
    checks = by_name(doc)
    assert list(checks) == CHECKS
    assert checks["name resolution"]["addresses"] == ["127.0.0.1"]
    assert checks["idempotency"]["echoed"] is idempotency
    answers = checks["answers"]["answers"]
    assert [(a["status"], a["shape"]) for a in answers] == [
        (400, "{message: str}"), (422, "{detail: [{...}, ...]}")]
    assert "no finetune" in answers[0]["message"]
    assert counts["credits_charged"] == 0 and counts["trainings"] == 0


def test_closed_port_fails_naming_host_and_refused(tmp_path: Path) -> None:
    """Nothing listens: exit 1 within seconds, the connection check naming host and cause."""
    with closed_port() as port:
        started = time.monotonic()
        result = runner("doctor", "--endpoint", f"http://127.0.0.1:{port}", cwd=tmp_path)
        elapsed = time.monotonic() - started
    assert result.code == 1, result.stdout + result.stderr
    assert elapsed < 15, elapsed
    line = next(line for line in result.stdout.splitlines() if "  connection  " in line)
    assert line.split()[0] == "FAIL"
    assert f"127.0.0.1:{port}" in line and "refused" in line
    assert "1 check failed: connection." in result.stdout


def test_refused_key_fails_with_the_status(tmp_path: Path) -> None:
    """A key the API refuses: connection ok, ``key accepted`` FAIL with the 401 and the
    server's message, the probe skipped; exit 1; the key is never printed."""
    wrong = "sk-wrong-Qm2b7Rk1"
    with sandbox(tmp_path / "sb", api_keys=("sk-good-Lp0c4Wd8",)) as url:
        code, doc, stderr = doctor_json("--endpoint", url, cwd=tmp_path, env={"VIMMERSE_API_KEY": wrong})
    assert code == 1
    checks = by_name(doc)
    assert checks["connection"]["status"] == "ok"
    assert checks["key accepted"]["status"] == "FAIL" and checks["key accepted"]["http_status"] == 401
    assert "refused the key (HTTP 401)" in checks["key accepted"]["detail"]
    assert checks["idempotency"]["status"] == "skip"
    assert wrong not in json.dumps(doc) + stderr


def test_no_key_still_checks_the_endpoint(tmp_path: Path) -> None:
    """No key set for a real endpoint: ``key`` FAIL naming the variable, yet the endpoint is
    still reached (so the key is the only thing to fix); exit 1."""
    with sandbox(tmp_path / "sb", api_keys=("sk-good-Lp0c4Wd8",)) as url:
        code, doc, _ = doctor_json("--endpoint", url, cwd=tmp_path, env={"VIMMERSE_API_KEY": ""})
    assert code == 1
    checks = by_name(doc)
    assert checks["key"]["status"] == "FAIL" and "VIMMERSE_API_KEY" in checks["key"]["detail"]
    assert checks["connection"]["status"] == "ok"
    assert checks["key accepted"]["status"] == "skip"


def test_neither_manifest_nor_endpoint_is_a_usage_error(tmp_path: Path) -> None:
    result = runner("doctor", cwd=tmp_path, env={"RUNNER_ENDPOINT": ""})
    assert result.code == 1
    assert "no manifest" in result.stderr and "--endpoint" in result.stderr


def test_doctor_trace_http_records_both_requests(tmp_path: Path) -> None:
    """``doctor --trace-http``: the status request and the probe, never the key."""
    with sandbox(tmp_path / "sb") as url:
        result = runner("doctor", "--endpoint", url, "--trace-http", "d.jsonl", cwd=tmp_path)
    assert result.code == 0, result.stdout + result.stderr
    raw = (tmp_path / "d.jsonl").read_text(encoding="utf-8")
    lines = [json.loads(line) for line in raw.splitlines()]
    assert [(line["method"], line["response"]["status"]) for line in lines] == [("GET", 400), ("POST", 422)]
    assert SECRET not in raw


class StandIn:
    """A tiny ASGI app answering the status request and the probe as the test says."""

    def __init__(self, get: tuple[int, bytes], post: tuple[int, bytes]) -> None:
        self.answers = {"GET": get, "POST": post}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        status, body = self.answers[scope["method"]]
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


@pytest.mark.parametrize(
    ("get", "post", "code", "expect"),
    [
        ((200, b'{"data": []}'), (422, b'{"detail": "bad form"}'), 0,
         {"answers": "warn", "idempotency": "ok"}),
        ((404, b'{"detail": "Not Found"}'), (502, b"<html>bad gateway</html>"), 0,
         {"answers": "ok", "idempotency": "warn"}),
        ((400, b'{"message": "no"}'), (200, b'{"data": {"id": "x"}}'), 1,
         {"answers": "ok", "idempotency": "FAIL"}),
    ],
    ids=["unknown-word-reads-as-running", "probe-5xx", "probe-accepted"],
)
def test_answers_no_sandbox_gives_are_described(
    tmp_path: Path, get: tuple[int, bytes], post: tuple[int, bytes], code: int, expect: dict[str, str]
) -> None:
    """An API whose status request for a word that cannot exist answers 200 (``warn``: a
    wrong word would look the same), whose probe gets a 5xx (``warn``: nothing learnt) or a
    200 (``FAIL``: it accepted a form with no images)."""
    from runner.sandbox.config import SandboxConfig
    from runner.sandbox.serve import start_server

    with start_server(SandboxConfig(state_dir=tmp_path / "unused"), app=StandIn(get, post)) as server:
        got, doc, stderr = doctor_json("--endpoint", server.url, cwd=tmp_path)
    assert got == code, (doc, stderr)
    checks = by_name(doc)
    for name, status in expect.items():
        assert checks[name]["status"] == status, checks[name]
    answers = checks["answers"]["answers"]
    assert [a["status"] for a in answers] == [get[0], post[0]]
    if get[0] == 200:
        assert answers[0]["reads_as"] == "running" and "cannot exist was answered 200" in checks["answers"]["detail"]


def test_doctor_refuses_a_trust_change_like_apply(tmp_path: Path) -> None:
    """A lockfile made on the sandbox and a manifest now pointing elsewhere: doctor would send
    the key to a new host, so it refuses (exit 1, nothing resolved or sent) until a person
    passes --allow-trust-change."""
    write_manifest(tmp_path, n_jobs=1, url="sandbox", images_per_job=1, filename="m.yaml")
    applied = runner("apply", "m.yaml", cwd=tmp_path, env={"RUNNER_SANDBOX_TRAIN_SECONDS": "0.1"})
    assert applied.code == 0, applied.stderr
    env = {"RUNNER_ENDPOINT": "https://runner-test.invalid"}
    result = runner("doctor", "m.yaml", cwd=tmp_path, env=env)
    assert result.code == 1
    assert "trust change" in result.stderr and "--allow-trust-change" in result.stderr
    assert "name resolution" not in result.stdout  # refused before anything was tried
    allowed = runner("doctor", "m.yaml", "--allow-trust-change", cwd=tmp_path, env=env)
    assert allowed.code == 1 and "cannot resolve the host name runner-test.invalid" in allowed.stdout
