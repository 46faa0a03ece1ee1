"""The `runner-validate` pre-commit hook (.pre-commit-hooks.yaml), run the way a team runs it.

`pre-commit try-repo` needs the hook repository's git history: the files a hook install
uses (pyproject, README, runner/, schemas/, the hooks file) are copied from this checkout
into a temporary repository with one commit, so the test checks the working tree, not the
last commit. pre-commit then builds the hook's environment as it would for a user
(`language: python`: a virtualenv and `pip install .` from the package index), which takes
most of this test's time; try-repo uses a fresh store on every call, so it runs once.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support.images import make_image
from support.paths import REPO_ROOT

HOOKS = REPO_ROOT / ".pre-commit-hooks.yaml"
BIN = Path(sys.executable).parent


def _hook() -> dict:
    hooks = yaml.safe_load(HOOKS.read_text(encoding="utf-8"))
    return next(h for h in hooks if h["id"] == "runner-validate")


def test_hook_definition() -> None:
    """One `runner-validate` hook: `runner validate` in a python environment, file names passed."""
    hook = _hook()
    assert hook["entry"] == "runner validate"
    assert hook["language"] == "python"
    assert hook.get("pass_filenames", True) is True


@pytest.mark.parametrize(
    ("path", "matched"),
    [
        ("runner.yaml", True),
        ("runner.yml", True),
        ("manifests/products.runner.yaml", True),
        ("a/b/runner.yaml", True),
        ("runner.lock.yaml", False),
        ("manifests/products.runner.lock.yaml", False),
        ("products.runner.lock.journal", False),
        ("myrunner.yaml", False),
        ("runner.yaml.bak", False),
        (".github/workflows/runner.yml", False),
    ],
)
def test_hook_files_pattern(path: str, matched: bool) -> None:
    """`files` picks runner.yaml and NAME.runner.yaml anywhere; `exclude` drops lockfiles and
    the workflow the GitHub recipe suggests naming `.github/workflows/runner.yml`."""
    hook = _hook()
    hit = re.search(hook["files"], path) is not None
    if hit and "exclude" in hook:
        hit = re.search(hook["exclude"], path) is None
    assert hit is matched


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid",
         "-c", "init.defaultBranch=main", "-c", "commit.gpgsign=false", *args],
        cwd=cwd, check=True, capture_output=True, timeout=60,
    )


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_try_repo_validates_manifests_and_skips_lockfiles(tmp_path: Path) -> None:
    """`pre-commit try-repo CLONE runner-validate --all-files` in a repository holding a valid
    manifest, an invalid one, a lockfile and an unrelated YAML file: the hook fails, naming
    the invalid manifest's errors at file:line:col, passes the valid one, never reads the
    lockfile nor the other YAML file."""
    pre_commit = shutil.which("pre-commit", path=str(BIN)) or shutil.which("pre-commit")
    if not pre_commit:
        message = "pre-commit is not installed (pip install -e '.[test]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    hook_repo = tmp_path / "hook"
    hook_repo.mkdir()
    for name in ("pyproject.toml", "README.md", ".pre-commit-hooks.yaml"):
        shutil.copy2(REPO_ROOT / name, hook_repo / name)
    for folder in ("runner", "schemas"):
        shutil.copytree(REPO_ROOT / folder, hook_repo / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    _git(hook_repo, "init", "-q")
    _git(hook_repo, "add", ".")
    _git(hook_repo, "commit", "-q", "-m", "hook repository")

    use = tmp_path / "use"
    (use / "manifests").mkdir(parents=True)
    for i in range(2):
        make_image(use / "images" / "demo" / f"{i:03d}.png", color=(60 * i, 90, 160))
    (use / "runner.yaml").write_text(
        "version: 1\napi:\n  endpoint: sandbox\njobs:\n"
        "  - name: demo\n    lora_prefix: DEMO\n    images: images/demo\n", encoding="utf-8")
    (use / "manifests" / "bad.runner.yaml").write_text(
        "version: 1\njobs:\n  - name: bad\n    lora_prefix: BAD\n    images: missing\n"
        "    bogus: 1\n", encoding="utf-8")
    # Neither is a manifest: the hook must not be given them.
    (use / "runner.lock.yaml").write_text("version: 1\nnot: a manifest\n", encoding="utf-8")
    (use / "other.yaml").write_text("jobs: 3\n", encoding="utf-8")
    _git(use, "init", "-q")
    _git(use, "add", ".")

    env = dict(os.environ, PRE_COMMIT_HOME=str(tmp_path / "pre-commit-home"),
               PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
    for var in ("VIMMERSE_API_KEY", "RUNNER_ENDPOINT", "PRE_COMMIT", "SKIP"):
        env.pop(var, None)
    result = subprocess.run(
        [pre_commit, "try-repo", str(hook_repo), "runner-validate", "--all-files", "--color=never"],
        cwd=use, env=env, capture_output=True, text=True, timeout=220, check=False,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1, out
    assert "runner validate" in out and "Failed" in out, out
    assert re.search(r"manifests/bad\.runner\.yaml:\d+:\d+: jobs\[0\]\.bogus: unknown key", out), out
    assert re.search(r"manifests/bad\.runner\.yaml:\d+:\d+: jobs\[0\]\.images: file not found", out), out
    assert "runner.yaml: valid (1 job, 2 images)" in out, out
    assert "runner.lock.yaml" not in out and "other.yaml" not in out, out
