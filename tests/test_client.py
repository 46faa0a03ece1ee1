"""The API client's retry rules and transport errors, through httpx.MockTransport and real
sockets.

MockTransport stands for answers the sandbox does not give (a 504 with no key echoed, a
status answer that is a 400); reading answers is tests/test_wire.py's, and the real
sandbox is exercised end to end elsewhere.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import httpx
import pytest
from PIL import Image

from runner.api import wire
from runner.api.client import ApiClient, RetryPolicy, idempotency_key
from runner.api.ratelimit import TokenBucket
from runner.errors import ApiError, InsufficientCredit, Uncertain, Unreachable
from runner.models import Job

FAST = RetryPolicy(attempts=4, timeout=10, wait_initial=0.01, wait_max=0.02, wait_jitter=0.0)


def run_client(handler, fn):  # type: ignore[no-untyped-def]
    async def main():  # type: ignore[no-untyped-def]
        async with ApiClient("http://api.test", "k-123", TokenBucket(None), transport=httpx.MockTransport(handler), retry=FAST) as client:
            return await fn(client)

    return anyio.run(main)


@pytest.fixture()
def job(tmp_path: Path) -> Job:
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8), "red").save(path)
    return Job(name="a", lora_prefix="SNKR", images=(path,))


def test_submit_sends_key_and_reads_trigger_word_from_args(job: Job) -> None:
    """X-Api-Key and Idempotency-Key go out; the trigger word may sit in data.args."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"data": {"id": "as1", "args": {"trigger_word": "SNKR_x1"}}})

    result = run_client(handler, lambda c: c.submit(job, "key-1"))
    assert result.trigger_word == "SNKR_x1" and result.asset_id == "as1"
    assert seen[0].headers["X-Api-Key"] == "k-123"
    assert seen[0].headers["Idempotency-Key"] == "key-1"
    body = seen[0].read()
    assert b'name="image_files"; filename="a.png"' in body
    assert b'name="lora_prefix"' in body


def test_429_is_retried_and_pauses_the_bucket(job: Job) -> None:
    """A 429 with Retry-After is retried after the pause; the job then succeeds."""
    answers = [httpx.Response(429, headers={"Retry-After": "0"}, json={"message": "slow"}),
               httpx.Response(200, json={"data": {"id": "1", "trigger_word": "T_1"}})]
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return answers.pop(0)

    assert run_client(handler, lambda c: c.submit(job, "k")).trigger_word == "T_1"
    assert len(calls) == 2


def test_lost_answer_is_uncertain_unless_keys_are_honoured(job: Job) -> None:
    """A read error after sending is Uncertain; with an echoing API it is replayed instead."""
    def lost(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("lost", request=request)

    with pytest.raises(Uncertain):
        run_client(lost, lambda c: c.submit(job, "k"))

    state = {"n": 0}

    def flaky(request: httpx.Request) -> httpx.Response:
        state["n"] += 1
        if state["n"] == 2:
            raise httpx.ReadTimeout("lost", request=request)
        key = request.headers.get("Idempotency-Key", "")
        return httpx.Response(200, headers={"Idempotency-Key": key}, json={"data": {"id": "1", "trigger_word": "T"}})

    async def twice(c):  # type: ignore[no-untyped-def]
        await c.submit(job, "k1")  # learns that keys are echoed
        return await c.submit(job, "k2")

    assert run_client(flaky, twice).trigger_word == "T"
    assert state["n"] == 3


def test_error_answers_map_to_errors(job: Job) -> None:
    """402 -> InsufficientCredit; 422 detail is summarised; 401 keeps its status."""
    with pytest.raises(InsufficientCredit):
        run_client(lambda r: httpx.Response(402, json={"message": "no credit"}), lambda c: c.submit(job, "k"))
    detail = {"detail": [{"loc": ["body", "option"], "msg": "bad option", "type": "x"}]}
    with pytest.raises(ApiError, match="option: bad option") as info:
        run_client(lambda r: httpx.Response(422, json=detail), lambda c: c.submit(job, "k"))
    assert info.value.status == 422
    with pytest.raises(ApiError) as info:
        run_client(lambda r: httpx.Response(401, json={"message": "no"}), lambda c: c.status("T"))
    assert info.value.status == 401


def test_probe_learns_echo() -> None:
    """The free probe POST tells whether the API echoes Idempotency-Key."""
    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, headers={"Idempotency-Key": request.headers["Idempotency-Key"]}, json={"detail": []})

    assert run_client(echo, lambda c: c.probe_idempotency()) is True
    assert run_client(lambda r: httpx.Response(422, json={"detail": []}), lambda c: c.probe_idempotency()) is False


def test_idempotency_key_depends_on_fingerprint_and_attempt() -> None:
    """Same inputs and attempt -> same key; a new attempt -> a new key."""
    fp = "sha256:" + "0" * 64
    assert idempotency_key(fp, 1) == idempotency_key(fp, 1)
    assert idempotency_key(fp, 1) != idempotency_key(fp, 2)


def test_https_endpoints_still_verify_certificates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The CA bundle is skipped for http endpoints only: a self-signed https server is refused
    by the client (its handshake never completes), never talked to."""
    for proxy in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(proxy, raising=False)  # straight to the loopback server
    import shutil
    import socket
    import ssl
    import subprocess
    import threading

    openssl = shutil.which("openssl")
    assert openssl, "the test needs the openssl command to make a self-signed certificate"
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    seen: list[str] = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with context.wrap_socket(conn, server_side=True):
                seen.append("handshake completed")
        except (ssl.SSLError, OSError) as exc:
            seen.append(str(exc))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    async def main() -> None:
        once = RetryPolicy(attempts=1, timeout=10, wait_initial=0.01, wait_max=0.01, wait_jitter=0.0)
        async with ApiClient(f"https://127.0.0.1:{port}", "k-123", TokenBucket(None), retry=once) as client:
            await client.status("X_1")

    try:
        with pytest.raises(ApiError, match=r"certificate of 127\.0\.0\.1") as info:
            anyio.run(main)
        thread.join(10)
    finally:
        listener.close()
    assert seen and seen[0] != "handshake completed", seen
    assert "CERTIFICATE_VERIFY_FAILED" in str(info.value.__cause__), repr(info.value.__cause__)


def test_a_5xx_to_a_post_is_uncertain_and_never_retried_without_echo(job: Job) -> None:
    """504 after the request was sent may have started a paid training: one POST, Uncertain."""
    calls: list[int] = []

    def gateway(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(504, text="<html>Gateway Timeout</html>")

    with pytest.raises(Uncertain) as info:
        run_client(gateway, lambda c: c.submit(job, "k"))
    assert len(calls) == 1 and info.value.status == 504
    assert info.value.answer == "<html>Gateway Timeout</html>"


def test_a_5xx_is_replayed_under_the_same_key_where_keys_are_echoed(job: Job) -> None:
    """With an API that echoes the key, a 504 is replayed under that same key until a 200."""
    keys: list[str] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        key = request.headers.get("Idempotency-Key", "")
        keys.append(key)
        if len(keys) < 4:
            return httpx.Response(504, headers={"Idempotency-Key": key}, json={"message": "gw"})
        return httpx.Response(200, headers={"Idempotency-Key": key}, json={"data": {"trigger_word": "SNKR_1"}})

    assert run_client(flaky, lambda c: c.submit(job, "key-A")).trigger_word == "SNKR_1"
    assert keys == ["key-A"] * 4


def test_replays_end_when_the_job_time_runs_out(job: Job) -> None:
    """Replays go on with backoff but stop at replay_for: then the job is Uncertain."""
    def always(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, headers={"Idempotency-Key": request.headers["Idempotency-Key"]})

    async def go(c: ApiClient) -> object:
        c.honours_idempotency = True
        return await c.submit(job, "k", replay_for=1.0)

    with pytest.raises(Uncertain, match="replayed"):
        run_client(always, go)


def test_status_4xx_is_unreadable_and_5xx_is_retried() -> None:
    """A 400 to a status request is an answer we do not understand; a 503 is asked again."""
    got = run_client(lambda r: httpx.Response(400, json={"message": "unknown"}), lambda c: c.status("T_1"))
    assert isinstance(got, wire.Unreadable) and got.status == 400 and "unknown" in got.reason
    answers = [httpx.Response(503), httpx.Response(200, json={"data": []})]
    got = run_client(lambda r: answers.pop(0), lambda c: c.status("T_1"))
    assert isinstance(got, wire.Status) and got.state == "running"


def test_status_path_quotes_the_trigger_word() -> None:
    """A trigger word is one path segment, whatever it holds."""
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.raw_path.decode())
        return httpx.Response(200, json={"data": []})

    run_client(handler, lambda c: c.status("A B?x"))
    assert seen == ["/finetune/A%20B%3Fx"]


def test_url_only_jobs_are_sent_as_multipart() -> None:
    """Every job POST is multipart/form-data, also without files."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"data": {"trigger_word": "W_1"}})

    job = Job(name="u", lora_prefix="W", image_urls=("https://e/a.jpg", "https://e/b.jpg"))
    run_client(handler, lambda c: c.submit(job, "k"))
    assert seen[0].headers["content-type"].startswith("multipart/form-data")
    body = seen[0].read()
    assert body.count(b'name="image_urls"') == 2 and b"https://e/b.jpg" in body


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("closed-port", "refused the connection"),
        ("https://runner-test.invalid", "cannot resolve the host name runner-test.invalid"),
    ],
)
def test_reach_names_the_host_and_the_cause(url: str, words: str) -> None:
    """An endpoint that cannot be reached is one Unreachable naming host and cause, fast."""
    import socket
    import time

    # A port bound but not listening refuses connections; held for the whole test, so no
    # other test (or xdist worker) can start a server on it meanwhile. Chosen here, not at
    # collection: every xdist worker must collect the same test ids.
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    if url == "closed-port":
        url = f"http://127.0.0.1:{closed.getsockname()[1]}"

    async def main() -> None:
        async with ApiClient(url, "k-123", TokenBucket(None)) as client:
            await client.reach(budget=3.0)

    started = time.monotonic()
    with pytest.raises(Unreachable) as info:
        anyio.run(main)
    closed.close()
    assert words in info.value.message and "k-123" not in info.value.message
    assert time.monotonic() - started < 10
