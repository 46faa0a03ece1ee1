"""Several manifests (and globs) on one command line: own lockfiles, one summary, worst exit code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli import run_runner
from support.manifests import write_manifest

from runner.errors import UsageError
from runner.manifest.many import expand_manifests, worst


def _catalog(tmp_path: Path) -> tuple[Path, Path]:
    a = write_manifest(tmp_path / "a", jobs=[{"name": "one", "lora_prefix": "ONE"}], filename="a.yaml")
    b = write_manifest(
        tmp_path / "b", jobs=[{"name": "two", "lora_prefix": "TWO"}, {"name": "three", "lora_prefix": "THREE"}],
        filename="b.yaml",
    )
    return a, b


def test_globs_expand_sorted_without_lockfiles_or_repeats(tmp_path: Path) -> None:
    """A glob is sorted, skips *.lock.yaml, drops repeats; a glob matching nothing is a usage error."""
    for name in ("b.yaml", "a.yaml", "a.lock.yaml"):
        (tmp_path / name).write_text("version: 1\n")
    pattern = str(tmp_path / "*.yaml")
    assert expand_manifests([pattern, str(tmp_path / "a.yaml")]) == [
        str(tmp_path / "a.yaml"),
        str(tmp_path / "b.yaml"),
    ]
    assert expand_manifests(["missing.yaml"]) == ["missing.yaml"]  # reported by the command
    with pytest.raises(UsageError):
        expand_manifests([str(tmp_path / "nothing*.yaml")])
    assert worst([0, 2, 1]) == 1 and worst([0, 2]) == 2 and worst([3, 130, 4]) == 130 and worst([]) == 0


def test_plan_many_manifests_one_summary_and_worst_code(tmp_path: Path) -> None:
    """Each manifest is planned against its own lockfile; totals close the text; exit 2 for changes."""
    a, b = _catalog(tmp_path)
    result = run_runner("plan", str(tmp_path / "*" / "*.yaml"), "--detailed-exitcode")
    assert result.code == 2, result.stderr
    assert f"{a}:" in result.stdout and f"{b}:" in result.stdout
    assert result.stdout.rstrip().splitlines()[-1].startswith("Total over 2 manifests: 3 create")

    doc = json.loads(run_runner("plan", str(a), str(b), "--format", "json").stdout)
    assert [m["manifest"] for m in doc["manifests"]] == [str(a), str(b)]
    assert doc["summary"]["create"] == 3 and doc["errors"] == []

    markdown = run_runner("plan", str(a), str(b), "--format", "markdown").stdout
    assert markdown.startswith("## runner plan: 2 manifests")
    assert "| **total** | **3** |" in markdown and markdown.count("### runner plan:") == 2


def test_one_broken_manifest_does_not_hide_the_others(tmp_path: Path) -> None:
    """An invalid manifest is reported, the rest still planned, and the exit code is the worst (1)."""
    a, _b = _catalog(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\njobs:\n  - name: x\n    option: Nope\n    images: none\n")
    result = run_runner("plan", str(bad), str(a), "--detailed-exitcode")
    assert result.code == 1
    assert f"{a}:" in result.stdout and "not planned" in result.stdout
    assert "bad.yaml" in result.stderr
    md = run_runner("plan", str(bad), str(a), "--format", "markdown")
    assert md.code == 1 and "could not be planned" in md.stdout


def test_lockfile_flag_is_refused_with_many_manifests(tmp_path: Path) -> None:
    """One --lockfile cannot serve several manifests: usage error, exit 1."""
    a, b = _catalog(tmp_path)
    for verb in ("plan", "status"):
        result = run_runner(verb, str(a), str(b), "--lockfile", str(tmp_path / "x.lock.yaml"))
        assert result.code == 1 and "--lockfile" in result.stderr


def test_validate_accepts_globs(tmp_path: Path) -> None:
    """validate expands a quoted glob itself and reports each manifest."""
    a, b = _catalog(tmp_path)
    result = run_runner("validate", str(tmp_path / "*" / "*.yaml"))
    assert result.code == 0, result.stdout + result.stderr
    assert f"{a}: valid" in result.stdout and f"{b}: valid" in result.stdout


def test_status_many_manifests_plain_when_piped(tmp_path: Path) -> None:
    """Piped status prints plain columns per manifest and one total line; JSON wraps each manifest."""
    a, b = _catalog(tmp_path)
    result = run_runner("status", str(a), str(b))
    assert result.code == 0, result.stderr
    assert "\x1b[" not in result.stdout and "┃" not in result.stdout
    assert result.stdout.count("JOB  ") == 2
    assert result.stdout.rstrip().endswith("Total over 2 manifests: 3 absent.")
    doc = json.loads(run_runner("status", str(a), str(b), "--format", "json").stdout)
    assert [m["manifest"] for m in doc["manifests"]] == [str(a), str(b)]


def test_status_is_a_rich_table_on_a_terminal(tmp_path: Path) -> None:
    """On a TTY status draws a rich table with coloured statuses."""
    import os
    import pty
    import subprocess
    import sys

    from support.paths import REPO_ROOT

    a, _b = _catalog(tmp_path)
    leader, follower = pty.openpty()
    env = dict(os.environ, COLUMNS="120", TERM="xterm-256color")
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runner", "status", str(a)],
        stdout=follower, stderr=subprocess.PIPE, cwd=REPO_ROOT, env=env,
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=30) == 0
    os.close(leader)
    screen = b"".join(chunks).decode()
    assert "┏" in screen and "trigger word" in screen and "one" in screen
