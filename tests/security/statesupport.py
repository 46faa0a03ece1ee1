"""Support for the state and symlink attacks: a temporary git repository holding a manifest
that was applied once against the embedded sandbox, a PR-like commit on top, and the real
``runner`` run as a subprocess with a private cache folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import yaml
from clisupport import git, run_cli
from support.cli import Run, pythonpath
from support.images import make_image

SECRET = "sk-state-Lk3Rb7Qw"


def run(*args: str, cwd: Path, cache: Path, env: dict[str, str] | None = None, timeout: float = 120) -> Run:
    """``python -m runner ARGS`` in ``cwd`` with a private cache folder."""
    full_env = {
        **os.environ,
        "VIMMERSE_API_KEY": SECRET,
        "CI": "true",
        "RUNNER_CACHE_DIR": str(cache),
        "RUNNER_SANDBOX_TRAIN_SECONDS": "0.05",
        "PYTHONPATH": pythonpath(),
        **(env or {}),
    }
    return run_cli(*args, cwd=cwd, env=full_env, timeout=timeout)


MANIFEST = """\
version: 1
api: {endpoint: sandbox}
jobs:
  - name: hero
    lora_prefix: HERO
    images: data/hero
"""


def make_repo(root: Path, manifest: str = MANIFEST) -> Path:
    """A git repository with ``runner.yaml`` and two images, committed on ``main``."""
    repo = root / "repo"
    (repo / "data" / "hero").mkdir(parents=True)
    make_image(repo / "data" / "hero" / "a.png", (16, 16), (10, 20, 30))
    make_image(repo / "data" / "hero" / "b.png", (16, 16), (40, 50, 60))
    (repo / "runner.yaml").write_text(manifest, encoding="utf-8")
    git(repo, "init", "-q", "-b", "main")
    (repo / ".gitignore").write_text(".runner/\n", encoding="utf-8")
    git(repo, "add", ".gitignore", "runner.yaml", "data")
    git(repo, "commit", "-q", "-m", "manifest")
    return repo


_TEMPLATES: dict[str, Path] = {}


def applied_repo(root: Path, cache: Path, template: Path | None = None) -> tuple[Path, str]:
    """``make_repo`` after one real apply, the lockfile committed; (repo, trigger word).

    With ``template`` (a folder for this test session), the applied repository is made once
    there and copied (symlinks as links) for each test: one apply instead of one per test.
    """
    if template is not None:
        source = _TEMPLATES.get(str(template))
        if source is None:
            source, _ = applied_repo(template, template / "cache")
            _TEMPLATES[str(template)] = source
        repo = root / "repo"
        shutil.copytree(source, repo, symlinks=True)
    else:
        repo = make_repo(root)
        result = run("apply", "runner.yaml", cwd=repo, cache=cache)
        assert result.code == 0, result.text
        git(repo, "add", "runner.lock.yaml")
        git(repo, "commit", "-q", "-m", "apply")
    word = lock_doc(repo / "runner.lock.yaml")["jobs"]["hero"]["trigger_word"]
    assert word.startswith("HERO_"), word
    return repo, word


def lock_doc(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return doc


def pr_commit(repo: Path, *paths: str, message: str = "PR") -> None:
    """Commit ``paths`` as a pull request would, force-adding ignored files."""
    git(repo, "checkout", "-q", "-B", "pr")
    git(repo, "add", "-f", "--", *paths)
    git(repo, "commit", "-q", "-m", message)


def snapshot(folder: Path) -> dict[str, bytes | str]:
    """Every entry under ``folder`` (files by content, links by target), to compare later."""
    out: dict[str, bytes | str] = {}
    if not folder.exists():
        return out
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            out[rel] = path.read_bytes()
        else:
            out[rel] = "dir"
    return out
