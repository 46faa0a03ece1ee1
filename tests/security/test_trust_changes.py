"""Issue 12, item 2, as an attacker does it: a pull request points ``api.endpoint`` at
another host and ``api.api_key_env`` at another secret of the CI job. Before the fix the
plan showed only "resume"; ``plan --refresh`` (before review) and apply (after merge) sent
that secret, as the API key, to the new host.

The reviewed ``main`` is a manifest applied against a real sandbox on loopback (trainings
still running: every job plans as ``resume``), its lockfile committed. The other host is a
socket on a non-loopback address of this machine that records every connection. Closed
when the plan shows the trust change (old → new, in text, markdown and json, and as a change
for ``--detailed-exitcode``), ``plan --refresh``, ``status --refresh`` and ``apply`` exit 1
with a clear message and open no connection to it (nor send anything to the sandbox), and
only ``apply --allow-trust-change`` — an explicit decision after review — goes ahead.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from jsonschema import Draft202012Validator
from leaksupport import (
    AWS,
    KEY,
    Recorder,
    Run,
    assert_no_leak,
    attacker_host,
    commit,
    environment,
    git,
    lock_doc,
    make_repo,
    manifest_text,
    pull_request,
    run,
)
from support.apply import ledger, sandbox

from runner.shipped_schemas import load_schema

REFUSED = "trust change"


@dataclass
class World:
    url: str
    template: Path  # reviewed main, applied with --no-wait: both jobs still training
    attacker: Recorder


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("trust")
    with attacker_host() as attacker, sandbox(root / "sandbox-state", train_seconds=600) as url:
        repo = make_repo(root, manifest_text(url))
        applied = run("apply", "m.yaml", "--no-wait", cwd=repo)
        assert applied.code == 3, applied.text  # submitted, still training
        commit(repo, "apply: lockfile", "m.lock.yaml")
        entries = lock_doc(repo / "m.lock.yaml")["jobs"]
        assert {(e["status"], e["api"], e["api_key_env"]) for e in entries.values()} == {
            ("training", "sandbox", "VIMMERSE_API_KEY")
        }
        yield World(url, repo, attacker)


@pytest.fixture
def repo(world: World, tmp_path: Path) -> Path:
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(world.template), str(clone))
    return clone


def _connections(world: World) -> int | None:
    return None if world.attacker.connections is None else len(world.attacker.connections)


def _attack(world: World) -> str:
    return manifest_text(world.attacker.url, api="  api_key_env: AWS_SECRET_ACCESS_KEY\n")


def _plans(repo: Path) -> dict[str, Run]:
    out = {}
    for fmt in ("text", "markdown", "json"):
        result = run("plan", "m.yaml", "--format", fmt, "--detailed-exitcode", cwd=repo)
        (repo / f"plan.{fmt}").write_text(result.stdout, encoding="utf-8")
        out[fmt] = result
    return out


def test_endpoint_and_key_variable_change_is_shown_and_refused(world: World, repo: Path) -> None:
    pull_request(repo, _attack(world), "use our new API")
    new = world.attacker.url
    connections = _connections(world)
    before = ledger(world.url, KEY)
    lock_before = (repo / "m.lock.yaml").read_bytes()

    plans = _plans(repo)
    assert all(p.code == 2 for p in plans.values()), {k: p.text for k, p in plans.items()}
    text = plans["text"].stdout
    assert "TRUST CHANGE" in text
    assert f"api.endpoint: sandbox → {new}" in text
    assert "api.api_key_env: VIMMERSE_API_KEY → AWS_SECRET_ACCESS_KEY" in text
    assert text.index("TRUST CHANGE") < text.index("job(s) will be")  # before the jobs
    markdown = plans["markdown"].stdout
    assert "[!WARNING]" in markdown and markdown.index("[!WARNING]") < markdown.index("| action |")
    assert f"`api.endpoint`: `sandbox` → `{new}`" in markdown
    assert "`api.api_key_env`: `VIMMERSE_API_KEY` → `AWS_SECRET_ACCESS_KEY`" in markdown
    doc = json.loads(plans["json"].stdout)
    Draft202012Validator(load_schema("plan")).validate(doc)
    assert doc["trust"] == {
        "api": new,
        "api_key_env": "AWS_SECRET_ACCESS_KEY",
        "changes": [
            {"field": "api.endpoint", "old": ["sandbox"], "new": new},
            {"field": "api.api_key_env", "old": ["VIMMERSE_API_KEY"], "new": "AWS_SECRET_ACCESS_KEY"},
        ],
        "needs_approval": True,
        "variables": [],
    }

    refusals = [run(*argv, cwd=repo) for argv in (
        ["plan", "m.yaml", "--refresh"], ["apply", "m.yaml"], ["apply", "m.yaml", "-v", "--log-format", "json"],
    )]
    for result in refusals:
        assert result.code == 1, result.text
        assert REFUSED in result.stderr and "--allow-trust-change" in result.stderr, result.stderr
        assert "Nothing was sent" in result.stderr
    # status --refresh asks only about entries made against the API targeted now: none here.
    status = run("status", "m.yaml", "--refresh", "--format", "json", cwd=repo)
    assert all(row["made_elsewhere"] for row in json.loads(status.stdout)["jobs"]), status.text
    refusals.append(status)
    assert _connections(world) == connections  # no connection to the other host at all
    after = ledger(world.url, KEY)
    assert (after["posts"], after["status_checks"]) == (before["posts"], before["status_checks"])
    assert (repo / "m.lock.yaml").read_bytes() == lock_before
    assert_no_leak([KEY, AWS], runs=[*plans.values(), *refusals], roots=[repo])


def test_key_variable_change_alone_is_refused_while_jobs_resume(world: World, repo: Path) -> None:
    """The reviewed API is another host (the lockfile's entries were made there); the pull
    request changes only api_key_env: the jobs stay ``resume``, the plan still flags it."""
    new = world.attacker.url
    # Reviewed main, as if made against the other host: manifest and lock entries say so.
    (repo / "m.yaml").write_text(manifest_text(new), encoding="utf-8")
    lock = yaml.safe_load((repo / "m.lock.yaml").read_text(encoding="utf-8"))
    for entry in lock["jobs"].values():
        entry["api"] = new
    (repo / "m.lock.yaml").write_text("# Written by runner; do not edit.\n" + yaml.safe_dump(lock, sort_keys=False))
    commit(repo, "reviewed: the API moved")
    reviewed = run("plan", "m.yaml", "--detailed-exitcode", "--format", "json", cwd=repo)
    assert reviewed.code == 2 and json.loads(reviewed.stdout)["trust"]["changes"] == [], reviewed.text

    pull_request(repo, manifest_text(new, api="  api_key_env: AWS_SECRET_ACCESS_KEY\n"), "rename the key")
    connections = _connections(world)
    plans = _plans(repo)
    doc = json.loads(plans["json"].stdout)
    assert doc["summary"]["resume"] == 2 and doc["summary"]["create"] == 0
    assert doc["trust"]["changes"] == [
        {"field": "api.api_key_env", "old": ["VIMMERSE_API_KEY"], "new": "AWS_SECRET_ACCESS_KEY"}
    ]
    assert "api.api_key_env: VIMMERSE_API_KEY → AWS_SECRET_ACCESS_KEY" in plans["text"].stdout
    refusals = [run(*argv, cwd=repo) for argv in (
        ["plan", "m.yaml", "--refresh"], ["status", "m.yaml", "--refresh"], ["apply", "m.yaml"],
    )]
    assert all(r.code == 1 and REFUSED in r.stderr for r in refusals), [r.text for r in refusals]
    assert _connections(world) == connections
    assert_no_leak([KEY, AWS], runs=[*plans.values(), *refusals], roots=[repo])

    # The control: an explicit decision goes ahead, and does reach the other host.
    approved = run("apply", "m.yaml", "--allow-trust-change", cwd=repo, timeout=90)
    assert approved.code == 1  # the stand-in speaks no TLS: "cannot reach the API"
    assert REFUSED not in approved.stderr
    if connections is not None:
        assert (_connections(world) or 0) > connections, approved.text


def test_approved_change_is_recorded_once(world: World, repo: Path) -> None:
    """A change the key keeps on this machine is shown but needs no approval; the apply
    records the new variable, and the next plan has nothing to flag."""
    pull_request(repo, manifest_text(world.url, api="  api_key_env: LORA_API_KEY\n"))
    env = environment(LORA_API_KEY=KEY, RUNNER_SANDBOX_TRAIN_SECONDS="0.05")
    shown = run("plan", "m.yaml", "--format", "json", cwd=repo, env=env)
    trust = json.loads(shown.stdout)["trust"]
    assert trust["changes"] == [{"field": "api.api_key_env", "old": ["VIMMERSE_API_KEY"], "new": "LORA_API_KEY"}]
    assert trust["needs_approval"] is False
    text = run("plan", "m.yaml", cwd=repo, env=env).stdout
    assert "no approval needed" in text
    applied = run("apply", "m.yaml", "--no-wait", cwd=repo, env=env)
    assert applied.code == 3, applied.text  # still training on the sandbox (600 s)
    assert {e["api_key_env"] for e in lock_doc(repo / "m.lock.yaml")["jobs"].values()} == {"LORA_API_KEY"}
    after = json.loads(run("plan", "m.yaml", "--format", "json", cwd=repo, env=env).stdout)
    assert after["trust"]["changes"] == []


def test_catalog_markdown_starts_with_every_trust_change(world: World, repo: Path) -> None:
    """Several manifests in one comment: the warning comes before the totals table."""
    pull_request(repo, _attack(world))
    (repo / "other.yaml").write_text(manifest_text(world.url), encoding="utf-8")
    result = run("plan", "m.yaml", "other.yaml", "--format", "markdown", "--detailed-exitcode", cwd=repo)
    assert result.code == 2, result.text
    out = result.stdout
    assert out.startswith("> [!WARNING]\n> **Trust changes**"), out[:300]
    assert f"`m.yaml`: `api.endpoint`: `sandbox` → `{world.attacker.url}`" in out
    assert "`other.yaml`" not in out.split("\n\n", 1)[0]
    doc = json.loads(run("plan", "m.yaml", "other.yaml", "--format", "json", cwd=repo).stdout)
    Draft202012Validator(load_schema("plan")).validate(doc)
    assert [bool(m["trust"]["changes"]) for m in doc["manifests"]] == [True, False]


# -- the rule, as a table (runner.engine.trust.assess: pure, no key, no I/O) --------------------------

LIVE = "https://api.vimmerse.net"


def _entry(api: str | None, key_env: str | None = "VIMMERSE_API_KEY") -> object:
    from runner.models import LockEntry

    return LockEntry(fingerprint="sha256:" + "0" * 64, status="succeeded", api=api, api_key_env=key_env)


@pytest.mark.parametrize(
    "target, key_env, entries, changed, approval",
    [
        (LIVE, "VIMMERSE_API_KEY", [], [], False),  # no entries: nothing to compare
        (LIVE, "VIMMERSE_API_KEY", [_entry(LIVE)], [], False),
        (LIVE, "VIMMERSE_API_KEY", [_entry("sandbox")], ["api.endpoint"], True),  # sandbox to live
        ("https://evil.example", "VIMMERSE_API_KEY", [_entry(LIVE)], ["api.endpoint"], True),
        (LIVE, "AWS_SECRET_ACCESS_KEY", [_entry(LIVE)], ["api.api_key_env"], True),
        (LIVE, "AWS_SECRET_ACCESS_KEY", [_entry(LIVE, None)], ["api.api_key_env"], True),  # legacy: the default
        (LIVE, "VIMMERSE_API_KEY", [_entry(LIVE, None)], [], False),
        (LIVE, "VIMMERSE_API_KEY", [_entry(None)], [], False),  # legacy api: says nothing
        (LIVE, "VIMMERSE_API_KEY", [_entry("sandbox"), _entry(LIVE)], [], False),  # made here before
        ("http://127.0.0.1:8123", "VIMMERSE_API_KEY", [_entry("sandbox")], [], False),  # loopback accepts sandbox
        ("sandbox", "VIMMERSE_API_KEY", [_entry(LIVE)], ["api.endpoint"], False),  # stays on this machine
        ("sandbox", "OTHER_KEY", [_entry("sandbox")], ["api.api_key_env"], False),
    ],
)
def test_assess(target: str, key_env: str, entries: list[object], changed: list[str], approval: bool) -> None:
    from runner.engine.trust import assess

    trust = assess(target, key_env, entries)  # type: ignore[arg-type]
    assert [c.field for c in trust.changes] == changed
    assert trust.needs_approval is approval


def test_views_escape_outside_text() -> None:
    """An old endpoint from a hand-edited lockfile cannot inject lines or CI commands."""
    from runner.engine.trust import Trust, TrustChange, markdown_block, text_block

    trust = Trust(LIVE, "VIMMERSE_API_KEY", (TrustChange("api.endpoint", ("x\n::error::boom ##[group]`|",), LIVE),))
    text = "\n".join(text_block(trust))
    assert "\n::" not in text and "##[" not in text and "\\n" in text
    markdown = "\n".join(markdown_block(trust))
    assert "\n::" not in markdown and "##[" not in markdown and "`|" not in markdown
