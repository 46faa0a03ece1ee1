"""Security: the API key never leaves the process, keys go nowhere in clear, the sandbox keeps out.

Covered elsewhere and not repeated here (see docs/RELIABILITY.md):
- per-key isolation of assets and ledgers: ``tests/sandbox/test_sandbox_app.py::test_keys_are_isolated``;
- 413 for oversized uploads: ``tests/sandbox/test_sandbox_server.py::test_curl_gets_413_for_an_oversized_upload``
  and ``::test_httpx_gets_413_for_an_oversized_upload`` (over loopback),
  ``tests/sandbox/test_sandbox_app.py::test_oversized_upload_is_413`` / ``..._streamed_...``;
- webhooks to external hosts not called by default:
  ``tests/sandbox/test_sandbox_server.py::test_external_webhook_is_skipped``;
- ``--endpoint http://remote`` refused: ``tests/test_apply_behaviour.py::test_plain_http_to_a_remote_host_is_refused``.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from support.apply import sandbox
from support.images import make_image
from support.manifests import write_manifest
from support.paths import REPO_ROOT

from runner.cli import main

CANARY = "sk-LEAKCANARY-9f3e7a1c5b"  # distinctive: any sighting of it is a leak
OTHER = "sk-someone-elses-key-000"


@dataclass
class Seen:
    """Everything the commands printed, as (label, text)."""

    outputs: list[tuple[str, str]] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)


def run(seen: Seen, label: str, *args: str, cwd: Path, key: str = CANARY, timeout: float = 120) -> int:
    """``python -m runner ARGS`` with the canary as the API key; records output and exit code."""
    env = {**os.environ, "VIMMERSE_API_KEY": key, "CI": "true", "NO_COLOR": "1"}
    env.pop("RUNNER_ENDPOINT", None)
    proc = subprocess.run(
        [sys.executable, "-m", "runner", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    seen.outputs.append((f"{label} stdout", proc.stdout))
    seen.outputs.append((f"{label} stderr", proc.stderr))
    seen.codes[label] = proc.returncode
    return proc.returncode


@contextlib.contextmanager
def serve(state: Path, seen: Seen, label: str, *extra: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``runner -v --log-format json sandbox serve --port 0 ...`` with the canary in the environment."""
    env = {**os.environ, "VIMMERSE_API_KEY": CANARY, "CI": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "-v", "--log-format", "json", "sandbox", "serve", "--port", "0",
         "--state-dir", str(state), "--train-seconds", "0.2", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=state.parent,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line.startswith("sandbox listening on http://127.0.0.1:"), line
        yield line.rsplit(" ", 1)[-1], proc
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        seen.outputs += [(f"{label} stdout", line + "\n" + out), (f"{label} stderr", err)]
        seen.codes[label] = proc.returncode


@dataclass
class World:
    seen: Seen
    project: Path
    sandbox_states: list[Path]
    journal_seen: bool


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    """Every command run once with the canary key (``_make_world``), once per test run.

    Serially, in this module's temporary folder. Under pytest-xdist the first worker that
    needs it makes it in the run's shared temporary folder while holding a file lock; the
    other workers wait for the lock and read what it saw (pytest-xdist's recipe for a
    fixture made once), instead of each running every command again (a minute on a loaded
    machine). ``xdist_group`` cannot do this: on pytest 9.2 ``--dist loadgroup`` silently
    stops grouping (pytest-xdist issue 1386).
    """
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return _make_world(tmp_path_factory.mktemp("security"))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent / "reliability-security-world"
    record = shared / "world.json"
    with FileLock(f"{shared}.lock"):
        if not record.exists():
            shared.mkdir(exist_ok=True)
            made = _make_world(shared)
            record.write_text(json.dumps({
                "outputs": made.seen.outputs, "codes": made.seen.codes, "project": str(made.project),
                "sandbox_states": [str(p) for p in made.sandbox_states], "journal_seen": made.journal_seen,
            }), encoding="utf-8")  # fmt: skip
    doc = json.loads(record.read_text(encoding="utf-8"))
    seen = Seen([(label, text) for label, text in doc["outputs"]], doc["codes"])
    return World(seen, Path(doc["project"]), [Path(p) for p in doc["sandbox_states"]], doc["journal_seen"])


def _make_world(root: Path) -> World:
    """Run every command with the canary key at -v, in JSON and console logs, on success and failure."""
    seen = Seen()
    project = root / "project"
    states = [root / "sandbox", root / "sandbox-401", root / "sandbox-keyflag", root / "sandbox-slow"]
    with sandbox(states[0]) as url:
        write_manifest(project, n_jobs=2, url=url, jobs=[
            {"name": "rejected", "lora_prefix": "LONG", "num_iterations": 500000, "images": "data/job000"},  # 422
            {"name": "doomed", "lora_prefix": "FAILX", "images": "data/job001"},  # fails training
        ], filename="m.yaml")  # fmt: skip
        for fmt in ("json", "console"):
            run(seen, f"validate {fmt}", "-v", "--log-format", fmt, "validate", "m.yaml", cwd=project)
            run(seen, f"validate --format json {fmt}", "-v", "--log-format", fmt, "validate", "--format", "json", "m.yaml", cwd=project)
            for plan_format in ("text", "json", "markdown"):
                run(seen, f"plan {plan_format} {fmt}", "-v", "--log-format", fmt, "plan", "m.yaml", "--format", plan_format, cwd=project)
        (project / "plan.json").write_text(dict(seen.outputs)["plan json json stdout"])
        run(seen, "apply json", "-v", "--log-format", "json", "apply", "m.yaml", cwd=project)
        run(seen, "apply console", "-vv", "--log-format", "console", "apply", "m.yaml", cwd=project)
        # a new job left training, so that --refresh has something to ask the API about
        make_image(project / "data" / "late" / "a.png", (16, 16), seed=99)
        doc = yaml.safe_load((project / "m.yaml").read_text())
        doc["jobs"].append({"name": "late", "lora_prefix": "LATE", "images": "data/late"})
        (project / "m.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        run(seen, "apply --no-wait", "-v", "--log-format", "json", "apply", "m.yaml", "--no-wait", cwd=project)
        for fmt in ("json", "console"):
            run(seen, f"plan --refresh {fmt}", "-v", "--log-format", fmt, "plan", "m.yaml", "--refresh", "--format", "json", cwd=project)
            run(seen, f"status {fmt}", "-v", "--log-format", fmt, "status", "m.yaml", cwd=project)
            run(seen, f"status --refresh {fmt}", "-v", "--log-format", fmt, "status", "m.yaml", "--refresh", "--format", "json", cwd=project)
            for out_format in ("text", "json", "env"):
                run(seen, f"output {out_format} {fmt}", "-v", "--log-format", fmt, "output", "m.yaml", "--format", out_format, cwd=project)
        run(seen, "report", "-v", "--log-format", "json", "report", "m.yaml", "-o", "report.html", cwd=project)
    for which in ("manifest", "lockfile", "plan"):
        run(seen, f"schema {which}", "-v", "--log-format", "json", "schema", which, cwd=project)
    make_image(project / "fresh" / "a.png")
    run(seen, "init", "-v", "--log-format", "json", "init", "fresh", "-o", "init.yaml", cwd=project)

    # 401: the sandbox accepts another key only
    with serve(states[1], seen, "serve --api-key OTHER", "--api-key", OTHER) as (url, _):
        run(seen, "apply 401", "-v", "--log-format", "json", "apply", "m.yaml", "--endpoint", url, "--lockfile", "other.lock.yaml", cwd=project)
    # the key given to the sandbox itself on its command line
    with serve(states[2], seen, "serve --api-key CANARY", "--api-key", CANARY) as (url, _):
        answer = httpx.post(f"{url}/finetune", headers={"X-Api-Key": CANARY},
                            files=[("image_files", ("a.png", (project / "fresh" / "a.png").read_bytes(), "image/png"))])
        assert answer.status_code == 200
        seen.outputs.append(("sandbox answer", answer.text))
    # a crash: kill -9 in the middle of an apply leaves the journal and the lock behind
    journal_seen = False
    with serve(states[3], seen, "serve slow") as (url, _):
        env = {**os.environ, "VIMMERSE_API_KEY": CANARY, "CI": "true"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner", "-v", "apply", "m.yaml", "--endpoint", url, "--lockfile", "killed.lock.yaml"],
            cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        journal = project / "killed.lock.journal"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if journal.exists() and journal.stat().st_size > 0:
                journal_seen = True
                break
            time.sleep(0.01)
        proc.kill()
        out, err = proc.communicate()
        seen.outputs += [("killed apply stdout", out), ("killed apply stderr", err)]
    # a crash inside runner: a key httpx cannot put in a header
    run(seen, "crash", "-v", "--log-format", "json", "apply", "m.yaml", "--lockfile", "crash.lock.yaml",
        "--endpoint", "http://127.0.0.1:9", cwd=project, key=CANARY + "-Ω")
    return World(seen, project, states, journal_seen)


def test_every_command_ran_as_expected(world: World) -> None:
    """The runs the leak checks rely on did what they should (else a missing leak proves nothing)."""
    codes = world.seen.codes
    assert all(codes[k] == 0 for k in codes if k.startswith(("validate", "plan ", "schema", "output", "status"))), codes
    assert codes["apply json"] == 3 and codes["apply console"] == 3  # 422 + failed training
    assert codes["apply --no-wait"] == 3
    assert codes["report"] == 0 and codes["init"] == 0
    assert codes["apply 401"] == 1 and "refused the key" in dict(world.seen.outputs)["apply 401 stderr"]
    assert codes["crash"] == 1
    assert world.journal_seen, "the killed apply never wrote its journal"
    lock = (world.project / "m.lock.yaml").read_text()
    assert "status: 422" in lock and "status: failed" in lock and "status: succeeded" in lock


def test_no_output_carries_the_key(world: World) -> None:
    """No stdout or stderr of any command (JSON or console logs, -v/-vv, failures, crashes) holds the key."""
    leaks = [label for label, text in world.seen.outputs if CANARY in text]
    assert leaks == []


def test_no_file_carries_the_key(world: World) -> None:
    """Lockfiles, the journal left by kill -9, plan JSON, report, .runner/ and the sandboxes' state: no key."""
    files = [p for folder in [world.project, *world.sandbox_states] for p in folder.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"m.lock.yaml", "killed.lock.journal", "plan.json", "report.html", "init.yaml", "sandbox.sqlite3"} <= names
    assert any(".runner" in p.parts for p in files)
    leaks = [str(p) for p in files if CANARY.encode() in p.read_bytes()]
    assert leaks == []


def test_sandbox_stores_a_hash_of_each_key(world: World) -> None:
    """The sandbox's accounts are SHA-256 of the key: the database holds the hash, never the key."""
    database = (world.sandbox_states[2] / "sandbox.sqlite3").read_bytes()
    wal = world.sandbox_states[2] / "sandbox.sqlite3-wal"
    if wal.exists():
        database += wal.read_bytes()
    assert hashlib.sha256(CANARY.encode()).hexdigest().encode() in database
    assert CANARY.encode() not in database


# -- plain http only to this machine -----------------------------------------------------------

REMOTE = [
    "http://192.0.2.10",  # TEST-NET: never routed, so a connect would hang, not fail fast
    "HTTP://192.0.2.10:8080/",
    "http://user:pw@192.0.2.10",
    "http://127.0.0.1.example.com",
    "http://localhost.example.com",
    "http://0.0.0.0:8000",
    "http://[2001:db8::1]",
    "http://169.254.169.254",
]


def _in_process(folder: Path, argv: list[str], env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    monkeypatch.chdir(folder)
    monkeypatch.delenv("RUNNER_ENDPOINT", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--log-format", "json", *argv])
    return code, out.getvalue() + err.getvalue()


@pytest.mark.parametrize("url", REMOTE)
@pytest.mark.parametrize("source", ["flag", "env", "manifest"])
def test_plain_http_off_loopback_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, source: str
) -> None:
    """http:// to anything but this machine is refused from --endpoint, RUNNER_ENDPOINT or the manifest, at once."""
    manifest = write_manifest(tmp_path, n_jobs=1, url=url if source == "manifest" else "sandbox", filename="m.yaml")
    argv = ["apply", manifest.name] + (["--endpoint", url] if source == "flag" else [])
    env = {"VIMMERSE_API_KEY": CANARY} | ({"RUNNER_ENDPOINT": url} if source == "env" else {})
    started = time.monotonic()
    code, out = _in_process(tmp_path, argv, env, monkeypatch)
    assert time.monotonic() - started < 10
    assert code == 1, out
    assert "Traceback" not in out and CANARY not in out
    assert "http" in out and ("loopback" in out or "this machine" in out), out
    assert not (tmp_path / "m.lock.yaml").exists()
    if source == "manifest":
        code, out = _in_process(tmp_path, ["validate", manifest.name], env, monkeypatch)
        assert code == 1 and "api.endpoint: http:// is only allowed to this machine" in out, out


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]"])
def test_plain_http_to_loopback_is_accepted(tmp_path: Path, host: str) -> None:
    """http:// to 127.0.0.1, localhost and [::1] is allowed (the sandbox, tunnels)."""
    from runner.api.endpoint import check_endpoint_url

    assert check_endpoint_url(f"http://{host}:8000", "--endpoint") == f"http://{host}:8000"


# -- the sandbox's disk -----------------------------------------------------------------------

HOSTILE_NAMES = [
    "../../evil.png",
    "../../../../../../../../tmp/evil-abs.png",
    "ABSOLUTE",
    "..\\..\\evil-win.png",
    "sub/../../evil-sub.png",
    "evil\x00.png",
    ".hidden-evil.png",
]


def _snapshot(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def test_multipart_filenames_cannot_write_outside_the_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Uploads named ``../../evil.png``, absolute paths and the like land only as numbered files under uploads/."""
    work = tmp_path / "cwd" / "a" / "b"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)  # relative names would resolve from here
    state = tmp_path / "state"
    absolute = tmp_path / "abs" / "evil-absolute.png"
    absolute.parent.mkdir()
    png = (make_image(tmp_path / "src.png")).read_bytes()
    before = _snapshot(tmp_path)
    with sandbox(state) as url:
        names = [absolute.as_posix() if n == "ABSOLUTE" else n for n in HOSTILE_NAMES]
        # raw multipart, so no client library can tidy the names on the way
        body = b"".join(
            b'--B\r\nContent-Disposition: form-data; name="image_files"; filename="'
            + name.encode("utf-8", "surrogateescape") + b'"\r\nContent-Type: image/png\r\n\r\n' + png + b"\r\n"
            for name in names
        ) + b"--B--\r\n"
        answer = httpx.post(
            f"{url}/finetune", content=body, timeout=30,
            headers={"X-Api-Key": CANARY, "content-type": "multipart/form-data; boundary=B"},
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
        asset = answer.json()["data"]["id"]
    created = _snapshot(tmp_path) - before
    outside = sorted(str(p) for p in created if p != state and state not in p.parents)
    assert outside == []
    assert not list(Path("/tmp").glob("evil*"))
    assert not absolute.exists()
    stored = sorted(p.name for p in (state / "uploads" / asset).iterdir())
    assert stored == [f"{i:03d}.png" for i in range(len(names))]
    assert not any("evil" in p.name for p in created)


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:9/hook", True),
        ("http://localhost:9/hook", True),
        ("http://[::1]:9/hook", True),
        ("http://127.5.6.7/hook", True),
        ("http://169.254.169.254/latest/meta-data", False),
        ("http://0.0.0.0:9/hook", False),
        ("http://10.0.0.1/hook", False),
        ("http://[::ffff:10.0.0.1]/hook", False),
        ("https://192.0.2.1/hook", False),
    ],
)
def test_webhook_targets_are_loopback_only_by_default(url: str, loopback: bool) -> None:
    """The sandbox's webhook guard accepts loopback addresses only (no DNS needed for these)."""
    import anyio

    from runner.sandbox.webhooks import is_loopback_url

    assert anyio.run(is_loopback_url, url) is loopback


def test_serve_failing_to_start_does_not_print_its_key(tmp_path: Path) -> None:
    """``sandbox serve --api-key K`` never prints K, even when it fails to start."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "-v", "--log-format", "json", "sandbox", "serve", "--port", "70000",
         "--api-key", CANARY, "--state-dir", str(tmp_path / "s")],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1
    assert CANARY not in proc.stdout + proc.stderr
