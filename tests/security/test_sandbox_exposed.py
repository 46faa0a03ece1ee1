"""Issue 12, item 8: ``runner sandbox serve --host 0.0.0.0`` accepted any key without a
warning, had no quota on trainings or stored uploads, and its loopback-only webhooks became
a way to reach the host's own services.

As an attacker on the network would: start the real CLI bound to 0.0.0.0 and see it refuse
without ``--api-key``; with a key, ask for webhooks to loopback, private and metadata
addresses (a recorder on loopback proves nothing arrives); spend a key's quota, alone and
with concurrent requests, and see 402 (the documented "this key cannot pay for more",
which ``runner apply`` answers by stopping submissions and exiting 4).
"""

from __future__ import annotations

import json
import os
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

import anyio
import httpx
import pytest
import yaml
from support.cli import error_text, run_runner
from support.manifests import write_manifest
from support.paths import REPO_ROOT

from runner.errors import UsageError
from runner.sandbox.app import create_app
from runner.sandbox.config import SandboxConfig
from runner.sandbox.serve import is_loopback_host, start_server
from runner.sandbox.store import Store
from runner.sandbox.webhooks import WebhookSender, is_public_address

KEY = "exposed-key-1"
OTHER = "exposed-key-2"


def _png(seed: int, size: int = 48) -> bytes:
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.new("RGB", (size, size), (seed % 256, 90, 160)).save(out, format="PNG")
    return out.getvalue()


def _files(seed: int, count: int = 1) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("image_files", (f"i{seed}_{n}.png", _png(seed * 7 + n), "image/png")) for n in range(count)]


def _huge_png(side: int) -> bytes:
    """A valid side x side RGB PNG of zeros: tiny on disk, side * side * 3 bytes decoded."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    packer = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * side)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


# -- a recorder on loopback: what a webhook would reach ----------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[str] = []
        self.hosts: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                owner.calls.append(f"{self.command} {self.path}")
                owner.hosts.append(self.headers.get("Host", ""))
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_POST = _any

            def log_message(self, *_args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]


@contextmanager
def recorder() -> Iterator[Recorder]:
    target = Recorder()
    thread = threading.Thread(target=target.httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield target
    finally:
        target.httpd.shutdown()
        target.httpd.server_close()


def wait_for(predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


# -- the real command ------------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ, NO_COLOR="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


@contextmanager
def serve(tmp_path: Path, *flags: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``runner sandbox serve --port 0 FLAGS``: yields (a loopback URL to it, the process)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "sandbox", "serve", "--port", "0",
         "--state-dir", str(tmp_path / "state"), "--train-seconds", "0", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=tmp_path,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("sandbox listening on http://"), proc.stderr.read() if proc.stderr else line
        port = int(line.rsplit(":", 1)[-1])
        yield f"http://127.0.0.1:{port}", proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "sandbox.example.com"])
def test_binding_beyond_loopback_without_a_key_refuses_to_start(tmp_path: Path, host: str) -> None:
    """Exit 1 with a message naming --api-key, before anything listens or is created."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "runner", "sandbox", "serve", "--host", host, "--port", "0",
         "--state-dir", str(tmp_path / "state")],
        capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stdout == ""
    assert "--api-key" in result.stderr and f"--host {host}" in result.stderr
    assert not (tmp_path / "state").exists()
    assert time.monotonic() - started < 15


def test_start_server_refuses_too(tmp_path: Path) -> None:
    """The programmatic way in has the same rule; loopback names still need no key."""
    with pytest.raises(UsageError, match="--api-key"), start_server(
        SandboxConfig(state_dir=tmp_path / "s"), host="0.0.0.0"
    ):
        pass
    assert all(is_loopback_host(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost"))
    assert not any(is_loopback_host(h) for h in ("0.0.0.0", "::", "10.0.0.1", "a.localhost", "example.com"))
    with start_server(SandboxConfig(state_dir=tmp_path / "s"), host="localhost") as running:
        assert not running.config.exposed


def test_exposed_sandbox_accepts_only_its_keys_and_says_so(tmp_path: Path) -> None:
    with serve(tmp_path, "--host", "0.0.0.0", "--api-key", KEY) as (url, proc):
        with httpx.Client(base_url=url, timeout=10) as client:
            assert client.post("/finetune", files=_files(1), headers={"X-Api-Key": KEY}).status_code == 200
            assert client.post("/finetune", files=_files(2), headers={"X-Api-Key": OTHER}).status_code == 401
            assert client.get("/finetune/X_abcdef").status_code == 401
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert proc.stderr is not None
        assert "listening beyond loopback" in proc.stderr.read()


# -- webhooks ------------------------------------------------------------------------------------


def _webhook_note(client: httpx.Client, ident: str) -> str:
    def note() -> str | None:
        history = client.get(f"/finetune/{ident}").json()["data"]["history"]
        return history[-1]["message"] if history[-1]["status"] == "webhook" else None

    return str(wait_for(note))


@pytest.mark.parametrize("allow_external", [False, True])
def test_exposed_sandbox_never_calls_loopback_or_private_webhooks(tmp_path: Path, allow_external: bool) -> None:
    """Bound to 0.0.0.0 with a key: webhooks to this machine (every spelling) and to private
    and metadata addresses are refused and recorded as such, with or without
    --allow-external-webhooks; the recorder on loopback gets nothing. Control: the same
    webhook from a loopback-bound sandbox does arrive."""
    flags = ["--host", "0.0.0.0", "--api-key", KEY] + (["--allow-external-webhooks"] if allow_external else [])
    with recorder() as rec, serve(tmp_path, *flags) as (url, _proc):
        targets = [
            f"http://127.0.0.1:{rec.port}/hook",
            f"http://localhost:{rec.port}/hook",
            f"http://[::1]:{rec.port}/hook",
            f"http://0.0.0.0:{rec.port}/hook",  # reaches loopback on Linux
            f"http://[::ffff:127.0.0.1]:{rec.port}/hook",
            f"http://127.1:{rec.port}/hook",
            "http://10.0.0.1/hook",
            "http://192.168.0.1/hook",
            "http://169.254.169.254/latest/meta-data/",
        ]
        with httpx.Client(base_url=url, headers={"X-Api-Key": KEY}, timeout=10) as client:
            ids = []
            for n, target in enumerate(targets):
                answer = client.post("/finetune", files=_files(n), data={"webhook_url": target})
                assert answer.status_code == 200, answer.text
                ids.append(answer.json()["data"]["id"])
            notes = [_webhook_note(client, ident) for ident in ids]
        time.sleep(0.5)  # a late delivery would show up here
        assert rec.calls == []
        for note in notes:
            assert "never calls loopback or private addresses" in note
    with recorder() as rec, start_server(SandboxConfig(state_dir=tmp_path / "lo", train_seconds=0)) as running:
        with httpx.Client(base_url=running.url, headers={"X-Api-Key": KEY}, timeout=10) as client:
            ident = client.post(
                "/finetune", files=_files(99), data={"webhook_url": f"http://127.0.0.1:{rec.port}/hook"}
            ).json()["data"]["id"]
            assert _webhook_note(client, ident) == "webhook delivered"
        assert rec.calls == ["POST /hook"]


def test_public_addresses_only() -> None:
    for address in ("127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
                    "0.0.0.0", "224.0.0.1", "255.255.255.255", "::1", "::", "fc00::1", "fe80::1%eth0",
                    "::ffff:10.0.0.1", "::ffff:127.0.0.1", "2001:db8::1", "not an address"):
        assert not is_public_address(address), address
    for address in ("93.184.215.14", "8.8.8.8", "2001:4860:4860::8888", "::ffff:8.8.8.8"):
        assert is_public_address(address), address


def test_exposed_webhooks_are_pinned_to_the_address_that_was_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name whose every address is public is called at that address (Host and SNI keep
    the name), so a second DNS answer cannot point the request back inside; a name with
    one private address among public ones is refused."""
    answers = {
        "hooks.example.com": ["93.184.215.14"],
        "mixed.example.com": ["93.184.215.14", "10.0.0.7"],
        "inside.example.com": ["127.0.0.1"],
    }

    def fake_getaddrinfo(host: str, port: Any, *args: Any) -> list[Any]:
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "unknown")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    config = SandboxConfig(state_dir=tmp_path, api_keys=(KEY,), exposed=True, allow_external_webhooks=True)
    store = Store(tmp_path / "db.sqlite3")
    sender = WebhookSender(store, config, time.time)

    async def main() -> list[Any]:
        return [
            await sender._route(url)
            for url in ("http://hooks.example.com:8080/x?y=1", "https://hooks.example.com/x",
                        "http://mixed.example.com/x", "http://inside.example.com/x", "http://nowhere.example/x")
        ]

    try:
        plain, tls, mixed, inside, nowhere = anyio.run(main)
    finally:
        store.close()
    assert plain == (None, "http://93.184.215.14:8080/x?y=1", {"headers": {"host": "hooks.example.com:8080"}})
    assert tls[1] == "https://93.184.215.14/x"
    assert tls[2] == {"headers": {"host": "hooks.example.com"}, "extensions": {"sni_hostname": "hooks.example.com"}}
    for refused in (mixed, inside, nowhere):
        assert refused[0] and "never calls loopback or private addresses" in refused[0]


def test_a_pinned_webhook_is_delivered_with_its_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """End to end through the pinning: an exposed sandbox (here on loopback, marked exposed)
    resolves hooks.test once, checks the address (this test calls 127.0.0.1 public), and
    POSTs to that address with ``Host: hooks.test:PORT``."""
    import runner.sandbox.webhooks as webhooks

    real = socket.getaddrinfo

    def fake_getaddrinfo(host: str, *args: Any, **kwargs: Any) -> Any:
        return real("127.0.0.1" if host == "hooks.test" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    monkeypatch.setattr(webhooks, "is_public_address", lambda address: address == "127.0.0.1")
    config = SandboxConfig(state_dir=tmp_path / "s", train_seconds=0, api_keys=(KEY,), exposed=True,
                           allow_external_webhooks=True)
    with (
        recorder() as rec,
        start_server(config) as running,
        httpx.Client(base_url=running.url, headers={"X-Api-Key": KEY}, timeout=10) as client,
    ):
        ident = client.post(
            "/finetune", files=_files(7), data={"webhook_url": f"http://hooks.test:{rec.port}/hook"}
        ).json()["data"]["id"]
        assert _webhook_note(client, ident) == "webhook delivered"
    assert rec.calls == ["POST /hook"] and rec.hosts == [f"hooks.test:{rec.port}"]


# -- quotas ----------------------------------------------------------------------------------------


@pytest.fixture
def quota_app(tmp_path: Path) -> Iterator[Callable[..., httpx.AsyncClient]]:
    apps: list[Any] = []

    def make(**overrides: Any) -> httpx.AsyncClient:
        config = SandboxConfig(state_dir=tmp_path / "state", train_seconds=0, **overrides)
        app = create_app(config)
        apps.append(app)
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sandbox.test")

    yield make
    for app in apps:
        app.state.sandbox.close()


@pytest.mark.anyio
async def test_training_quota_per_key_is_402(quota_app: Callable[..., httpx.AsyncClient], tmp_path: Path) -> None:
    """Two trainings per key: the third is 402 with the reason, nothing stored for it; another
    key is untouched; a replay of an earlier request still gets its 200 (it trains nothing)."""
    async with quota_app(max_trainings_per_key=2) as client:
        a = {"X-Api-Key": KEY}
        first = await client.post("/finetune", files=_files(1), headers=a | {"Idempotency-Key": "k1"})
        assert first.status_code == 200
        assert (await client.post("/finetune", files=_files(2), headers=a)).status_code == 200
        uploads = sorted((tmp_path / "state" / "uploads").iterdir())
        third = await client.post("/finetune", files=_files(3), headers=a)
        assert third.status_code == 402
        assert "--max-trainings-per-key" in third.json()["message"]
        assert sorted((tmp_path / "state" / "uploads").iterdir()) == uploads
        replay = await client.post("/finetune", files=_files(1), headers=a | {"Idempotency-Key": "k1"})
        assert replay.status_code == 200 and replay.content == first.content
        # Spent: refused before the body is parsed (or spooled to disk): a body that is no
        # multipart at all gets the 402, not the 422 a parse would give.
        early = await client.post(
            "/finetune", content=b"x" * 100_000, headers=a | {"content-type": "multipart/form-data; boundary=b"}
        )
        assert early.status_code == 402 and "--max-trainings-per-key" in early.json()["message"]
        parsed = await client.post(
            "/finetune", content=b"x" * 100_000,
            headers={"X-Api-Key": OTHER, "content-type": "multipart/form-data; boundary=b"},
        )
        assert parsed.status_code in (400, 422)  # control: with quota left, it is parsed
        assert (await client.post("/finetune", files=_files(4), headers={"X-Api-Key": OTHER})).status_code == 200
        ledger = (await client.get("/_sandbox/ledger", headers=a)).json()
        assert ledger["trainings"] == 2 and ledger["credits_charged"] == 2


@pytest.mark.anyio
async def test_stored_bytes_quota_per_key_is_402(quota_app: Callable[..., httpx.AsyncClient]) -> None:
    """Uploads count against --max-stored-mb-per-key; a URL-only training stores nothing."""
    size = len(_png(1, 200))
    async with quota_app(max_stored_bytes_per_key=int(size * 2.5)) as client:
        a = {"X-Api-Key": KEY}

        def big(seed: int) -> list[Any]:
            return [("image_files", (f"b{seed}.png", _png(seed, 200), "image/png"))]

        assert (await client.post("/finetune", files=big(1), headers=a)).status_code == 200
        assert (await client.post("/finetune", files=big(2), headers=a)).status_code == 200
        refused = await client.post("/finetune", files=big(3), headers=a)
        assert refused.status_code == 402
        assert "--max-stored-mb-per-key" in refused.json()["message"]
        urls = await client.post("/finetune", data={"image_urls": ["https://example.com/a.png"]}, headers=a)
        assert urls.status_code == 200


@pytest.mark.anyio
async def test_concurrent_requests_cannot_exceed_the_quota(quota_app: Callable[..., httpx.AsyncClient]) -> None:
    """Eight POSTs at once against a quota of two: exactly two trainings."""
    async with quota_app(max_trainings_per_key=2) as client:
        codes: list[int] = []

        async def post(n: int) -> None:
            codes.append((await client.post("/finetune", files=_files(n), headers={"X-Api-Key": KEY})).status_code)

        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(post, n)
        assert sorted(codes) == [200, 200] + [402] * 6
        assert (await client.get("/_sandbox/ledger", headers={"X-Api-Key": KEY})).json()["trainings"] == 2


def test_quota_defaults_apply_beyond_loopback(tmp_path: Path) -> None:
    """Exposed: 1000 trainings and 1024 MB per key unless told otherwise. On loopback (one
    user; benchmarks apply 10,000 jobs) none unless asked for."""
    from runner.cli import build_parser
    from runner.sandbox.serve import config_from_args

    def config(*flags: str) -> SandboxConfig:
        args = build_parser().parse_args(["sandbox", "serve", "--state-dir", str(tmp_path / "s"), *flags])
        return config_from_args(args)

    loopback = config()
    assert loopback.max_trainings_per_key is None and loopback.max_stored_bytes_per_key is None
    exposed = config("--host", "0.0.0.0", "--api-key", KEY)
    assert exposed.exposed and exposed.max_trainings_per_key == 1000
    assert exposed.max_stored_bytes_per_key == 1024 * 1024 * 1024
    chosen = config("--max-trainings-per-key", "5", "--max-stored-mb-per-key", "0.5")
    assert chosen.max_trainings_per_key == 5 and chosen.max_stored_bytes_per_key == 512 * 1024
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("flags", [["--max-trainings-per-key", "0"], ["--max-stored-mb-per-key", "0"],
                                   ["--max-stored-mb-per-key", "nan"]])
def test_bad_quota_values_exit_1(tmp_path: Path, flags: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "runner", "sandbox", "serve", "--port", "0", "--state-dir", str(tmp_path / "s"), *flags],
        capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1 and error_text(result.stderr) and result.stdout == ""


def test_apply_against_a_spent_quota_stops_and_exits_4(tmp_path: Path) -> None:
    """Why 402: runner reads it as "no new submissions, follow the rest" (DESIGN section 6),
    so three jobs against --max-trainings-per-key 2 end with two trainings and exit 4, not a
    retry loop (429) nor a refused key (403)."""
    with serve(tmp_path, "--api-key", KEY, "--max-trainings-per-key", "2") as (url, _proc):
        manifest = write_manifest(
            tmp_path / "project",
            jobs=[{"name": f"j{n}", "lora_prefix": f"J{n}"} for n in range(3)],
            api={"endpoint": url, "poll_interval": "100ms", "max_uploads": 1},
        )
        env = _env() | {"VIMMERSE_API_KEY": KEY}
        env.pop("RUNNER_ENDPOINT", None)
        result = run_runner("-q", "apply", str(manifest), env=env, timeout=120)
        ledger = httpx.get(f"{url}/_sandbox/ledger", headers={"X-Api-Key": KEY}).json()
    assert result.code == 4, result.stderr
    assert ledger["trainings"] == 2 and ledger["credits_charged"] == 2
    lock = yaml.safe_load((tmp_path / "project" / "manifest.lock.yaml").read_text(encoding="utf-8"))
    statuses = sorted(entry["status"] for entry in lock["jobs"].values())
    assert statuses.count("succeeded") == 2, json.dumps(lock, indent=1)


@pytest.mark.anyio
async def test_a_pixel_bomb_upload_cannot_blow_up_sample_rendering(
    quota_app: Callable[..., httpx.AsyncClient], tmp_path: Path
) -> None:
    """Anyone with a key of an exposed sandbox can upload a 13000x13000 PNG (~500 KB) and ask
    for its sample: the tile is refused from its header (grey) instead of decoded."""
    bomb = _huge_png(13_000)
    async with quota_app() as client:
        a = {"X-Api-Key": KEY}
        created = await client.post(
            "/finetune",
            files=[("image_files", ("huge.png", bomb, "image/png")), *_files(5)],
            headers=a,
        )
        assert created.status_code == 200, created.text
        ident = created.json()["data"]["id"]
        started = time.monotonic()
        sample = await client.get(f"/_sandbox/files/{ident}/sample_0.png")
        took = time.monotonic() - started
    assert sample.status_code == 200
    from io import BytesIO

    from PIL import Image

    with Image.open(BytesIO(sample.content)) as image:
        grey = image.convert("RGB").getpixel((80, 56 + 80))  # the middle of the first tile
    assert grey == (90, 90, 90)
    assert took < 5
