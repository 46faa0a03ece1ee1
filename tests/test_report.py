"""``runner report``: the self-contained HTML gallery, in unit tests and in real Chromium.

The browser test opens the report in Debian's headless Chromium through the DevTools
protocol (over ``--remote-debugging-pipe``, so no websocket library), checks the cards,
the copy button and the filter, saves a screenshot under ``tmp_path``, and asserts that
the page made no network request: once as written (its CSP reports no violation) and once
with the CSP removed (so nothing in the page even tries). Negative controls show both
detectors fire. In CI a missing Chromium fails; elsewhere the test skips and says why.
"""

from __future__ import annotations

import base64
import http.server
import json
import os
import queue
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support.cli import run_runner
from support.images import make_image
from support.manifests import write_manifest

from runner.views.report.cards import Card, Sample, Section, cards_for
from runner.views.report.fetch import Fetcher, TooLarge, embed, load_sample
from runner.views.report.page import CSP, SCRIPT, STYLE, explain, render_html
from runner.views.report.policy import FetchPolicy, normalize_allowed_host, site_of

# -- a minimal DevTools client ----------------------------------------------------------------

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class CdpError(RuntimeError):
    """The browser answered a command with an error, or did not answer in time."""


class Browser:
    """One headless Chromium process; ``session`` commands go to the page we opened."""

    def __init__(self, executable: str, profile: Path, width: int = 1280, height: int = 1400) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def wire_fds() -> None:  # in the child, before exec: the protocol's fd 3 and 4
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        args = [
            executable,
            "--headless",
            "--remote-debugging-pipe",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--mute-audio",
            "about:blank",
        ]
        if os.geteuid() == 0:  # Chromium's sandbox refuses to run as root
            args.insert(1, "--no-sandbox")
        self.proc = subprocess.Popen(
            args,
            preexec_fn=wire_fds,  # the child is single-threaded until exec
            close_fds=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._next_id = 0
        self._answers: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self.events: list[dict[str, Any]] = []
        self._event_added = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.session = ""

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_browser, 1 << 20)
            except OSError:
                return
            if not chunk:
                return
            buffer += chunk
            while b"\0" in buffer:
                raw, buffer = buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "id" in message:
                    with self._lock:
                        waiter = self._answers.get(message["id"])
                    if waiter is not None:
                        waiter.put(message)
                else:
                    with self._event_added:
                        self.events.append(message)
                        self._event_added.notify_all()

    def send(self, method: str, params: dict[str, Any] | None = None, *, page: bool = True, timeout: float = 15) -> Any:
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            waiter: queue.Queue[dict[str, Any]] = queue.Queue()
            self._answers[ident] = waiter
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if page and self.session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        try:
            answer = waiter.get(timeout=timeout)
        except queue.Empty:
            raise CdpError(f"{method}: no answer in {timeout} s") from None
        finally:
            with self._lock:
                self._answers.pop(ident, None)
        if "error" in answer:
            raise CdpError(f"{method}: {answer['error']}")
        return answer.get("result", {})

    def open_page(self) -> None:
        """A fresh tab, attached in flat mode, with the domains the test listens to."""
        target = self.send("Target.createTarget", {"url": "about:blank"}, page=False)["targetId"]
        self.session = self.send(
            "Target.attachToTarget", {"targetId": target, "flatten": True}, page=False
        )["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            self.send(f"{domain}.enable")

    def wait_event(self, method: str, since: int, timeout: float = 15) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        with self._event_added:
            while True:
                for event in self.events[since:]:
                    if event.get("method") == method and event.get("sessionId") == self.session:
                        return event
                left = deadline - time.monotonic()
                if left <= 0:
                    raise CdpError(f"no {method} in {timeout} s")
                self._event_added.wait(left)

    def navigate(self, url: str) -> int:
        """Load ``url`` and wait for its load event; returns where its events start."""
        start = len(self.events)
        self.send("Page.navigate", {"url": url})
        self.wait_event("Page.loadEventFired", start)
        return start

    def requests_since(self, start: int) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events[start:]
            if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == self.session
        ]

    def evaluate(self, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True, "userGesture": True},
        )
        if "exceptionDetails" in result:
            raise CdpError(f"script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def close(self) -> None:
        with suppress(CdpError, OSError):
            self.send("Browser.close", page=False, timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to_browser, self._from_browser):
            with suppress(OSError):
                os.close(fd)


# -- unit tests (no browser) ------------------------------------------------------------------


def _png(size: tuple[int, int] = (800, 600), color: tuple[int, int, int] = (10, 120, 200)) -> bytes:
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


@contextmanager
def _serve_png(data: bytes) -> Iterator[str]:
    """A loopback HTTP server answering /ok.png with ``data`` and 404 otherwise."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/ok.png":
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
            else:
                self.send_error(404)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _dead_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


LIVE = FetchPolicy("https://api.vimmerse.net")
SANDBOX_POLICY = FetchPolicy("sandbox")


def test_fetch_rule_is_the_apis_origin_and_its_sibling_hosts() -> None:
    """https to the API's origin or a host under its parent domain (the live service's
    samples are on dev-media.vimmerse.net); nothing else, and never loopback from a remote API."""
    assert LIVE.http_refusal("https://api.vimmerse.net/x/output.png") is None
    assert LIVE.http_refusal("https://dev-media.vimmerse.net/c/ai_images/53c6eg9/output.png") is None
    assert LIVE.http_refusal("https://vimmerse.net/a.png") is None
    for url in (
        "https://cdn.example.com/a.png",
        "http://dev-media.vimmerse.net/a.png",  # plain http
        "https://dev-media.vimmerse.net:8443/a.png",  # another port
        "https://vimmerse.net.evil.com/a.png",
        "https://api.vimmerse.net@evil.com/a.png",
        "https://127.0.0.1/a.png",
        "http://127.0.0.1:8000/_sandbox/files/a/sample_0.png",
        "https://10.0.0.1/a.png",
        "file:///etc/passwd",
        "data:image/png;base64,AA==",
    ):
        assert LIVE.http_refusal(url), url
    assert not LIVE.reads_state("http://127.0.0.1:8000/_sandbox/files/a/sample_0.png")


def test_public_suffix_like_parents_are_not_sites() -> None:
    """foo.co.uk's siblings are not all of co.uk; an IP address has no siblings."""
    assert site_of("api.vimmerse.net") == "vimmerse.net"
    assert site_of("foo.co.uk") == "foo.co.uk" and site_of("api.foo.co.uk") == "foo.co.uk"
    assert site_of("10.0.0.1") is None
    policy = FetchPolicy("https://foo.co.uk")
    assert policy.http_refusal("https://bar.co.uk/a.png") and policy.http_refusal("https://img.foo.co.uk/a.png") is None
    assert FetchPolicy("https://10.0.0.1").http_refusal("https://10.0.0.2/a.png")


def test_allow_host_widens_the_rule_explicitly() -> None:
    policy = FetchPolicy("https://api.vimmerse.net", (normalize_allowed_host("*.CloudFront.net"),
                                                      normalize_allowed_host("img.example.com")))
    assert policy.http_refusal("https://d1.cloudfront.net/x.png") is None
    assert policy.http_refusal("https://img.example.com/x.png") is None
    assert policy.http_refusal("https://other.example.com/x.png")
    assert policy.http_refusal("http://img.example.com/x.png")  # still https only
    for bad in ("https://x.com", "x.com/path", "x.com:443", ""):
        with pytest.raises(ValueError):
            normalize_allowed_host(bad)


def test_sandbox_manifests_never_fetch_and_loopback_ones_only_their_origin() -> None:
    url = "http://127.0.0.1:8000/_sandbox/files/a/sample_0.png"
    assert SANDBOX_POLICY.http_refusal(url) and SANDBOX_POLICY.reads_state(url)
    assert SANDBOX_POLICY.http_refusal("https://cdn.example.com/a.png")
    local = FetchPolicy("http://127.0.0.1:8000")
    assert local.http_refusal(url) is None and local.reads_state(url)
    assert local.http_refusal(url.replace("8000", "8001"))
    assert local.http_refusal("http://127.0.0.1:8000@127.0.0.1:9/x")


def test_refused_url_sends_no_request(tmp_path: Path) -> None:
    """A URL outside the rule becomes a placeholder without any request being sent."""
    sent: list[str] = []
    with Fetcher() as fetcher:
        fetcher._client = httpx.Client(
            transport=httpx.MockTransport(lambda r: sent.append(str(r.url)) or httpx.Response(200))
        )
        for url in ("http://example.com/sample.png", "https://cdn.example.com/a.png", "http://127.0.0.1:9/x"):
            sample = load_sample(url, tmp_path, fetcher, 256, LIVE)
            assert sample.data_uri is None and "not from the API's origin" in sample.problem
    assert sent == []


def test_sample_is_fetched_from_a_loopback_api_and_resized(tmp_path: Path) -> None:
    """The manifest's own loopback origin is downloaded and embedded as a resized data: URI."""
    with _serve_png(_png((800, 600))) as base, Fetcher() as fetcher:
        policy = FetchPolicy(base)
        sample = load_sample(f"{base}/ok.png", tmp_path, fetcher, 200, policy)
        missing = load_sample(f"{base}/missing.png", tmp_path, fetcher, 200, policy)
        other = load_sample(f"{base}/ok.png", tmp_path, fetcher, 200, SANDBOX_POLICY)
    assert sample.source == "http"
    assert sample.data_uri and sample.data_uri.startswith("data:image/jpeg;base64,")
    assert (sample.width, sample.height) == (200, 150)
    assert missing.data_uri is None and missing.problem == "HTTP 404"
    assert other.data_uri is None and "not from the API's origin" in other.problem


def test_dead_sandbox_url_is_read_from_the_state_folder(tmp_path: Path) -> None:
    """A sandbox URL (its port gone) is read from .runner/sandbox/outputs/<id>/<name>."""
    state = tmp_path / ".runner" / "sandbox"
    (state / "outputs" / "abc123").mkdir(parents=True)
    (state / "outputs" / "abc123" / "sample_0.png").write_bytes(_png((300, 300)))
    url = f"http://127.0.0.1:{_dead_port()}/_sandbox/files/abc123/sample_0.png"
    with Fetcher() as fetcher:
        sample = load_sample(url, tmp_path, fetcher, 128, SANDBOX_POLICY)
        gone = load_sample(url.replace("abc123", "zzz999"), tmp_path, fetcher, 128, SANDBOX_POLICY)
    assert sample.source == "sandbox state" and sample.data_uri
    assert (sample.width, sample.height) == (128, 128)
    assert gone.data_uri is None and "not in the sandbox's state" in gone.problem


def test_sandbox_pattern_cannot_escape_the_state_folder(tmp_path: Path) -> None:
    """Path tricks in a sandbox-looking URL never read files outside the state folder."""
    (tmp_path / ".runner" / "sandbox").mkdir(parents=True)
    (tmp_path / "secret.png").write_bytes(_png((10, 10)))
    with Fetcher() as fetcher:
        for url in (
            f"http://127.0.0.1:{_dead_port()}/_sandbox/files/../../secret.png",
            f"http://127.0.0.1:{_dead_port()}/_sandbox/files/%2e%2e/secret.png",
        ):
            assert fetcher.sandbox_file(url, tmp_path)[0] is None


def test_a_huge_image_is_refused_before_decoding(tmp_path: Path) -> None:
    """The header says more than MAX_PIXELS: refused as too large, no pixel decoded (the
    file holds 64 bytes of pixel data, so decoding would fail differently)."""
    from support.images import make_bomb_png

    data = make_bomb_png(tmp_path / "bomb.png", 13_000, 13_000).read_bytes()
    with pytest.raises(TooLarge, match=r"too large \(13000x13000 pixels"):
        embed(data, 256)


def test_embed_keeps_transparency_as_png() -> None:
    """An image with alpha stays PNG (JPEG would turn transparent pixels black)."""
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(out, format="PNG")
    uri, w, h = embed(out.getvalue(), 32)
    assert uri.startswith("data:image/png;base64,") and (w, h) == (32, 32)


def test_html_escapes_messages_and_pins_its_inline_code_by_hash() -> None:
    """Server messages are escaped, and the CSP allows exactly the page's own style and script."""
    card = Card(
        "m.yaml", "evil", "failed", error={"status": 422, "message": "<script>alert(1)</script>"},
        samples=[Sample("https://x/y.png", problem="HTTP 500")],
    )
    page = render_html([Section("m.yaml", [card])], generated_at="now", version="0")
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert "Download refused" in page and "HTTP 500" in page
    for text in (STYLE, SCRIPT):
        digest = base64.b64encode(__import__("hashlib").sha256(text.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in CSP
    assert CSP.startswith("default-src 'none'; img-src data:;")
    assert len(re.findall(r"<script>", page)) == 1
    # Nothing on the page points anywhere but data: URIs and in-page anchors.
    assert not re.search(r"""(?:src|href)\s*=\s*["'](?!data:|#)""", page)


def test_report_cli_writes_an_atomic_shareable_file(tmp_path: Path) -> None:
    """runner report with no lockfile yet shows every job as not applied and exits 0."""
    manifest = write_manifest(tmp_path, jobs=[{"name": "a", "lora_prefix": "A"}])
    result = run_runner("report", str(manifest), "-o", str(tmp_path / "out" / "r.html"))
    assert result.code == 0, result.stderr
    page = (tmp_path / "out" / "r.html").read_text(encoding="utf-8")
    assert 'data-job="a"' in page and "not applied yet" in page
    assert oct((tmp_path / "out" / "r.html").stat().st_mode & 0o044) != "0o0"


def test_report_of_a_missing_manifest_exits_1(tmp_path: Path) -> None:
    """A manifest that does not exist is an input error (exit 1) and no report is written."""
    result = run_runner("report", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "r.html"))
    assert result.code == 1
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize(
    ("problem", "headline", "says"),
    [
        ("not from the API's origin", "Not downloaded", "--allow-host"),
        ("not from the API's origin (a URL with user info)", "Not downloaded", "untrusted"),
        ("timed out (still downloading after 20 s)", "Download too slow", "--image-timeout"),
        ("cdn.example.com is not reachable", "Server not reachable", "Cdn.example.com is not reachable"),
        ("HTTP 404", "Download refused", "expired"),
        ("HTTP 502", "Download refused", "Try again later"),
        ("too large (13000x13000 pixels; at most 24 megapixels)", "Too large to embed", "13000x13000"),
        ("not in the sandbox's state folder", "No longer in the sandbox", ".runner/sandbox"),
        ("the sandbox's training is failed", "Not finished in the sandbox", "training is failed"),
        ("not a readable image (UnidentifiedImageError)", "Not an image", "PNG, JPEG"),
        ("download failed (ReadError)", "Image unavailable", "Download failed (ReadError)."),
    ],
)
def test_a_missing_sample_says_why_in_words_a_user_understands(problem: str, headline: str, says: str) -> None:
    got_headline, advice = explain(problem)
    assert got_headline == headline and says in advice
    page = render_html(
        [Section("m.yaml", [Card("m.yaml", "job", "succeeded", "T1", samples=[Sample("https://x/y.png", problem=problem)])])],
        generated_at="2026-12-02T15:30:00Z",
        version="0",
    )
    assert f"<strong>{headline}</strong>" in page
    assert f'title="https://x/y.png: {problem}"'.replace("'", "&#39;") in page  # the raw reason stays at hand


def test_cards_show_what_was_trained_and_copy_only_a_usable_word() -> None:
    """lora_prefix, iterations and the Kontext prompt from the entry's inputs; Copy only when it succeeded."""
    from runner.models import LockEntry

    entries = {
        "a10": LockEntry("sha256:1", "succeeded", trigger_word="CAR_X1", option="FluxKontextFinetune",
                         inputs={"num_iterations": 300, "prompt": "turn the car red " * 40},
                         finished_at="2026-12-02T15:30:05Z"),
        "a2": LockEntry("sha256:2", "failed", trigger_word="SNKR_Q9", option="FluxFinetune",
                        inputs={"lora_prefix": "SNKR", "num_iterations": 0},
                        error={"status": "failed", "message": "training ended"}),
        "a3": LockEntry("sha256:3", "failed", option="FluxFinetune", error={"status": 422, "message": "bad"}),
    }
    cards = cards_for("m.yaml", entries, entries)
    assert [c.name for c in cards] == ["a2", "a3", "a10"]
    page = render_html([Section("m.yaml", cards)], generated_at="2026-12-02T15:30:00Z", version="0")
    articles = dict(re.findall(r'<article[^>]*data-job="([^"]+)"[^>]*>(.*?)</article>', page, re.S))
    kontext, failed, no_word = articles["a10"], articles["a2"], articles["a3"]
    assert 'data-copy="CAR_X1"' in kontext and "<dt>iterations</dt><dd>300</dd>" in kontext
    assert "<dt>prompt</dt>" in kontext and "turn the car red" in kontext and "…" in kontext
    assert '<time datetime="2026-12-02T15:30:05Z" title="2026-12-02T15:30:05Z">2 Dec 2026, 15:30 UTC</time>' in kontext
    assert "button" not in failed and "SNKR_Q9" in failed and "not usable: the training failed" in failed
    assert "<dt>lora_prefix</dt><dd>SNKR</dd>" in failed and "<dt>iterations</dt><dd>default</dd>" in failed
    assert "button" not in no_word and "no trigger word" in no_word


def test_a_job_never_applied_shows_the_manifests_values(tmp_path: Path) -> None:
    from runner.engine.pipeline import load

    manifest = load(str(write_manifest(tmp_path, jobs=[{"name": "new", "lora_prefix": "NEWP", "num_iterations": 50}])))
    (card,) = cards_for("m.yaml", ["new"], {}, {job.name: job for job in manifest.jobs})
    assert (card.status, card.lora_prefix, card.num_iterations, card.option) == ("absent", "NEWP", 50, "FluxFinetune")


# -- the browser test ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    path = find_chromium()
    if path is None:
        message = "Chromium is not installed (apt-get install chromium; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message + "; CI must run the browser test")
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A manifest applied against the embedded sandbox: 2 succeeded, 1 failed, 1 never applied.

    One result URL of ``sneaker`` is then pointed at a closed https port, so its card must
    show the placeholder. The sandbox has stopped, so every other sample comes from its
    state folder (rendered there from its database: apply never downloads samples).
    """
    tmp = tmp_path_factory.mktemp("report")
    manifest = write_manifest(
        tmp,
        jobs=[
            {"name": "sneaker", "lora_prefix": "SNKR", "finetune_type": "Product"},
            {"name": "mug", "lora_prefix": "MUG"},
            {"name": "broken", "lora_prefix": "BROKENFAIL"},
            {"name": "later", "lora_prefix": "LATER"},
            {"name": "car-red", "option": "FluxKontextFinetune", "prompt": "turn the car red",
             "num_iterations": 120, "pairs": [{"start": "pairs/c1.png", "end": "pairs/c1_red.png"}]},
        ],
        api={"endpoint": "sandbox", "poll_interval": "100ms"},
    )
    make_image(tmp / "images" / "mug" / "002.png", size=(64, 64), color=(240, 200, 10))
    make_image(tmp / "pairs" / "c1.png", size=(64, 64), color=(20, 20, 200))
    make_image(tmp / "pairs" / "c1_red.png", size=(64, 64), color=(200, 20, 20))
    env = dict(os.environ, RUNNER_SANDBOX_TRAIN_SECONDS="0.2")
    env.pop("RUNNER_ENDPOINT", None)
    targets = ["--target", "sneaker", "--target", "mug", "--target", "broken", "--target", "car-red"]
    result = run_runner("-q", "apply", str(manifest), *targets, env=env, timeout=120)
    assert result.code == 3, result.stderr  # the FAIL job failed
    lock_path = tmp / "manifest.lock.yaml"
    lock = yaml.safe_load(lock_path.read_text(encoding="utf-8"))
    jobs = lock["jobs"]
    assert jobs["sneaker"]["status"] == "succeeded" and jobs["broken"]["status"] == "failed"
    jobs["sneaker"]["results"][1] = f"https://127.0.0.1:{_dead_port()}/gone/sample_1.png"
    lock_path.write_text(
        "# Written by runner; do not edit.\n" + yaml.safe_dump(lock, sort_keys=False), encoding="utf-8"
    )
    out = tmp / "site" / "report.html"
    started = time.monotonic()
    result = run_runner("report", str(manifest), "-o", str(out), env=env)
    assert result.code == 0, result.stderr
    assert time.monotonic() - started < 20
    return {"dir": tmp, "report": out, "jobs": jobs}


def test_report_in_chromium(chromium: str, applied: dict[str, Any], tmp_path: Path) -> None:
    """Real Chromium shows every card right, runs the copy button and filter, and sends no request."""
    report: Path = applied["report"]
    jobs = applied["jobs"]
    page_html = report.read_text(encoding="utf-8")
    no_csp = tmp_path / "no-csp.html"
    no_csp.write_text(re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", page_html), encoding="utf-8")
    assert no_csp.read_text(encoding="utf-8") != page_html
    leaky = tmp_path / "leaky.html"
    leaky.write_text(
        no_csp.read_text(encoding="utf-8").replace(
            "<footer>", f'<img src="http://127.0.0.1:{_dead_port()}/leak.png"><footer>'
        ),
        encoding="utf-8",
    )
    tampered = tmp_path / "tampered.html"
    tampered.write_text(page_html.replace("var viewer", "var  viewer", 1), encoding="utf-8")

    browser = Browser(chromium, tmp_path / "profile")
    try:
        browser.open_page()
        browser.send(
            "Page.addScriptToEvaluateOnNewDocument",
            {"source": "window.__csp = []; document.addEventListener('securitypolicyviolation',"
             " function (e) { window.__csp.push(e.violatedDirective); });"},
        )
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": 1400, "height": 1400, "deviceScaleFactor": 1, "mobile": False},
        )

        start = browser.navigate(report.as_uri())
        cards = browser.evaluate(
            """Array.from(document.querySelectorAll('article.card')).map(function (c) { return {
                 name: c.dataset.job, status: c.dataset.status,
                 trigger: (c.querySelector('code.trigger') || {}).textContent || null,
                 copy: (c.querySelector('button.copy') || {}).dataset ? c.querySelector('button.copy').dataset.copy : null,
                 error: (c.querySelector('.error') || {}).textContent || null,
                 images: Array.from(c.querySelectorAll('img.sample')).map(function (i) {
                   return {ok: i.complete && i.naturalWidth > 0, src: i.src.slice(0, 15)}; }),
                 widths: Array.from(c.querySelectorAll('img.sample, .placeholder')).map(function (i) {
                   return i.getBoundingClientRect().width; }),
                 times: Array.from(c.querySelectorAll('time')).map(function (n) {
                   return {text: n.textContent, iso: n.getAttribute('datetime'), title: n.title}; }),
                 placeholders: c.querySelectorAll('.placeholder').length,
                 text: c.textContent }; })"""
        )
        by_name = {c["name"]: c for c in cards}
        assert list(by_name) == ["broken", "car-red", "later", "mug", "sneaker"]
        for name in ("sneaker", "mug"):
            card = by_name[name]
            assert card["status"] == "succeeded"
            assert card["trigger"] == card["copy"] == jobs[name]["trigger_word"]
            assert "FluxFinetune" in card["text"] and "images" in card["text"]
        assert "Product" in by_name["sneaker"]["text"] and "3" in by_name["mug"]["text"]
        assert [i["ok"] for i in by_name["mug"]["images"]] == [True, True]
        assert all(i["src"].startswith("data:image/") for i in by_name["mug"]["images"])
        assert [i["ok"] for i in by_name["sneaker"]["images"]] == [True]
        assert by_name["sneaker"]["placeholders"] == 1 and "Not downloaded" in by_name["sneaker"]["text"]
        assert "--allow-host" in by_name["sneaker"]["text"]
        # Samples large enough to judge a LoRA: at least 256 px wide on a 1400 px page.
        widths = [w for c in cards for w in c["widths"]]
        assert len(widths) >= 4 and min(widths) >= 256, widths
        # What was trained: the prefix, iterations and the Kontext prompt on the cards.
        assert "lora_prefix" in by_name["sneaker"]["text"] and "SNKR" in by_name["sneaker"]["text"]
        kontext = by_name["car-red"]
        assert kontext["status"] == "succeeded" and "turn the car red" in kontext["text"]
        assert "iterations120" in kontext["text"].replace(" ", "").replace("\n", "")
        # Readable local times, ISO in the tooltip (the script rewrote the UTC text).
        times = [tm for c in cards for tm in c["times"]]
        assert times and all(tm["title"] == tm["iso"] and tm["iso"].endswith("Z") for tm in times)
        assert all("T" not in tm["text"] and "UTC" not in tm["text"] for tm in times), times
        # No Copy button on a failed job.
        assert by_name["broken"]["copy"] is None and "not usable" in by_name["broken"]["text"]
        assert by_name["broken"]["status"] == "failed"
        assert "training ended with status fail" in by_name["broken"]["error"]
        assert by_name["later"]["status"] == "absent" and "not applied yet" in by_name["later"]["text"]

        copied = browser.evaluate(
            """new Promise(function (resolve) { var b = document.querySelector('[data-job="mug"] button.copy');
                 b.click(); setTimeout(function () { resolve(b.textContent); }, 300); })"""
        )
        assert copied in ("Copied", "Select it")  # the inline script ran under the CSP
        visible = browser.evaluate(
            """(function () { var f = document.getElementById('filter'); f.value = 'broken';
                 f.dispatchEvent(new Event('input'));
                 return document.querySelectorAll('article.card:not(.hidden)').length; })()"""
        )
        assert visible == 1
        viewer = browser.evaluate(
            """new Promise(function (resolve) { document.querySelector('[data-job="mug"] img.sample').click();
                 setTimeout(function () { var v = document.getElementById('viewer'),
                   i = document.getElementById('viewer-img');
                   resolve({open: v.open, width: i.naturalWidth, shown: i.getBoundingClientRect().width,
                            caption: document.getElementById('viewer-caption').textContent});
                   v.close(); }, 300); })"""
        )
        assert viewer["open"] and viewer["width"] > 0 and viewer["shown"] >= viewer["width"] * 0.99, viewer
        assert "as embedded" in viewer["caption"]
        browser.evaluate(
            """(function () { var f = document.getElementById('filter'); f.value = '';
                 f.dispatchEvent(new Event('input')); })()"""
        )
        shot = tmp_path / "report.png"
        shot.write_bytes(base64.b64decode(browser.send("Page.captureScreenshot", {"format": "png"})["data"]))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
        print(f"screenshot: {shot}")
        assert browser.evaluate("window.__csp") == []
        outside = [u for u in browser.requests_since(start) if not u.startswith(("data:", report.as_uri()))]
        assert outside == []

        start = browser.navigate(no_csp.as_uri())  # nothing on the page even tries
        outside = [u for u in browser.requests_since(start) if not u.startswith(("data:", no_csp.as_uri()))]
        assert outside == []

        # Negative controls: both detectors do fire.
        start = browser.navigate(leaky.as_uri())
        assert any("/leak.png" in u for u in browser.requests_since(start))
        browser.navigate(tampered.as_uri())
        assert browser.evaluate("window.__csp") == ["script-src-elem"]
    finally:
        browser.close()
