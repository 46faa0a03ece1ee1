"""The sandbox over real loopback HTTP: uvicorn via ``start_server``, curl, restarts, webhooks
and the ``runner sandbox serve`` command."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sandbox_support import HEADERS, KEY, data, image_parts
from support.cli import error_text

from runner.sandbox.serve import RunningSandbox, start_server

REPO = Path(__file__).resolve().parents[2]


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_roundtrip_over_loopback(live: RunningSandbox) -> None:
    """POST then GET over real HTTP; result URLs use the server's own base URL and serve PNGs."""
    with httpx.Client(base_url=live.url, headers=HEADERS, timeout=10) as client:
        created = data(client.post("/finetune", files=image_parts(3), data={"lora_prefix": "LOOP"}))
        done = wait_for(
            lambda: (
                (d := data(client.get(f"/finetune/{created['trigger_word']}")))["status"]
                == "success"
                and d
            )
        )
        assert all(url.startswith(live.url + "/_sandbox/files/") for url in done["results"])
        picture = client.get(done["results"][0])
        assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")


def test_start_is_quick_and_stop_leaves_nothing(make_config: Callable[..., Any]) -> None:
    """start_server is up in well under a second and leaves no thread or listening socket behind."""
    config = make_config()
    with start_server(config):
        pass  # warm the imports, as the first use in a process would
    before = set(threading.enumerate())
    started = time.monotonic()
    with start_server(config) as running:
        assert time.monotonic() - started < 0.5
        assert httpx.get(f"{running.url}/_sandbox/health").json()["ok"] is True
        with httpx.Client(base_url=running.url, headers=HEADERS) as client:
            assert client.post("/finetune", files=image_parts(1)).status_code == 200
    wait_for(lambda: set(threading.enumerate()) <= before, timeout=5)
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", running.port), timeout=1):
        pass


def test_state_survives_a_restart(server: Callable[..., Any]) -> None:
    """Assets, ledger and idempotency records outlive the server; a training finishes meanwhile."""
    replay = HEADERS | {"Idempotency-Key": "across-restart"}
    parts = image_parts(2)
    with server(train_seconds=0.3) as first, httpx.Client(base_url=first.url, timeout=10) as client:
        created = client.post("/finetune", headers=replay, files=parts)
        assert created.status_code == 200
        trigger = data(created)["trigger_word"]
    time.sleep(0.35)
    with (
        server(train_seconds=0.3) as second,
        httpx.Client(base_url=second.url, timeout=10) as client,
    ):
        asset = data(client.get(f"/finetune/{trigger}", headers=HEADERS))
        assert asset["status"] == "success"
        assert asset["results"][0].startswith(second.url)
        again = client.post("/finetune", headers=replay, files=parts)
        assert again.content == created.content
        ledger = client.get("/_sandbox/ledger", headers=HEADERS).json()
        assert ledger["trainings"] == 1 and ledger["credits_charged"] == 1 and ledger["posts"] == 2


def test_credits_are_reset_at_start_up(server: Callable[..., Any]) -> None:
    """--credits N sets every known key's balance at each start, history kept."""
    with server(credits=1) as first, httpx.Client(base_url=first.url, headers=HEADERS) as client:
        assert client.post("/finetune", files=image_parts(1)).status_code == 200
        assert client.post("/finetune", files=image_parts(1)).status_code == 402
    with server(credits=2) as second, httpx.Client(base_url=second.url, headers=HEADERS) as client:
        assert client.post("/finetune", files=image_parts(1)).status_code == 200
        ledger = client.get("/_sandbox/ledger").json()
        assert ledger["balance"] == 1 and ledger["credits_charged"] == 2


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_multipart_as_in_the_public_docs(live: RunningSandbox, image_dir: Path) -> None:
    """curl -F image_files=@... (the documented way) starts a training and gets the envelope."""
    command = [
        "curl", "-sS", "-X", "POST", f"{live.url}/finetune",
        "-H", f"X-Api-Key: {KEY}",
        "-H", "Idempotency-Key: curl-1",
        "-F", f"image_files=@{image_dir / 'a.png'}",
        "-F", f"image_files=@{image_dir / 'b.png'}",
        "-F", f"image_files=@{image_dir / 'c.jpg'}",
        "-F", "option=FluxFinetune",
        "-F", "finetune_type=Product",
        "-F", "lora_prefix=CURL",
        "-D", str(image_dir / "headers.txt"),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    head, body = (image_dir / "headers.txt").read_text(), result.stdout
    assert head.startswith("HTTP/1.1 200")
    assert "idempotency-key: curl-1" in head.lower()
    asset = json.loads(body)["data"]
    assert asset["trigger_word"].startswith("CURL_")
    assert asset["args"]["finetune_type"] == "Product"
    assert asset["args"]["image_files"] == ["a.png", "b.png", "c.jpg"]
    status = subprocess.run(
        ["curl", "-sS", "-H", f"X-Api-Key: {KEY}", f"{live.url}/finetune/{asset['trigger_word']}"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert json.loads(status.stdout)["data"]["id"] == asset["id"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_gets_413_for_an_oversized_upload(server: Callable[..., Any], tmp_path: Path) -> None:
    """An upload above --max-upload-mb answers 413 to curl (which waits with Expect: 100-continue)."""
    big = tmp_path / "big.png"
    big.write_bytes(os.urandom(3 * 1024 * 1024))
    with server(max_upload_bytes=1024 * 1024) as running:
        result = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-H", f"X-Api-Key: {KEY}",
             "-F", f"image_files=@{big}", f"{running.url}/finetune"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert result.stdout == "413"


def test_httpx_gets_413_for_an_oversized_upload(server: Callable[..., Any]) -> None:
    """A client that sends the whole body first still reads the 413, not a reset."""
    with server(max_upload_bytes=200_000) as running:
        parts = [("image_files", ("big.png", os.urandom(600_000), "image/png"))]
        response = httpx.post(f"{running.url}/finetune", headers=HEADERS, files=parts, timeout=10)
        assert response.status_code == 413
        assert "message" in response.json()


def test_concurrent_idempotent_replays_over_loopback(live: RunningSandbox) -> None:
    """Twelve concurrent same-key POSTs over sockets: one training, one charge, same answer."""
    parts = image_parts(3)

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=live.url, timeout=20) as client:
            h = HEADERS | {"Idempotency-Key": "loopback-concurrent"}
            return await asyncio.gather(
                *(client.post("/finetune", headers=h, files=parts) for _ in range(12))
            )

    answers = asyncio.run(main())
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1
    ledger = httpx.get(f"{live.url}/_sandbox/ledger", headers=HEADERS).json()
    assert ledger["trainings"] == 1 and ledger["credits_charged"] == 1 and ledger["posts"] == 12


class Receiver:
    """A loopback webhook target that fails its first ``failures`` calls with 500."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[tuple[dict[str, str], dict[str, Any]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                owner.calls.append(
                    ({k.lower(): v for k, v in self.headers.items()}, json.loads(body))
                )
                self.send_response(500 if len(owner.calls) <= owner.failures else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"


@contextmanager
def receiver(failures: int = 0) -> Iterator[Receiver]:
    target = Receiver(failures)
    thread = threading.Thread(target=target.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield target
    finally:
        target.httpd.shutdown()
        target.httpd.server_close()
        thread.join()


def test_webhook_is_posted_on_completion(live: RunningSandbox) -> None:
    """A finished training POSTs its success envelope to a loopback webhook_url, unpolled."""
    with receiver() as hook, httpx.Client(base_url=live.url, headers=HEADERS) as client:
        created = data(
            client.post("/finetune", files=image_parts(1), data={"webhook_url": hook.url})
        )
        wait_for(lambda: hook.calls)
        headers, body = hook.calls[0]
        assert body["data"]["id"] == created["id"]
        assert body["data"]["status"] == "success"
        assert body["data"]["results"][0].startswith(live.url)
        assert headers["content-type"] == "application/json"
        asset = wait_for(
            lambda: (
                (d := data(client.get(f"/finetune/{created['id']}")))["history"][-1]["status"]
                == "webhook"
                and d
            )
        )
        assert asset["history"][-1]["message"] == "webhook delivered"


def test_webhook_retries_with_backoff(server: Callable[..., Any]) -> None:
    """A webhook answered with 500 twice is retried until it gets a 2xx, then stops."""
    with receiver(failures=2) as hook, server(train_seconds=0, webhook_backoff=0.05) as running:
        with httpx.Client(base_url=running.url, headers=HEADERS) as client:
            client.post(
                "/finetune",
                files=image_parts(1),
                data={"webhook_url": hook.url, "lora_prefix": "XFAIL"},
            )
            wait_for(lambda: len(hook.calls) >= 3)
            time.sleep(0.3)
        assert len(hook.calls) == 3
        assert [h["x-sandbox-webhook-attempt"] for h, _ in hook.calls] == ["1", "2", "3"]
        assert hook.calls[-1][1]["data"]["status"] == "fail"


def test_external_webhook_is_skipped(live: RunningSandbox) -> None:
    """Without --allow-external-webhooks an external URL is not called; the history says why."""
    with httpx.Client(base_url=live.url, headers=HEADERS) as client:
        created = data(
            client.post(
                "/finetune", files=image_parts(1), data={"webhook_url": "https://example.com/hook"}
            )
        )
        asset = wait_for(
            lambda: (
                (d := data(client.get(f"/finetune/{created['id']}")))["history"][-1]["status"]
                == "webhook"
                and d
            )
        )
        assert asset["status"] == "success"
        assert "--allow-external-webhooks" in asset["history"][-1]["message"]


# -- the command ------------------------------------------------------------------------------


def _serve(tmp_path: Path, *extra: str) -> subprocess.Popen[str]:
    env = os.environ | {"PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-m", "runner", "sandbox", "serve", "--port", "0",
         "--state-dir", str(tmp_path / "cli-state"), "--train-seconds", "0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
    )  # fmt: skip


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_serve_prints_its_url_and_stops_cleanly_on_signal(
    tmp_path: Path, sig: signal.Signals
) -> None:
    """`runner sandbox serve --port 0` prints 'sandbox listening on URL' first; SIGINT/SIGTERM exit 0."""
    proc = _serve(tmp_path, "--api-key", "cli-key")
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("sandbox listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[-1]
        response = httpx.post(
            f"{url}/finetune", headers={"X-Api-Key": "cli-key"}, files=image_parts(1)
        )
        assert response.status_code == 200
        assert (
            httpx.post(f"{url}/finetune", headers=HEADERS, files=image_parts(1)).status_code == 401
        )
        proc.send_signal(sig)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    "flags",
    [["--fault-rate", "1.5"], ["--train-seconds", "-1"], ["--fault-kinds", "500,boom"], ["--rate-limit", "0"],
     ["--credits", "-2"], ["--max-upload-mb", "0"], ["--port", "70000"], ["--bandwidth-mbps", "0"]],
)  # fmt: skip
def test_serve_rejects_bad_values_with_exit_1(tmp_path: Path, flags: list[str]) -> None:
    """Bad flag values exit 1 with an error on stderr and nothing on stdout."""
    proc = _serve(tmp_path, *flags)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert stdout == ""
    assert "must be" in error_text(stderr) or "invalid" in error_text(stderr), stderr  # a JSON error line


def test_keep_alive_answers_are_not_held_by_nagle(live: RunningSandbox) -> None:
    """Twenty requests on one connection take far less than the 20 x 40 ms a delayed ACK costs.

    The best of three rounds is measured: a delayed ACK costs every round its 0.8 s, while a
    round slowed by other processes on a loaded machine (parallel test workers) is not the
    server's doing."""
    with httpx.Client(base_url=live.url, headers=HEADERS, timeout=10) as client:
        client.post("/finetune", files=image_parts(1))
        rounds = []
        for _ in range(3):
            started = time.monotonic()
            for _ in range(10):
                client.get("/_sandbox/ledger")
                client.post("/finetune", files=image_parts(1))
            rounds.append(time.monotonic() - started)
        assert min(rounds) < 0.4, rounds


def test_error_answers_over_loopback(server: Callable[..., Any]) -> None:
    """Over real HTTP: 401, 400 (Kontext), 422 (detail shape), 400 (other key), 402, with echo."""
    with server(credits=1) as running, httpx.Client(base_url=running.url, timeout=10) as client:
        echo = {"Idempotency-Key": "loop-errors"}
        assert client.post("/finetune", headers=echo, files=image_parts(1)).status_code == 401
        kontext = client.post(
            "/finetune", headers=HEADERS | echo, files=image_parts(3),
            data={"option": "FluxKontextFinetune", "prompt": "edit"},
        )  # fmt: skip
        assert kontext.status_code == 400 and "message" in kontext.json()
        assert kontext.headers["idempotency-key"] == "loop-errors"
        invalid = client.post(
            "/finetune", headers=HEADERS, files=image_parts(1), data={"num_iterations": "x"}
        )
        assert invalid.status_code == 422 and invalid.json()["detail"][0]["loc"] == [
            "body",
            "num_iterations",
        ]
        created = data(client.post("/finetune", headers=HEADERS, files=image_parts(1)))
        other = {"X-Api-Key": "someone-else"}
        assert client.get(f"/finetune/{created['trigger_word']}", headers=other).status_code == 400
        spent = client.post("/finetune", headers=HEADERS | echo, files=image_parts(1))
        assert spent.status_code == 402 and "message" in spent.json()
        assert spent.headers["idempotency-key"] == "loop-errors"


def test_rate_limit_over_loopback(server: Callable[..., Any]) -> None:
    """Over real HTTP a burst above --rate-limit gets 429 with an integer Retry-After >= 1."""
    with (
        server(rate_limit=2.0) as running,
        httpx.Client(base_url=running.url, headers=HEADERS) as client,
    ):
        codes = [client.get("/finetune/none_x").status_code for _ in range(5)]
        assert codes[:2] == [400, 400] and 429 in codes
        limited = client.get("/finetune/none_x")
        assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
