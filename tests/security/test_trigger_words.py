"""Trigger words are validated, never trusted (issue 12, item 5).

As an attacker would: a pull request that edits the lockfile's trigger words (a newline that
adds a ``BASH_ENV=`` line to ``$GITHUB_ENV``, ESC sequences, a GitHub workflow command, a
path that would turn the status poll into a request elsewhere), and a hostile API whose
200 carries such a word. ``runner`` runs as a real subprocess against a temporary git
repository and a loopback stand-in that records every request.
"""

from __future__ import annotations

import contextlib
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator
from support.apply import runner
from support.asgi import read_body
from support.manifests import lock_doc, write_manifest

from runner.api import wire
from runner.sandbox.config import SandboxConfig
from runner.shipped_schemas import load_schema

# What a pull request writes into the lockfile (and a hostile API into its answer).
HOSTILE_WORDS = {
    "dotenv": "SNKR_x\nBASH_ENV=/tmp/x",
    "escape": "SNKR_\x1b[2J\x1b]0;owned\x07",
    "workflow": "::error ::pwned",
    "workflow-in-word": "SNKR_x\n::set-output name=a::b",
    "path": "../../v1/admin",
    "slash": "SNKR_a/../../v1/admin",
    "trailing-newline": "SNKR_x\n",
    "bidi": "SNKR_\u202eevil",
    "space": "SNKR x",
    "legacy-command": "SNKR_##[error]x",
}
GOOD_WORDS = ["SNKR_k2x9", "A_1", "a", "x" * 128, "P000_0001", "My.Lora-v2_abc123", "0abc"]
BAD_WORDS = [*HOSTILE_WORDS.values(), "", "x" * 129, "-rf", ".hidden", "_x", "SNKR_k2x9 ", "ü_1", "a:b"]

CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def assert_printable(text: str) -> None:
    """No raw control character (bar newline) and no line a CI runner takes for a command."""
    assert not CONTROL.search(text), repr(text)
    for line in text.splitlines():
        assert not line.lstrip().startswith("::"), line
        assert "##[" not in line, line


# ----- the pattern ---------------------------------------------------------------------------


def _trigger_schema() -> dict[str, Any]:
    entry = load_schema("lockfile")
    found: dict[str, Any] | None = None

    def walk(node: Any) -> None:
        nonlocal found
        if isinstance(node, dict):
            if isinstance(node.get("properties"), dict) and "trigger_word" in node["properties"]:
                found = node["properties"]["trigger_word"]
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(entry)
    assert found is not None
    return found


def test_lockfile_schema_and_wire_share_one_pattern() -> None:
    """The schema refuses exactly what wire refuses: one pattern, written once in each."""
    assert _trigger_schema()["pattern"] == wire.TRIGGER_WORD_PATTERN


@pytest.mark.parametrize("word", GOOD_WORDS)
def test_plain_words_pass_both(word: str) -> None:
    """The sandbox's words and plausible live ones pass wire and the lockfile schema."""
    assert wire.is_trigger_word(word)
    assert Draft202012Validator(_trigger_schema()).is_valid(word)


@pytest.mark.parametrize("word", BAD_WORDS)
def test_anything_else_fails_both(word: str) -> None:
    """Newlines (a trailing one too: Python's ``$`` would let it through), controls, paths,
    spaces, a leading ``-``/``.``/``_``, more than 128 characters: refused by both."""
    assert not wire.is_trigger_word(word)
    assert not Draft202012Validator(_trigger_schema()).is_valid(word)


def test_the_sandbox_issues_only_plain_words() -> None:
    """The longest prefix the sandbox takes, plus its suffix, is still a plain word."""
    from runner.sandbox.training import new_trigger_word

    assert wire.is_trigger_word(new_trigger_word("P" + "x" * 63))
    assert wire.is_trigger_word(new_trigger_word("a.b-c_d"))


# ----- a pull request edits the lockfile -----------------------------------------------------


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=repo, check=True, capture_output=True,
    )


@pytest.fixture(scope="module")
def applied(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository whose manifest was applied once against the embedded sandbox, committed."""
    repo = tmp_path_factory.mktemp("repo")
    write_manifest(repo, n_jobs=2, url="sandbox", images_per_job=1, filename="m.yaml")
    result = runner("apply", "m.yaml", cwd=repo, env={"RUNNER_SANDBOX_TRAIN_SECONDS": "0.05"})
    assert result.code == 0, result.stderr
    _git(repo, "init", "-q")
    (repo / ".gitignore").write_text(".runner/\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "applied")
    return repo


def _pr(applied: Path, tmp_path: Path, word: str) -> Path:
    """A clone with one commit on top that sets job-000's trigger word to ``word``."""
    clone = tmp_path / "pr"
    subprocess.run(["git", "clone", "-q", str(applied), str(clone)], check=True, capture_output=True)
    lockfile = clone / "m.lock.yaml"
    doc = yaml.safe_load(lockfile.read_text())
    doc["jobs"]["job-000"]["trigger_word"] = word
    lockfile.write_text(yaml.safe_dump(doc, sort_keys=False))
    _git(clone, "commit", "-q", "-am", "pr: a better trigger word")
    return clone


@pytest.mark.parametrize("attack", sorted(HOSTILE_WORDS))
def test_a_crafted_lockfile_word_is_refused_at_read(applied: Path, tmp_path: Path, attack: str) -> None:
    """output (every format), status and plan refuse the lockfile (exit 1) with an error that
    names the file and the key path; nothing reaches stdout, stderr carries no raw control
    character and no workflow command."""
    clone = _pr(applied, tmp_path, HOSTILE_WORDS[attack])
    commands = [
        ("output", "m.yaml", "--format", "env"),
        ("output", "m.yaml", "--format", "json"),
        ("output", "m.yaml"),
        ("output", "m.yaml", "job-000"),
        ("status", "m.yaml"),
        ("status", "m.yaml", "--format", "json"),
        ("plan", "m.yaml", "--format", "markdown"),
    ]
    for args in commands:
        result = runner(*args, cwd=clone)
        assert result.code == 1, (args, result.stdout, result.stderr)
        assert result.stdout == "", (args, result.stdout)
        assert "m.lock.yaml" in result.stderr and "jobs.job-000.trigger_word" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
        assert_printable(result.stderr)


def test_a_crafted_lockfile_word_sends_nothing(applied: Path, tmp_path: Path) -> None:
    """apply and plan --refresh with ``../../v1/admin`` as a word: refused before any request
    (the lockfile is read first), so no authenticated request reaches another path."""
    clone = _pr(applied, tmp_path, "../../v1/admin")
    doc = lock_doc(clone / "m.lock.yaml")
    doc["jobs"]["job-000"]["status"] = "training"  # a word apply would poll
    (clone / "m.lock.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    with recording_api(tmp_path, "SNKR_unused") as (url, api):
        for args in (("apply", "m.yaml", "--endpoint", url), ("plan", "m.yaml", "--refresh")):
            result = runner(*args, cwd=clone, env={"RUNNER_ENDPOINT": url})
            assert result.code == 1, result.stderr
            assert "jobs.job-000.trigger_word" in result.stderr
        assert api.paths == []


# ----- a hostile API answers such a word -----------------------------------------------------


class RecordingApi:
    """POST /finetune answers ``word`` in ``data.trigger_word``; every request is recorded."""

    def __init__(self, word: str) -> None:
        self.word = word
        self.paths: list[tuple[str, str]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        self.paths.append((scope["method"], scope.get("raw_path", b"").decode("latin-1") or scope["path"]))
        if scope["path"].startswith("/_sandbox/"):
            status, answer = 404, b"{}"
        elif scope["method"] == "POST" and b"runner-idempotency-probe" in body:
            status, answer = 422, b'{"detail": [{"loc": ["body", "option"], "msg": "bad", "type": "x"}]}'
        elif scope["method"] == "POST":
            n = sum(1 for m, p in self.paths if m == "POST")
            status = 200
            answer = json.dumps({"data": {"id": f"asset{n}", "trigger_word": self.word}}).encode()
        else:
            status, answer = 200, b'{"data": {"status": "processing"}}'
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": answer})


@contextlib.contextmanager
def recording_api(tmp_path: Path, word: str) -> Iterator[tuple[str, RecordingApi]]:
    from runner.sandbox.serve import start_server

    app = RecordingApi(word)
    with start_server(SandboxConfig(state_dir=tmp_path / "unused"), app=app) as server:
        yield server.url, app


@pytest.mark.parametrize(
    "word", ["SNKR_x\n::set-output name=a::b", "../../x", "P000_\x1b[31mred", "P000_x\nBASH_ENV=/tmp/x"]
)
def test_a_hostile_answer_word_leaves_the_job_uncertain(tmp_path: Path, word: str) -> None:
    """The 200 carries an unsafe word: the job is uncertain (exit 3) with the raw answer kept
    and no trigger word; no request goes anywhere but POST /finetune and the free checks,
    a second apply sends nothing new, and no output prints the word raw."""
    with recording_api(tmp_path, word) as (url, api):
        write_manifest(tmp_path, n_jobs=1, url=url, images_per_job=1, filename="m.yaml")
        result = runner("apply", "m.yaml", cwd=tmp_path)
        assert result.code == 3, result.stderr
        assert_printable(result.stderr + result.stdout)
        entry = lock_doc(tmp_path / "m.lock.yaml")["jobs"]["job-000"]
        assert entry["status"] == "uncertain" and entry["trigger_word"] is None
        assert json.loads(entry["answer"])["data"]["trigger_word"] == word
        posts = [p for m, p in api.paths if m == "POST"]
        gets = [p for m, p in api.paths if m == "GET"]
        assert posts.count("/finetune") == len(posts) and len(posts) <= 2  # the job, and the free probe
        for path in gets:
            assert path.startswith(("/_sandbox/", "/finetune/")), path
            assert ".." not in path and "admin" not in path and "%2F" not in path.upper(), path
        seen = len(api.paths)

        again = runner("apply", "m.yaml", cwd=tmp_path)
        assert again.code == 3 and "--resubmit-uncertain" in again.stderr
        assert [p for m, p in api.paths[seen:] if m == "POST"] == []

        for args in (("status", "m.yaml"), ("status", "m.yaml", "--format", "json"),
                     ("output", "m.yaml", "--format", "env"), ("plan", "m.yaml", "--format", "markdown")):
            shown = runner(*args, cwd=tmp_path)
            assert shown.code in (0, 2), (args, shown.stderr)
            assert_printable(shown.stdout + shown.stderr)
        status = json.loads(runner("status", "m.yaml", "--format", "json", cwd=tmp_path).stdout)
        assert json.loads(status["jobs"][0]["answer"])["data"]["trigger_word"] == word  # kept, exact
        assert runner("output", "m.yaml", "--format", "env", cwd=tmp_path).stdout == ""


def test_a_decoy_next_to_an_odd_trigger_word_is_not_taken(tmp_path: Path) -> None:
    """``data.trigger_word`` is odd, a plain ``P000_...`` string sits elsewhere: not a word."""
    body = {"data": {"id": "a1", "trigger_word": "P000_x\nBASH_ENV=/tmp/x", "note": "P000_decoy"}}
    got = wire.read_submit(json.dumps(body).encode(), "P000")
    assert got.trigger_word is None and got.asset_id == "a1"

