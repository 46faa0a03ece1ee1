"""The README: generated parts are current, promised sections exist, the quickstart runs as written."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
from support.cli import run_runner
from support.paths import REPO_ROOT

sys.path.insert(0, str(REPO_ROOT / "scripts"))
import gen_manifest_reference

README = REPO_ROOT / "README.md"


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(rf"^(#+) {re.escape(title)}\n(.*?)(?=^#{{1,2}} )", text, re.S | re.M)
    assert match, f"README has no section {title!r}"
    return match.group(2)


def test_manifest_reference_is_generated_from_the_current_schema() -> None:
    """`gen_manifest_reference.py --check` passes: the README's key table matches the schema."""
    assert gen_manifest_reference.main(["--check"]) == 0


def test_reference_check_fails_on_a_stale_readme(tmp_path: Path) -> None:
    """The check can fail: a README whose table lost a row is reported as out of date."""
    stale = tmp_path / "README.md"
    text = README.read_text(encoding="utf-8")
    stale.write_text(re.sub(r"^\| `api.burst` .*\n", "", text, count=1, flags=re.M), encoding="utf-8")
    assert stale.read_text(encoding="utf-8") != text
    assert gen_manifest_reference.main(["--check", "--readme", str(stale)]) == 1


def test_every_schema_key_is_in_the_reference() -> None:
    """Each property the schema defines has a row, with its description."""
    import json

    schema = json.loads((REPO_ROOT / "schemas" / "manifest.schema.json").read_text())
    text = README.read_text(encoding="utf-8")
    for name, node in schema["$defs"]["job"]["properties"].items():
        assert f"| `jobs[].{name}` |" in text and node["description"] in text
    for name in schema["properties"]["api"]["properties"]:
        assert f"| `api.{name}` |" in text


def test_exit_codes_and_commands_are_documented() -> None:
    """Every exit code constant and every CLI verb appears in the README."""
    from runner import errors
    from runner.cli_args import build_parser

    codes = _section("Exit codes")
    for name in dir(errors):
        if name.startswith("EXIT_"):
            assert f"| {getattr(errors, name)} |" in codes, name
    commands = _section("Commands")
    parser = build_parser()
    verbs = next(a for a in parser._actions if a.dest == "command").choices
    for verb in verbs:
        assert f"`runner {verb}" in commands, verb


def test_troubleshooting_covers_the_errors_a_user_can_hit() -> None:
    """401, 402, 403, 422, 429, uncertain jobs and a held lock each have an entry."""
    text = _section("Troubleshooting")
    for needle in ("401", "402", "403", "422", "429", "uncertain", "holds the lock", "invalid lockfile"):
        assert needle in text, needle


def test_ci_recipes_and_changelog_sections_exist() -> None:
    """The CI recipes section links both recipe files; the changelog (CHANGELOG.md, Keep a
    Changelog form, linked from the README) has an Unreleased section."""
    recipes = _section("CI recipes")
    for path in ("examples/ci/github-actions.yml", "examples/ci/gitlab-ci.yml"):
        assert f"({path})" in recipes and (REPO_ROOT / path).is_file()
    assert "](CHANGELOG.md)" in README.read_text(encoding="utf-8")
    changelog = (REPO_ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert changelog.startswith("# Changelog\n") and "keepachangelog.com" in changelog
    assert re.search(r"^## \[Unreleased\]\n\n### (Added|Changed|Security|Fixed)\n- ", changelog, re.M)


def _walkthrough_commands() -> list[str]:
    """The `runner ...` / `mkdir ...` commands of the five-minute walk-through, in order."""
    text = _section("From your own folder of images to a report, in five minutes")
    found = re.findall(r"`((?:runner|mkdir) [^`]+)`", text)
    # Commands joined with && (mkdir && cp) are split; reading docs of a flag is not a step.
    steps: list[str] = []
    for command in found:
        steps += [part.strip() for part in command.split("&&")]
    return [s for s in steps if not s.startswith("runner apply --")]


def test_five_minute_walkthrough_runs_as_written(tmp_path: Path) -> None:
    """Following the README from a copy of the checkout: init, validate, plan, apply, status, output, report.

    The only change: the scaffold's 10 s poll interval is cut to 200 ms to keep the test fast.
    """
    shutil.copytree(REPO_ROOT / "examples", tmp_path / "examples")
    env = dict(os.environ, RUNNER_SANDBOX_TRAIN_SECONDS="0.2")
    for var in ("RUNNER_ENDPOINT", "VIMMERSE_API_KEY"):
        env.pop(var, None)
    steps = _walkthrough_commands()
    verbs = [s.split()[1] if s.startswith("runner") else s.split()[0] for s in steps]
    assert verbs[:2] == ["mkdir", "cp"]
    for verb in ("init", "validate", "plan", "apply", "status", "output", "report"):
        assert verb in verbs, verb
    for step in steps:
        argv = shlex.split(step)
        if argv[0] == "mkdir":
            (tmp_path / argv[1]).mkdir()
            continue
        if argv[0] == "cp":  # cp -r examples/datasets/* my-loras/
            for source in sorted((tmp_path).glob(argv[2])):
                shutil.copytree(source, tmp_path / argv[3] / source.name)
            continue
        result = run_runner(*argv[1:], cwd=tmp_path, env=env, timeout=120)
        assert result.code == 0, f"{step}\n{result.stdout}\n{result.stderr}"
        if argv[1] == "init":
            manifest = tmp_path / argv[argv.index("-o") + 1]
            text = manifest.read_text(encoding="utf-8")
            assert "poll_interval: 10s" in text
            manifest.write_text(text.replace("poll_interval: 10s", "poll_interval: 200ms"), encoding="utf-8")
        if argv[1] == "output":
            assert re.fullmatch(r"[A-Z]+_[a-z0-9]{6}\n", result.stdout), result.stdout
    assert (tmp_path / "report.html").stat().st_size > 10_000


@pytest.mark.parametrize("doc", ["README.md", "examples/README.md"])
def test_documented_runner_commands_parse(doc: str) -> None:
    """Every `runner VERB ...` line in a code block parses with the real CLI (no stale flags)."""
    from runner.cli_args import build_parser

    parser = build_parser()
    text = (REPO_ROOT / doc).read_text(encoding="utf-8")
    checked = 0
    for block in re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            for command in re.findall(r"(?:^|&& |\$\()(runner [^&)|>]+)", line):
                argv = shlex.split(command)[1:]
                if argv[:2] == ["sandbox", "serve"] or not argv:
                    continue
                try:
                    parser.parse_args(argv)
                except SystemExit as exc:  # pragma: no cover - the failure message
                    raise AssertionError(f"{doc}: does not parse: {command}") from exc
                checked += 1
    assert checked > 0
    assert run_runner("--version").code == 0
