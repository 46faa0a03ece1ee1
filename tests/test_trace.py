"""``--trace-http FILE`` (runner/api/trace.py): one JSON line per exchange, never the key.

The transport is tested through httpx.MockTransport (answers no sandbox gives: gzip, a
cut-off body, a lost connection) and end to end: ``runner apply --trace-http`` against a
real sandbox on loopback, compared with the sandbox's own ledger.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import stat
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from support.apply import SECRET, ledger, runner, sandbox
from support.images import make_image
from support.manifests import lock_doc, write_manifest

from runner import logsetup
from runner.api.client import ApiClient, RetryPolicy
from runner.api.ratelimit import TokenBucket
from runner.api.trace import MAX_BODY, TraceTransport
from runner.errors import UsageError
from runner.models import KONTEXT, Job

KEY = "sk-trace-Vq81ZmN0"
FAST = RetryPolicy(attempts=2, timeout=5, wait_initial=0.01, wait_max=0.02, wait_jitter=0.0)


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def with_client(tmp_path: Path, handler: Callable[[httpx.Request], httpx.Response], fn: Any) -> Any:
    async def main() -> Any:
        async with ApiClient("http://api.test", KEY, TokenBucket(None), transport=httpx.MockTransport(handler),
                             retry=FAST, trace=tmp_path / "t.jsonl") as client:
            return await fn(client)

    return anyio.run(main)


def test_each_exchange_is_one_line_with_form_files_and_no_key(tmp_path: Path) -> None:
    """reach, probe and a job POST: three lines; the form's text fields, file parts as name,
    size and sha256; no X-Api-Key, no key anywhere, no file bytes."""
    images = [make_image(tmp_path / "imgs" / f"{i}.png", (16, 16), seed=i) for i in range(2)]
    job = Job(name="a", lora_prefix="SNKR", images=tuple(images), webhook_url="https://hooks.test/x")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(400, json={"message": "no such finetune"})
        if b"runner-idempotency-probe" in request.read():
            return httpx.Response(422, json={"detail": [{"loc": ["body", "option"], "msg": "bad"}]})
        # A server that echoes the key back must not get it into the trace either.
        return httpx.Response(200, json={"data": {"trigger_word": "SNKR_1", "who": KEY}})

    async def go(client: ApiClient) -> str | None:
        await client.reach()
        await client.probe_idempotency()
        return (await client.submit(job, "idem-1")).trigger_word

    assert with_client(tmp_path, handler, go) == "SNKR_1"
    raw = (tmp_path / "t.jsonl").read_bytes()
    assert KEY.encode() not in raw and b"x-api-key" not in raw.lower()
    assert b"IHDR" not in raw and b"\x89PNG" not in raw
    get, probe, post = lines(tmp_path / "t.jsonl")
    assert [get["method"], probe["method"], post["method"]] == ["GET", "POST", "POST"]
    assert get["url"].startswith("http://api.test/finetune/runner-doctor-")
    assert get["response"]["status"] == 400 and json.loads(get["response"]["body"]) == {"message": "no such finetune"}
    assert probe["request"]["form"]["fields"][0] == ["option", "runner-idempotency-probe"]
    form = post["request"]["form"]
    assert ["webhook_url", "https://hooks.test/x"] in form["fields"]
    assert form["files"] == [
        {"field": "image_files", "filename": p.name, "size": p.stat().st_size,
         "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        for p in images
    ]
    assert post["request"]["headers"]["idempotency-key"] == "idem-1"
    assert post["response"]["status"] == 200 and "***" in post["response"]["body"]
    for line in (get, probe, post):
        assert line["trace"] == 1 and line["time"].endswith("Z") and line["error"] is None
        assert line["elapsed_ms"] >= 0 and line["response"]["body_complete"] is True


def test_registered_secrets_are_masked_and_the_file_is_private(tmp_path: Path) -> None:
    """A secret registered with logsetup (an expanded manifest variable) is masked in URLs,
    fields and answers; the file is created 0600 and appended to, never truncated."""
    hook_secret = "hook-token-Pz93kq"
    logsetup.register_secret(hook_secret)
    job = Job(name="u", lora_prefix="W", image_urls=("https://e.test/a.jpg",),
              webhook_url=f"https://hooks.test/{hook_secret}")

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"data": {"trigger_word": "W_1", "webhook_url": f"https://hooks.test/{hook_secret}"}})

    with_client(tmp_path, handler, lambda c: c.submit(job, "k"))
    with_client(tmp_path, handler, lambda c: c.submit(job, "k"))
    path = tmp_path / "t.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    raw = path.read_text(encoding="utf-8")
    assert hook_secret not in raw
    first, second = lines(path)
    assert ["webhook_url", "https://hooks.test/***"] in first["request"]["form"]["fields"]
    assert ["image_urls", "https://e.test/a.jpg"] in first["request"]["form"]["fields"]
    assert first["request"]["form"]["files"] == []
    assert second["response"]["status"] == 200


def _transport(tmp_path: Path, handler: Callable[[httpx.Request], httpx.Response]) -> TraceTransport:
    return TraceTransport(httpx.MockTransport(handler), tmp_path / "t.jsonl")


def test_the_caller_gets_the_same_answer_large_gzip_or_plain(tmp_path: Path) -> None:
    """A 200 KiB body reaches the caller whole, its first 64 KiB in the trace (truncated);
    a gzip body is recorded decoded, and the caller still decodes it itself."""
    big = "x" * (MAX_BODY - 1) + "é" * 70_000  # about 200 KiB; a 2-byte character across the cut
    payload = json.dumps({"data": {"status": "training"}}).encode()

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/big":
            return httpx.Response(200, content=big.encode(), headers={"content-type": "text/plain"})
        return httpx.Response(200, content=gzip.compress(payload),
                              headers={"content-encoding": "gzip", "content-type": "application/json"})

    async def go() -> tuple[bytes, bytes, str]:
        async with httpx.AsyncClient(transport=_transport(tmp_path, handler), base_url="http://api.test") as http:
            a = await http.get("/big")
            b = await http.get("/gz")
            return a.content, b.content, b.headers["content-encoding"]

    body, gz, encoding = anyio.run(go)
    assert body == big.encode() and gz == payload and encoding == "gzip"
    big_line, gz_line = lines(tmp_path / "t.jsonl")
    answer = big_line["response"]
    assert answer["body_bytes"] == len(big.encode()) and answer["body_truncated"] is True
    assert big.startswith(answer["body"]) and len(answer["body"].encode()) <= MAX_BODY
    assert "\ufffd" not in answer["body"]  # a character cut at 64 KiB is dropped, not mangled
    assert gz_line["response"]["body"] == payload.decode()
    assert gz_line["response"]["body_bytes"] == len(gzip.compress(payload))


class _CutOff(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"data": {"sta'
        raise httpx.ReadError("connection reset")


def test_errors_are_recorded_and_re_raised_as_they_came(tmp_path: Path) -> None:
    """No answer: the line has the error and no response, and the caller gets the very same
    exception; an answer cut off: its start and the error."""
    refused = httpx.ConnectError("[Errno 111] Connection refused")

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/refused":
            raise refused
        return httpx.Response(200, stream=_CutOff())

    transport = _transport(tmp_path, handler)

    async def go() -> None:
        with pytest.raises(httpx.ConnectError) as caught:
            await transport.handle_async_request(httpx.Request("GET", "http://api.test/refused"))
        assert caught.value is refused
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as http:
            with pytest.raises(httpx.ReadError):
                await http.get("/cut")

    anyio.run(go)
    no_answer, cut = lines(tmp_path / "t.jsonl")
    assert no_answer["response"] is None
    assert no_answer["error"] == {"type": "ConnectError", "message": "[Errno 111] Connection refused"}
    assert cut["response"]["body"] == '{"data": {"sta' and cut["response"]["body_complete"] is False
    assert cut["error"]["type"] == "ReadError"


def test_an_answer_closed_early_is_recorded_once(tmp_path: Path) -> None:
    """The caller reads one chunk and closes (as the client does past 8 MiB): one line,
    marked incomplete."""
    class Chunks(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b"z" * 1000

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Chunks())

    async def go() -> None:
        async with (
            httpx.AsyncClient(transport=_transport(tmp_path, handler)) as http,
            http.stream("GET", "http://api.test/") as response,
        ):
            async for _ in response.aiter_raw():
                break

    anyio.run(go)
    (line,) = lines(tmp_path / "t.jsonl")
    assert line["response"]["body_complete"] is False and line["response"]["body_bytes"] == 1000


def test_concurrent_tasks_never_interleave_lines(tmp_path: Path) -> None:
    """200 requests from 50 tasks at once: 200 whole JSON lines, each its own URL."""
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"y" * 20_000)

    async def go() -> None:
        async with httpx.AsyncClient(transport=_transport(tmp_path, handler), base_url="http://api.test") as http:
            async def worker(w: int) -> None:
                for i in range(4):
                    await http.get(f"/{w}/{i}")

            async with anyio.create_task_group() as tg:
                for w in range(50):
                    tg.start_soon(worker, w)

    anyio.run(go)
    got = lines(tmp_path / "t.jsonl")
    assert len(got) == 200
    assert len({line["url"] for line in got}) == 200


def test_an_unwritable_trace_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot write the HTTP trace"):
        TraceTransport(httpx.MockTransport(lambda r: httpx.Response(200)), tmp_path / "no" / "t.jsonl")


# -- end to end -----------------------------------------------------------------------------


def test_a_traced_apply_holds_every_request_and_answer_and_never_the_key(tmp_path: Path) -> None:
    """``apply --trace-http`` of file jobs, a URL-only job and a Kontext pair against a real
    sandbox: one line per request the sandbox counted (posts, status checks, the reach GET
    among them), every answer, file parts as name/size/sha256, the key nowhere."""
    pair = [make_image(tmp_path / "pairs" / "car.png", (16, 16), seed=7), make_image(tmp_path / "pairs" / "car_red.png", (16, 16), seed=8)]
    extra = [
        {"name": "from-urls", "lora_prefix": "URL", "image_urls": ["https://example.com/a.jpg", "https://example.com/b.jpg"]},
        {"name": "kontext", "lora_prefix": "KTX", "option": KONTEXT, "prompt": "make it red",
         "pairs": [{"start": "pairs/car.png", "end": "pairs/car_red.png"}]},
    ]
    with sandbox(tmp_path / "sb") as url:
        write_manifest(tmp_path, n_jobs=2, url=url, jobs=extra, filename="m.yaml")
        result = runner("apply", "m.yaml", "--trace-http", "trace.jsonl", cwd=tmp_path)
        assert result.code == 0, result.stderr
        counts = ledger(url)
    path = tmp_path / "trace.jsonl"
    raw = path.read_bytes()
    assert SECRET.encode() not in raw and b"x-api-key" not in raw.lower()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    got = lines(path)
    posts = [line for line in got if line["method"] == "POST"]
    gets = [line for line in got if line["method"] == "GET" and "/finetune/" in line["url"]]
    # Besides the API's routes, apply asks a loopback endpoint whether it is a sandbox
    # (``ApiClient.is_sandbox``, no key): the sandbox's ledger does not count that one.
    others = [line["url"].removeprefix(url) for line in got if line not in posts + gets]
    assert others == ["/_sandbox/health"]
    assert len(posts) == counts["posts"] == 5  # the idempotency probe and 4 jobs
    assert len(gets) == counts["status_checks"]
    assert sum("/finetune/runner-doctor-" in line["url"] for line in gets) == 1  # the reach GET
    for line in got:
        assert line["error"] is None and line["response"]["status"] in (200, 400, 422)
        assert line["response"]["body_complete"] and line["response"]["body"]
    forms = {dict(line["request"]["form"]["fields"]).get("lora_prefix"): line["request"]["form"] for line in posts}
    assert forms["URL"]["files"] == [] and [v for k, v in forms["URL"]["fields"] if k == "image_urls"] == [
        "https://example.com/a.jpg", "https://example.com/b.jpg"]
    assert [f["filename"] for f in forms["KTX"]["files"]] == ["pair000_start_car.png", "pair000_end_car_red.png"]
    assert [f["sha256"] for f in forms["KTX"]["files"]] == [hashlib.sha256(p.read_bytes()).hexdigest() for p in pair]
    job0 = sorted((tmp_path / "data" / "job000").iterdir())
    assert forms["P000"]["files"] == [
        {"field": "image_files", "filename": p.name, "size": p.stat().st_size,
         "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in job0
    ]
    # Every trigger word the lockfile holds came back in a traced POST answer and was asked after.
    words = {e["trigger_word"] for e in lock_doc(tmp_path / "m.lock.yaml")["jobs"].values()}
    assert len(words) == 4
    for word in words:
        assert any(word in line["response"]["body"] for line in posts)
        assert any(line["url"].endswith(f"/finetune/{word}") for line in gets)


def test_runner_trace_http_in_the_environment_traces_too(tmp_path: Path) -> None:
    """``RUNNER_TRACE_HTTP`` does what the flag does (here with the embedded sandbox)."""
    write_manifest(tmp_path, n_jobs=1, url="sandbox", images_per_job=1, filename="m.yaml")
    result = runner("apply", "m.yaml", cwd=tmp_path,
                    env={"RUNNER_TRACE_HTTP": str(tmp_path / "env.jsonl"), "RUNNER_SANDBOX_TRAIN_SECONDS": "0.2"})
    assert result.code == 0, result.stderr
    got = lines(tmp_path / "env.jsonl")
    assert sum(line["method"] == "POST" for line in got) == 2  # the probe and the job
    assert any("/finetune/runner-doctor-" in line["url"] for line in got)
    assert SECRET not in (tmp_path / "env.jsonl").read_text(encoding="utf-8")
