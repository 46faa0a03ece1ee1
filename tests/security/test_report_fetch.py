"""Issue 12, item 7: ``runner report`` fetched whatever a lockfile said.

A pull request can change the lockfile and anything under ``.runner/``, and CI runs
``runner report`` on it. Each test plays the attacker: a crafted lockfile whose sample URLs
point at another loopback port (a server that records every GET), internal hosts, a server
that drips bytes; a 13000x13000 PNG (a few hundred KB that decode to half a gigabyte); a
state folder whose ``sample_0.png`` is a symlink to ``/dev/zero`` or a FIFO. And SIGTERM in
the middle of a slow report. The real CLI runs as a subprocess wherever time, signals or
memory are measured. Peak RSS comes from ``os.wait4`` on that very child, run by a small
launcher: on Linux a child's peak RSS starts at its parent's size when it forks (the count
survives exec), so measured straight from pytest it would read pytest's own ~90 MB.

The figures (peak RSS, seconds) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import http.server
import os
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from support.manifests import write_manifest
from support.paths import REPO_ROOT

from runner.views.report.cards import Section, cards_for
from runner.views.report.fetch import MAX_PIXELS, Fetcher, fill_samples
from runner.views.report.policy import FetchPolicy

LIVE_API = "https://api.vimmerse.net"
# Peak RSS allowed for a report that meets a hostile input. A report of no sample peaks near
# 45 MB (Python, httpx, YAML, JSON Schema); before the fix the 13000x13000 PNG took 1.3 GB
# here (5.2 GB in the run) and /dev/zero ran into any memory limit.
RSS_LIMIT_MB = 150

# -- helpers -----------------------------------------------------------------------------------


def _png(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (20, 140, 90)) -> bytes:
    from io import BytesIO

    from PIL import Image

    out = BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def huge_png(path: Path, side: int = 13_000) -> Path:
    """A real, valid side x side RGB PNG of zeros: ~500 KB on disk, 507 MB of pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    compressor = zlib.compressobj(9)
    row = b"\x00" * (1 + 3 * side)  # filter byte + RGB
    parts = [compressor.compress(row) for _ in range(side)]
    parts.append(compressor.flush())
    idat = b"".join(parts)
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@dataclass
class Recorder:
    """What a loopback server saw; ``stop`` ends its dripping handlers."""

    base: str
    port: int
    requests: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    first: threading.Event = field(default_factory=threading.Event)


@contextmanager
def serve(routes: dict[str, Any] | None = None) -> Iterator[Recorder]:
    """A loopback HTTP server recording every request line. ``routes`` maps a path to bytes
    (served as image/png), ``"drip-body"`` (headers, then a byte every 0.2 s, forever) or
    ``"drip-headers"`` (a status line, then a header byte every 0.2 s, forever); any other
    path is 200 with a small PNG (a GET with side effects would have had them)."""
    routes = routes or {}
    holder: dict[str, Recorder] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            rec = holder["rec"]
            rec.requests.append(f"{self.command} {self.path}")
            rec.first.set()
            route = routes.get(self.path.split("?")[0], _png())
            try:
                if route == "drip-body":
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(10**7))
                    self.end_headers()
                    while not rec.stop.wait(0.2):
                        self.wfile.write(b"\x00")
                        self.wfile.flush()
                elif route == "drip-headers":
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    self.wfile.flush()
                    while not rec.stop.wait(0.2):
                        self.wfile.write(b"a")
                        self.wfile.flush()
                else:
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(route)))
                    self.end_headers()
                    self.wfile.write(route)
            except OSError:  # the client gave up: what we want
                return

        def log_message(self, *args: Any) -> None:
            pass

    class Server(http.server.ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: Any, client_address: Any) -> None:
            pass  # a client that hung up on a dripping answer: expected, not news

    server = Server(("127.0.0.1", 0), Handler)
    port = server.server_address[1]
    holder["rec"] = rec = Recorder(f"http://127.0.0.1:{port}", port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        rec.stop.set()
        server.shutdown()
        server.server_close()


def project(tmp_path: Path, results: dict[str, list[str]], endpoint: str = "sandbox") -> Path:
    """A valid manifest (``endpoint``) and a crafted lockfile giving each job ``results``."""
    manifest = write_manifest(
        tmp_path, jobs=[{"name": name, "lora_prefix": "P"} for name in results], api={"endpoint": endpoint}
    )
    from runner.api.endpoint import api_identity

    made = api_identity(endpoint)
    jobs = {
        name: {
            "fingerprint": "sha256:" + "0" * 64,
            "status": "succeeded",
            "asset_id": f"asset{i}",
            "trigger_word": f"P_{i:06d}",
            "option": "FluxFinetune",
            "finetune_type": "Auto",
            "images": 2,
            "results": urls,
            "api": made,
        }
        for i, (name, urls) in enumerate(sorted(results.items()))
    }
    (tmp_path / "manifest.lock.yaml").write_text(
        "# Written by runner; do not edit.\n" + yaml.safe_dump({"version": 1, "jobs": jobs}, sort_keys=False),
        encoding="utf-8",
    )
    return manifest


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    seconds: float
    rss_mb: float


def _env() -> dict[str, str]:
    env = dict(os.environ, NO_COLOR="1")
    env.pop("RUNNER_ENDPOINT", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


# Runs argv[1:], reaps it with wait4 and writes its peak RSS (KiB) to $RSS_FILE; exits with
# its code. A fresh small process, so the child's peak RSS counts only itself.
LAUNCHER = """
import os, signal, subprocess, sys
child = subprocess.Popen(sys.argv[1:])
signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
while True:
    try:
        _, status, usage = os.wait4(child.pid, 0)
        break
    except InterruptedError:
        continue
child.returncode = os.waitstatus_to_exitcode(status)
with open(os.environ["RSS_FILE"], "w") as fh:
    fh.write(str(usage.ru_maxrss))
sys.exit(child.returncode)
"""


def start_runner(args: list[str], cwd: Path, out: Path) -> subprocess.Popen[bytes]:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, sys.executable, "-m", "runner", *args],
        cwd=cwd,
        env=_env() | {"RSS_FILE": str(out / "rss")},
        stdout=open(out / "stdout", "wb"),
        stderr=open(out / "stderr", "wb"),
        start_new_session=True,  # a group of its own, killed whole on a timeout
    )


def wait_measured(proc: subprocess.Popen[bytes], out: Path, started: float, timeout: float) -> Run:
    """Reap the launcher ``proc``: runner's exit code and peak RSS (see ``LAUNCHER``)."""
    deadline = started + timeout
    while True:
        pid, status = os.waitpid(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)  # the launcher and runner with it
            _pid, status = os.waitpid(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            pytest.fail(f"runner still running after {timeout} s: " + (out / "stderr").read_text()[-2000:])
        time.sleep(0.02)
    seconds = time.monotonic() - started
    proc.returncode = os.waitstatus_to_exitcode(status)
    return Run(
        proc.returncode,
        (out / "stdout").read_text(encoding="utf-8", errors="replace"),
        (out / "stderr").read_text(encoding="utf-8", errors="replace"),
        seconds,
        int((out / "rss").read_text()) / 1024,  # KiB on Linux
    )


def report(manifest: Path, out: Path, *extra: str, timeout: float = 60) -> Run:
    started = time.monotonic()
    proc = start_runner(["report", str(manifest), "-o", str(out / "report.html"), *extra], manifest.parent, out)
    return wait_measured(proc, out, started, timeout)


def cards(page: Path) -> str:
    return page.read_text(encoding="utf-8")


# -- another loopback port, internal hosts -----------------------------------------------------


def test_lockfile_urls_on_another_loopback_port_get_no_request(tmp_path: Path) -> None:
    """A sandbox manifest's report sends no request at all, whatever port a URL names; an
    https manifest's report never requests loopback either; a loopback manifest's only its
    own origin. The victim server records every GET (each would have had its side effect)."""
    with serve() as victim, serve() as api:
        urls = [
            f"{victim.base}/admin/delete?all=1",
            f"{victim.base}/_sandbox/files/abc123/sample_0.png",  # the sandbox's route, live port
            f"http://localhost:{victim.port}/x.png",
            f"https://127.0.0.1:{victim.port}/x.png",
            f"http://[::1]:{victim.port}/x.png",
        ]
        sandbox = project(tmp_path / "sb", {"job": urls})
        live = project(tmp_path / "live", {"job": urls}, endpoint=LIVE_API)
        local = project(tmp_path / "local", {"job": [f"{api.base}/ok.png", *urls]}, endpoint=api.base)
        runs = [
            report(sandbox, tmp_path / "out-sb"),
            report(live, tmp_path / "out-live"),
            report(local, tmp_path / "out-local"),
        ]
        assert victim.requests == []
        assert api.requests == ["GET /ok.png"]  # positive control: the recorder does record
    for run in runs:
        assert run.code == 0, run.stderr
    page = cards(tmp_path / "out-sb" / "report.html")
    assert page.count("not from the API&#39;s origin") == 4
    assert "not in the sandbox&#39;s state folder" in page  # the sandbox route: state only
    assert cards(tmp_path / "out-live" / "report.html").count("not from the API&#39;s origin") == 5
    local_page = cards(tmp_path / "out-local" / "report.html")
    assert local_page.count('<img class="sample"') == 1
    assert local_page.count("not from the API&#39;s origin") == 4


def test_internal_hosts_are_never_contacted(tmp_path: Path) -> None:
    """Against the live API: metadata services, private ranges and other hosts are refused
    before any request; the API's sibling hosts (its sample CDN) are asked. In-process with
    a transport that records every request it is handed."""
    internal = [
        "https://169.254.169.254/latest/meta-data/iam/security-credentials/",
        "http://169.254.169.254/latest/meta-data/",
        "https://metadata.google.internal/computeMetadata/v1/",
        "https://10.0.0.1/admin",
        "https://192.168.1.1/",
        "http://intranet.corp.example/",
        "https://intranet.corp.example/",
        "https://vimmerse.net.attacker.example/x.png",
        "https://api.vimmerse.net:8443/x.png",
        "https://api.vimmerse.net@10.0.0.1/x.png",
        "file:///etc/passwd",
    ]
    allowed = [
        "https://api.vimmerse.net/x/output.png",
        "https://dev-media.vimmerse.net/customer_id/ai_images/53c6eg9/output.png",
    ]
    sent: list[str] = []

    def factory(**kwargs: Any) -> Fetcher:
        fetcher = Fetcher(**kwargs)
        fetcher._client = httpx.Client(
            transport=httpx.MockTransport(lambda r: sent.append(str(r.url)) or httpx.Response(200, content=_png()))
        )
        return fetcher

    from runner.models import LockEntry

    entry = LockEntry.from_dict(
        {"fingerprint": "sha256:" + "0" * 64, "status": "succeeded", "results": internal + allowed}
    )
    section = Section("m.yaml", cards_for("m.yaml", ["job"], {"job": entry}))
    fill_samples([section], {"m.yaml": tmp_path}, 128, factory, policies={"m.yaml": FetchPolicy(LIVE_API)})
    assert sent == allowed
    samples = section.cards[0].samples
    assert all(s.problem.startswith(("not from the API's origin", "not an http(s) URL")) for s in samples[:-2])
    assert all(s.data_uri for s in samples[-2:])


# -- a slow server ---------------------------------------------------------------------------------


def test_a_dripping_server_cannot_hold_the_report_past_its_deadline(tmp_path: Path) -> None:
    """More dripping URLs than workers, bodies and headers: each sample is cut at its own
    deadline, the whole report at --timeout, and it is written with the reasons."""
    routes: dict[str, Any] = {f"/body{i}.png": "drip-body" for i in range(5)}
    routes |= {f"/head{i}.png": "drip-headers" for i in range(5)}
    with serve(routes) as rec:
        urls = [f"{rec.base}{path}" for path in routes] + [f"{rec.base}/fine.png"]
        manifest = project(tmp_path / "p", {"slow": urls}, endpoint=rec.base)
        run = report(manifest, tmp_path / "out", "--timeout", "5", "--image-timeout", "2", timeout=40)
    print(f"\ndripping report: {run.seconds:.1f} s with --timeout 5, peak RSS {run.rss_mb:.0f} MB")
    assert run.code == 0, run.stderr
    assert run.seconds < 5 + 4  # the deadline, plus start-up and writing
    page = cards(tmp_path / "out" / "report.html")
    assert page.count("<strong>Download too slow</strong>") == 10  # what the card says
    assert page.count('<img class="sample"') == 1  # the fine one still made it


def test_the_whole_report_has_one_deadline(tmp_path: Path) -> None:
    """Per-image caps alone would add up (30 samples x 2 s); --timeout bounds them together."""
    routes: dict[str, Any] = {f"/b{i}.png": "drip-body" for i in range(30)}
    with serve(routes) as rec:
        manifest = project(tmp_path / "p", {"slow": [f"{rec.base}{p}" for p in routes]}, endpoint=rec.base)
        run = report(manifest, tmp_path / "out", "--timeout", "3", "--image-timeout", "2", timeout=40)
    print(f"\n30 dripping samples: {run.seconds:.1f} s with --timeout 3")
    assert run.code == 0, run.stderr
    assert run.seconds < 3 + 4
    page = cards(tmp_path / "out" / "report.html")
    assert page.count("<strong>Download too slow</strong>") == 30 and "the report&#39;s deadline passed" in page


def test_sigterm_during_a_slow_report_exits_130_promptly_and_leaves_no_file(tmp_path: Path) -> None:
    """SIGTERM while samples drip: exit 130 within a second or two, the previous report
    untouched, no temporary file left beside it."""
    routes: dict[str, Any] = {f"/b{i}.png": "drip-body" for i in range(8)}
    with serve(routes) as rec:
        manifest = project(tmp_path / "p", {"slow": [f"{rec.base}{p}" for p in routes]}, endpoint=rec.base)
        out = tmp_path / "out"
        out.mkdir()
        (out / "report.html").write_text("OLD REPORT", encoding="utf-8")
        started = time.monotonic()
        proc = start_runner(["report", str(manifest), "-o", str(out / "report.html"), "--timeout", "120"],
                            manifest.parent, out / "logs")
        assert rec.first.wait(30), "the report never asked for a sample"
        time.sleep(0.5)
        signalled = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        run = wait_measured(proc, out / "logs", started, 60)
        took = time.monotonic() - signalled
    print(f"\nSIGTERM to exit: {took:.2f} s")
    assert run.code == 130, run.stderr
    assert took < 3
    assert "interrupted" in run.stderr
    assert (out / "report.html").read_text(encoding="utf-8") == "OLD REPORT"
    assert sorted(p.name for p in out.iterdir()) == ["logs", "report.html"]


# -- a decompression bomb ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = huge_png(tmp_path_factory.mktemp("bomb") / "huge.png")
    data = path.read_bytes()
    assert len(data) < 2_000_000 and MAX_PIXELS < 13_000 * 13_000
    return data


def test_a_13000_pixel_png_is_refused_before_decoding(tmp_path: Path, bomb: bytes) -> None:
    """Served by the API's own (loopback) origin, and committed as the sandbox's rendered
    sample: both refused as too large from their header; the report's peak RSS stays low."""
    with serve({"/huge.png": bomb}) as rec:
        served = project(tmp_path / "served", {"job": [f"{rec.base}/huge.png", f"{rec.base}/ok.png"]},
                         endpoint=rec.base)
        run = report(served, tmp_path / "out-served")
    committed = project(
        tmp_path / "committed", {"job": ["http://127.0.0.1:9/_sandbox/files/aaa111/sample_0.png"]}
    )
    huge = committed.parent / ".runner" / "sandbox" / "outputs" / "aaa111" / "sample_0.png"
    huge.parent.mkdir(parents=True)
    huge.write_bytes(bomb)
    run2 = report(committed, tmp_path / "out-committed")
    control = project(tmp_path / "control", {"job": []})
    baseline = report(control, tmp_path / "out-control")
    print(
        f"\n13000x13000 PNG ({len(bomb) / 1e3:.0f} KB): served {run.seconds:.1f} s, peak RSS"
        f" {run.rss_mb:.0f} MB; committed {run2.seconds:.1f} s, {run2.rss_mb:.0f} MB;"
        f" a report with no samples {baseline.rss_mb:.0f} MB"
    )
    for r in (run, run2):
        assert r.code == 0, r.stderr
        assert r.rss_mb < RSS_LIMIT_MB
    for page in (cards(tmp_path / "out-served" / "report.html"), cards(tmp_path / "out-committed" / "report.html")):
        assert "too large (13000x13000 pixels" in page
    assert cards(tmp_path / "out-served" / "report.html").count('<img class="sample"') == 1


# -- hostile state files ------------------------------------------------------------------------


def _sandbox_url(asset: str) -> str:
    return f"http://127.0.0.1:9/_sandbox/files/{asset}/sample_0.png"


def test_state_files_that_are_symlinks_fifos_or_devices_are_refused(tmp_path: Path) -> None:
    """A committed ``sample_0.png -> /dev/zero``, a FIFO, a symlinked folder: no hang, no
    memory blow-up, each card says why; the good one is still shown."""
    manifest = project(
        tmp_path / "p",
        {"zero": [_sandbox_url("zero1")], "fifo": [_sandbox_url("fifo1")], "dirlink": [_sandbox_url("link1")],
         "good": [_sandbox_url("good1")]},
    )
    state = manifest.parent / ".runner" / "sandbox"
    outputs = state / "outputs"
    for name in ("zero1", "fifo1", "good1"):
        (outputs / name).mkdir(parents=True)
    (outputs / "zero1" / "sample_0.png").symlink_to("/dev/zero")
    os.mkfifo(outputs / "fifo1" / "sample_0.png")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "sample_0.png").write_bytes(_png((40, 40), (255, 0, 0)))
    (outputs / "link1").symlink_to(elsewhere, target_is_directory=True)
    (outputs / "good1" / "sample_0.png").write_bytes(_png())
    assert stat.S_ISFIFO(os.lstat(outputs / "fifo1" / "sample_0.png").st_mode)
    run = report(manifest, tmp_path / "out", timeout=60)
    print(f"\nhostile state files: {run.seconds:.1f} s, peak RSS {run.rss_mb:.0f} MB")
    assert run.code == 0, run.stderr
    assert run.seconds < 20 and run.rss_mb < RSS_LIMIT_MB
    page = cards(tmp_path / "out" / "report.html")

    def card(name: str) -> str:
        start = page.index(f'data-job="{name}"')
        return page[start : page.index("</article>", start)]

    assert "symbolic link" in card("zero")
    assert "not a regular file" in card("fifo")
    assert "symbolic link" in card("dirlink")
    assert '<img class="sample"' in card("good")


def test_a_database_that_is_a_symlink_to_dev_zero_is_never_opened(tmp_path: Path) -> None:
    """``.runner/sandbox/sandbox.sqlite3 -> /dev/zero``: the workspace refuses it outright
    (exit 1, no report; issue 12 item 4), or, were it let through, the report refuses to
    open it and the card says so. Either way quickly and with little memory."""
    manifest = project(tmp_path / "p", {"fromdb": [_sandbox_url("nodb1")]})
    state = manifest.parent / ".runner" / "sandbox"
    state.mkdir(parents=True)
    (state / "sandbox.sqlite3").symlink_to("/dev/zero")
    run = report(manifest, tmp_path / "out", timeout=60)
    assert run.seconds < 20 and run.rss_mb < RSS_LIMIT_MB
    page = tmp_path / "out" / "report.html"
    if run.code == 1:
        assert "is a symlink" in run.stderr and not page.exists()
    else:
        assert run.code == 0, run.stderr
        assert "sandbox database refused: the file is a symbolic link" in cards(page)
    with Fetcher() as fetcher:  # the report's own rule, whatever the workspace does
        data, problem = fetcher.sandbox_file(_sandbox_url("nodb1"), manifest.parent)
    assert data is None and problem == "sandbox database refused: the file is a symbolic link"


def test_a_state_folder_that_is_a_symlink_is_not_followed(tmp_path: Path) -> None:
    """``.runner -> /somewhere`` (the victim's real sandbox state, say) is not read through:
    the workspace refuses a symlinked ``.runner`` outright (exit 1, no report; issue 12 item
    4), and were it let through, the report's own walk refuses it (the card says so)."""
    manifest = project(tmp_path / "p", {"job": [_sandbox_url("abc")]})
    real = tmp_path / "real" / "sandbox" / "outputs" / "abc"
    real.mkdir(parents=True)
    (real / "sample_0.png").write_bytes(_png())
    (manifest.parent / ".runner").symlink_to(tmp_path / "real", target_is_directory=True)
    run = report(manifest, tmp_path / "out")
    page = tmp_path / "out" / "report.html"
    if run.code == 1:
        assert ".runner is a symlink" in run.stderr and not page.exists()
    else:
        assert run.code == 0, run.stderr
        assert '<img class="sample"' not in cards(page)
        assert "folder &#39;.runner&#39; is a symbolic link" in cards(page)
    with Fetcher() as fetcher:  # the report's own rule, whatever the workspace does
        data, problem = fetcher.sandbox_file(_sandbox_url("abc"), manifest.parent)
    assert data is None and problem == "sandbox file refused: folder '.runner' is a symbolic link"


def test_a_hostile_database_cannot_loop_forever(tmp_path: Path) -> None:
    """A committed sandbox.sqlite3 whose ``assets`` is a view over an endless recursive query
    is refused (not a table); one that is a table but huge-looking is read read-only, and the
    report ends within its deadline either way."""
    import sqlite3

    manifest = project(tmp_path / "p", {"job": [_sandbox_url("abc")]})
    state = manifest.parent / ".runner" / "sandbox"
    state.mkdir(parents=True)
    db = sqlite3.connect(state / "sandbox.sqlite3")
    db.execute(
        "CREATE VIEW assets AS WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n)"
        " SELECT 'abc' AS id, x FROM n"
    )
    db.commit()
    db.close()
    before = (state / "sandbox.sqlite3").read_bytes()
    run = report(manifest, tmp_path / "out", "--timeout", "5", timeout=30)
    assert run.code == 0, run.stderr
    assert run.seconds < 5 + 4
    assert "sandbox state unreadable" in cards(tmp_path / "out" / "report.html")
    assert (state / "sandbox.sqlite3").read_bytes() == before  # read-only: not even a WAL
    assert sorted(p.name for p in state.iterdir()) == ["sandbox.sqlite3"]


def test_a_real_sandbox_state_still_renders(tmp_path: Path) -> None:
    """The hardening keeps the normal case: an apply against the embedded sandbox, then a
    report that renders its samples from the database, writing nothing into the state."""
    from support.cli import run_runner

    manifest = write_manifest(tmp_path, jobs=[{"name": "a", "lora_prefix": "AAA"}], api={"endpoint": "sandbox"})
    env = _env() | {"RUNNER_SANDBOX_TRAIN_SECONDS": "0.1"}
    result = run_runner("-q", "apply", str(manifest), env=env, timeout=120)
    assert result.code == 0, result.stderr
    state = tmp_path / ".runner" / "sandbox"
    before = sorted(str(p.relative_to(state)) for p in state.rglob("*"))
    run = report(manifest, tmp_path / "out")
    assert run.code == 0, run.stderr
    assert cards(tmp_path / "out" / "report.html").count('<img class="sample"') == 2
    assert sorted(str(p.relative_to(state)) for p in state.rglob("*")) == before
