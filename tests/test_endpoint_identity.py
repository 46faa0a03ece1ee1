"""Endpoint identity (DESIGN section 4): a lock entry counts only for the API it was made against.

A lockfile made against the sandbox, with the manifest then pointed at the live API: plan
says create (reason endpoint) for every job, status shows the entries as made elsewhere,
output refuses them, and none of it sends a request (no key, no socket). Old lockfiles
without ``api`` are read by their sample URLs and gain the field on the next apply.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.manifests import write_manifest

from runner.api.endpoint import accepts, api_identity, inferred_api, target_identity, with_api
from runner.cli import main
from runner.models import ApiSettings, LockEntry, Manifest
from runner.state.files import journal_path
from runner.state.lockfile import LockState, read_lockfile
from runner.state.session import LockSession

LIVE = "https://api.vimmerse.net"
FP = "sha256:" + "a" * 64
SANDBOX_URL = "http://127.0.0.1:45247/_sandbox/files/961cffcc/sample_0.png"
CDN_URL = "https://cdn.vimmerse.net/lora/abc/sample_0.png"


# -- pure functions, as tables of literals ----------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "identity"),
    [
        ("sandbox", "sandbox"),
        ("https://api.vimmerse.net", "https://api.vimmerse.net"),
        ("https://API.Vimmerse.NET/", "https://api.vimmerse.net"),
        ("HTTPS://api.vimmerse.net:443/v1/finetune", "https://api.vimmerse.net"),
        ("https://api.vimmerse.net:8443", "https://api.vimmerse.net:8443"),
        ("http://127.0.0.1:8123", "http://127.0.0.1:8123"),
        ("http://localhost:80/", "http://localhost"),
        ("http://[::1]:9000", "http://[::1]:9000"),
        ("https://user:secret@api.vimmerse.net", "https://api.vimmerse.net"),
    ],
)
def test_api_identity_is_the_origin(endpoint: str, identity: str) -> None:
    """Scheme and host lower-cased, default ports, paths and user info dropped."""
    assert api_identity(endpoint) == identity


@pytest.mark.parametrize(
    ("target", "made", "ok"),
    [
        ("sandbox", "sandbox", True),
        ("sandbox", "http://127.0.0.1:8123", False),
        ("sandbox", LIVE, False),
        ("http://127.0.0.1:8123", "sandbox", True),
        ("http://127.0.0.1:8123", "http://127.0.0.1:8123", True),
        ("http://127.0.0.1:8123", "http://127.0.0.1:9999", False),
        ("http://localhost:8123", "sandbox", True),
        ("http://[::1]:8123", "sandbox", True),
        ("http://127.0.0.1:8123", LIVE, False),
        (LIVE, LIVE, True),
        (LIVE, "sandbox", False),
        (LIVE, "http://127.0.0.1:8123", False),
        (LIVE, "https://staging.vimmerse.net", False),
        ("https://api.vimmerse.net:8443", LIVE, False),
    ],
)
def test_accepts(target: str, made: str, ok: bool) -> None:
    """Sandbox and loopback targets accept the sandbox's entries; an https origin only its own."""
    assert accepts(target, made) is ok


@pytest.mark.parametrize(
    ("results", "target", "made"),
    [
        ((SANDBOX_URL,), LIVE, "sandbox"),
        (("http://localhost:8000/x.png",), LIVE, "sandbox"),
        (("http://[::1]:8000/x.png",), LIVE, "sandbox"),
        (("https://files.example.com/_sandbox/files/id/sample_0.png",), LIVE, "sandbox"),
        ((CDN_URL, SANDBOX_URL), LIVE, "sandbox"),
        ((CDN_URL,), LIVE, LIVE),
        ((CDN_URL,), "sandbox", "sandbox"),
        ((), LIVE, LIVE),
        ((), "sandbox", "sandbox"),
        (("not a url [",), LIVE, LIVE),
    ],
)
def test_inferred_api_reads_the_sample_urls(results: tuple[str, ...], target: str, made: str) -> None:
    """Before ``api`` existed: sandbox sample URLs mean the sandbox, anything else the target."""
    assert inferred_api(LockEntry(FP, "succeeded", results=results), target) == made


def test_target_identity_precedence(tmp_path: Path) -> None:
    """--endpoint, then RUNNER_ENDPOINT, then api.endpoint; no key needed."""
    manifest = Manifest(path=tmp_path / "m.yaml", api=ApiSettings(endpoint="https://A.example.com/"))
    assert target_identity(manifest, None, {}) == "https://a.example.com"
    assert target_identity(manifest, None, {"RUNNER_ENDPOINT": "sandbox"}) == "sandbox"
    env = {"RUNNER_ENDPOINT": "sandbox"}
    assert target_identity(manifest, "http://127.0.0.1:8123/", env) == "http://127.0.0.1:8123"


def test_with_api_fills_only_missing_fields() -> None:
    entries = {
        "old-sandbox": LockEntry(FP, "succeeded", results=(SANDBOX_URL,)),
        "old-live": LockEntry(FP, "succeeded", results=(CDN_URL,)),
        "new": LockEntry(FP, "succeeded", api="sandbox"),
    }
    filled = with_api(entries, LIVE)
    assert {n: e.api for n, e in filled.items()} == {"old-sandbox": "sandbox", "old-live": LIVE}


# -- lockfile: the new fields round-trip ------------------------------------------------------


def _big_answer() -> str:
    line = '{"data": {"id": "6650f0c1", "note": "it said \\"done\\" and \'ok\'", "x": "#: -"}}\n'
    text = ("<html>\r\n  <b>Bad gateway</b>: key: value\n\t- item\n" + line * 400)[: 16 * 1024]
    assert len(text) == 16 * 1024 and "\n" in text
    return text


def test_api_and_answer_round_trip_through_file_and_journal(tmp_path: Path) -> None:
    """A 16 KiB multi-line answer with quotes survives the template renderer and the journal."""
    answer = _big_answer()
    entry = LockEntry(FP, "uncertain", "6650f0c1", api=LIVE, answer=answer,
                      error={"status": 200, "message": "no trigger word"})
    plain = LockEntry("sha256:" + "b" * 64, "succeeded", trigger_word="A_1", api="sandbox")
    state = LockState({"odd": entry, "plain": plain}, serial=1)
    text = state.render()
    assert text == state.render_yaml()
    lockfile = tmp_path / "m.lock.yaml"
    lockfile.write_text(text, encoding="utf-8")
    again = read_lockfile(lockfile)
    assert again.entries == {"odd": entry, "plain": plain}
    assert list(yaml.safe_load(text)["jobs"]["plain"]).index("api") == list(
        yaml.safe_load(text)["jobs"]["plain"]
    ).index("error") + 1

    # The journal: recorded, then read back before any rewrite (a crash right after).
    lockfile.unlink()
    session = LockSession(lockfile)
    session.acquire()
    session.record("odd", entry)
    assert read_lockfile(lockfile).entries == {"odd": entry}
    session.close()
    assert not journal_path(lockfile).exists()
    assert read_lockfile(lockfile).entries == {"odd": entry}


def test_lockfiles_without_api_or_answer_still_read(tmp_path: Path) -> None:
    lockfile = tmp_path / "m.lock.yaml"
    lockfile.write_text(
        "version: 1\njobs:\n  a:\n    fingerprint: " + FP + "\n    status: succeeded\n    trigger_word: A_1\n"
    )
    entry = read_lockfile(lockfile).entries["a"]
    assert (entry.api, entry.answer, entry.trigger_word) == (None, None, "A_1")


# -- the sandbox-to-live switch, through the CLI in-process ------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every outgoing connection is recorded and refused; no API key in the environment."""
    attempts: list[Any] = []

    def refuse(self: socket.socket, address: Any) -> None:
        attempts.append(address)
        raise OSError("the test forbids network access")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: attempts.append(a) or [])
    return attempts


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--log-format", "json", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def applied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Path:
    """A manifest of three jobs applied against the embedded sandbox; cwd is its folder."""
    monkeypatch.chdir(tmp_path)
    for var in ("VIMMERSE_API_KEY", "RUNNER_ENDPOINT", "RUNNER_TRACE_HTTP", "CI"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("RUNNER_SANDBOX_TRAIN_SECONDS", "0.05")
    manifest = write_manifest(
        tmp_path,
        jobs=[{"name": "a2", "lora_prefix": "AA"}, {"name": "a10", "lora_prefix": "BB"},
              {"name": "mug", "lora_prefix": "MUG"}],
        api={"endpoint": "sandbox", "poll_interval": "50ms"},
    )
    code, _, err = cli(capsys, "apply", "-q", manifest.name)
    assert code == 0, err
    entries = read_lockfile(tmp_path / "manifest.lock.yaml").entries
    assert {e.api for e in entries.values()} == {"sandbox"}
    assert all(e.status == "succeeded" and e.trigger_word for e in entries.values())
    return manifest


def _set_endpoint(manifest: Path, endpoint: str) -> None:
    doc = yaml.safe_load(manifest.read_text())
    doc["api"]["endpoint"] = endpoint
    manifest.write_text(yaml.safe_dump(doc, sort_keys=False))


def _check_switched(capsys: pytest.CaptureFixture[str], manifest: Path) -> None:
    name = manifest.name
    code, out, _ = cli(capsys, "plan", name)
    assert code == 0
    assert "3 job(s) will be created" in out
    assert out.count(f"(endpoint, api: sandbox → {LIVE})") == 3
    assert "Plan: 3 create, 0 replace, 0 resume, 0 retry, 0 blocked, 0 noop" in out

    code, out, _ = cli(capsys, "plan", name, "--detailed-exitcode")
    assert code == 2

    code, out, _ = cli(capsys, "plan", name, "--format", "json")
    doc = json.loads(out)
    assert doc["summary"]["create"] == 3 and doc["summary"]["noop"] == 0
    for job in doc["jobs"]:
        assert (job["action"], job["reasons"]) == ("create", ["endpoint"])
        assert job["diff"] == {"api": {"old": "sandbox", "new": LIVE}}
    from jsonschema import Draft202012Validator

    from runner.shipped_schemas import load_schema

    Draft202012Validator(load_schema("plan")).validate(doc)

    code, out, _ = cli(capsys, "plan", name, "--format", "markdown")
    assert out.count("| create | `") == 3
    assert f"endpoint, api: `sandbox` → `{LIVE}`" in out

    code, out, _ = cli(capsys, "status", name)
    assert code == 0
    assert out.count("made elsewhere (by sandbox)") == 3
    code, out, _ = cli(capsys, "status", name, "--format", "json")
    doc = json.loads(out)
    assert doc["api"] == LIVE
    assert [(r["name"], r["api"], r["made_elsewhere"]) for r in doc["jobs"]] == [
        ("a2", "sandbox", True), ("a10", "sandbox", True), ("mug", "sandbox", True)
    ]

    for argv in ((), ("--format", "json"), ("--format", "env")):
        code, out, err = cli(capsys, "output", name, *argv)
        assert (code, out) == (1, "")
        assert "3 succeeded job(s) were made against another API" in err
        assert LIVE in err and "runner status" in err and "runner apply" in err
    code, out, err = cli(capsys, "output", name, "mug")
    assert (code, out) == (1, "")
    assert "job 'mug' was made by sandbox" in err and LIVE in err


def test_switch_by_manifest_plans_creates_and_output_refuses(
    applied: Path, capsys: pytest.CaptureFixture[str], no_network: list[Any]
) -> None:
    """api.endpoint changed to the live URL: every job is create (endpoint); nothing is sent."""
    _set_endpoint(applied, LIVE)
    before = (applied.parent / "manifest.lock.yaml").read_bytes()
    _check_switched(capsys, applied)
    assert no_network == []
    assert (applied.parent / "manifest.lock.yaml").read_bytes() == before  # read-only commands


def test_switch_by_environment_is_the_same(
    applied: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    no_network: list[Any],
) -> None:
    """RUNNER_ENDPOINT counts for plan, status and output too (they take no --endpoint)."""
    monkeypatch.setenv("RUNNER_ENDPOINT", LIVE + "/")
    _check_switched(capsys, applied)
    assert no_network == []


def test_loopback_targets_accept_the_sandbox_entries(
    applied: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    no_network: list[Any],
) -> None:
    """A local server (`runner sandbox serve`) stands for the sandbox: nothing to redo."""
    monkeypatch.setenv("RUNNER_ENDPOINT", "http://127.0.0.1:9")
    code, out, _ = cli(capsys, "plan", applied.name, "--detailed-exitcode")
    assert code == 0 and "No changes" in out
    code, out, _ = cli(capsys, "output", applied.name, "--format", "json")
    assert code == 0 and sorted(json.loads(out)) == ["a10", "a2", "mug"]
    assert no_network == []


def test_output_needs_to_know_the_target(
    applied: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --lockfile and no manifest, output cannot tell the target: it says so, unless
    RUNNER_ENDPOINT names it."""
    lockfile = str(applied.parent / "manifest.lock.yaml")
    code, out, err = cli(capsys, "output", "gone.yaml", "--lockfile", lockfile)
    assert (code, out) == (1, "") and "api.endpoint" in err and "RUNNER_ENDPOINT" in err
    monkeypatch.setenv("RUNNER_ENDPOINT", "sandbox")
    code, out, _ = cli(capsys, "output", "gone.yaml", "mug", "--lockfile", lockfile)
    assert code == 0 and out.startswith("MUG_")


def test_output_reads_the_endpoint_without_the_images(
    applied: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A deploy job may have the manifest and lockfile but not the training images."""
    import shutil

    shutil.rmtree(applied.parent / "images")
    code, out, _ = cli(capsys, "output", applied.name, "a2")
    assert code == 0 and out.startswith("AA_")
    _set_endpoint(applied, LIVE)
    code, out, err = cli(capsys, "output", applied.name, "a2")
    assert code == 1 and "made by sandbox" in err


# -- lockfiles written before ``api`` existed ---------------------------------------------------


def _strip_api(lockfile: Path, results: list[str] | None = None) -> None:
    doc = yaml.safe_load(lockfile.read_text())
    for entry in doc["jobs"].values():
        entry.pop("api", None)
        entry.pop("answer", None)
        if results is not None:
            entry["results"] = list(results)
    lockfile.write_text("# Written by runner; do not edit.\n" + yaml.safe_dump(doc, sort_keys=False))


def test_legacy_sandbox_lockfile_is_read_as_sandbox_made(
    applied: Path, capsys: pytest.CaptureFixture[str], no_network: list[Any]
) -> None:
    lockfile = applied.parent / "manifest.lock.yaml"
    _strip_api(lockfile)
    code, out, _ = cli(capsys, "plan", applied.name, "--detailed-exitcode")
    assert code == 0  # sandbox target: still up to date
    _set_endpoint(applied, LIVE)
    code, out, _ = cli(capsys, "plan", applied.name, "--format", "json")
    assert {(j["action"], j["diff"]["api"]["old"]) for j in json.loads(out)["jobs"]} == {("create", "sandbox")}
    code, out, _ = cli(capsys, "output", applied.name)
    assert code == 1
    assert no_network == []


def test_legacy_entry_with_https_samples_counts_for_the_current_endpoint(
    applied: Path, capsys: pytest.CaptureFixture[str], no_network: list[Any]
) -> None:
    lockfile = applied.parent / "manifest.lock.yaml"
    _strip_api(lockfile, results=[CDN_URL])
    _set_endpoint(applied, LIVE)
    code, out, err = cli(capsys, "plan", applied.name, "--detailed-exitcode")
    assert code == 0 and "No changes" in out, err
    code, out, _ = cli(capsys, "status", applied.name, "--format", "json")
    assert {(r["api"], r["made_elsewhere"]) for r in json.loads(out)["jobs"]} == {(LIVE, False)}
    code, out, _ = cli(capsys, "output", applied.name, "--format", "json")
    assert code == 0 and len(json.loads(out)) == 3
    assert no_network == []


def test_noop_apply_adds_api_to_a_legacy_lockfile_once(
    applied: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lockfile = applied.parent / "manifest.lock.yaml"
    _strip_api(lockfile)
    legacy = lockfile.read_bytes()
    code, _, err = cli(capsys, "apply", "-q", applied.name)
    assert code == 0, err
    once = lockfile.read_bytes()
    assert once != legacy
    assert {e.api for e in read_lockfile(lockfile).entries.values()} == {"sandbox"}
    assert "api: sandbox" in once.decode()
    code, _, err = cli(capsys, "apply", "-q", applied.name)
    assert code == 0, err
    assert lockfile.read_bytes() == once  # then never again
