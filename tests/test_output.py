"""``runner output``: trigger words of succeeded jobs for scripts, JSON and dotenv files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli import run_runner

from runner.commands.output import env_name, render
from runner.errors import UsageError
from runner.models import LockEntry
from runner.state.lockfile import LockState


def _lock(tmp_path: Path) -> Path:
    manifest = tmp_path / "m.yaml"
    manifest.write_text("version: 1\njobs: []\n")  # output reads only the lockfile
    state = LockState(
        {
            "red-sneaker": LockEntry("sha256:" + "a" * 64, "succeeded", "id1", "SNKR_k2x9", "FluxFinetune"),
            "mug.v2": LockEntry("sha256:" + "b" * 64, "succeeded", "id2", "MUG_abc123", "FluxFinetune"),
            "broken": LockEntry("sha256:" + "c" * 64, "failed", "id3", "BRK_zzz", error={"status": 0, "message": "x"}),
            "queued": LockEntry("sha256:" + "d" * 64, "training", "id4", "Q_111"),
        },
        serial=3,
    )
    (tmp_path / "m.lock.yaml").write_text(state.render())
    return manifest


def test_one_name_prints_the_word_alone(tmp_path: Path) -> None:
    """`runner output m.yaml NAME` prints just the trigger word, for $(...) in scripts."""
    _lock(tmp_path)
    result = run_runner("output", "m.yaml", "red-sneaker", cwd=tmp_path)
    assert (result.code, result.stdout) == (0, "SNKR_k2x9\n")


def test_unfinished_or_unknown_job_is_an_error_not_an_empty_word(tmp_path: Path) -> None:
    """A failed, training or unknown job exits 1 with a reason and prints nothing on stdout."""
    _lock(tmp_path)
    for name, words in (("broken", "failed"), ("queued", "training"), ("nope", "no job")):
        result = run_runner("output", "m.yaml", name, cwd=tmp_path)
        assert result.code == 1 and result.stdout == ""
        assert words in result.stderr


def test_json_and_env_formats_list_succeeded_jobs(tmp_path: Path) -> None:
    """JSON is a name -> word map; env lines use variable-safe names; unfinished jobs are left out."""
    _lock(tmp_path)
    as_json = run_runner("output", "m.yaml", "--format", "json", cwd=tmp_path)
    assert json.loads(as_json.stdout) == {"mug.v2": "MUG_abc123", "red-sneaker": "SNKR_k2x9"}
    as_env = run_runner("output", "m.yaml", "--format", "env", cwd=tmp_path)
    assert as_env.stdout == "MUG_V2=MUG_abc123\nRED_SNEAKER=SNKR_k2x9\n"
    text = run_runner("output", "m.yaml", cwd=tmp_path)
    assert text.stdout.split() == ["mug.v2", "MUG_abc123", "red-sneaker", "SNKR_k2x9"]


def test_journal_left_by_a_crash_is_replayed(tmp_path: Path) -> None:
    """A trigger word only in the journal (apply killed) is already given out."""
    _lock(tmp_path)
    entry = LockEntry("sha256:" + "d" * 64, "succeeded", "id4", "Q_111").to_dict()
    (tmp_path / "m.lock.journal").write_text(json.dumps({"job": "queued", "entry": entry}) + "\n")
    result = run_runner("output", "m.yaml", "queued", cwd=tmp_path)
    assert (result.code, result.stdout) == (0, "Q_111\n")


def test_no_lockfile_yet_says_to_apply(tmp_path: Path) -> None:
    """Before the first apply there is nothing to output: exit 1 and a hint."""
    (tmp_path / "m.yaml").write_text("version: 1\n")
    result = run_runner("output", "m.yaml", cwd=tmp_path)
    assert result.code == 1 and "runner apply" in result.stderr


def test_env_names_that_collide_are_refused() -> None:
    """Two jobs that map to one variable name would silently overwrite: refuse instead."""
    assert env_name("9lives") == "_9LIVES"
    with pytest.raises(UsageError):
        render({"a-b": "X_1", "a.b": "X_2"}, "env")
