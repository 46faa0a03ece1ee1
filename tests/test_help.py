"""``--help``: every subcommand has a one-line description and an example; every flag and
positional says what it is; commands that take MANIFEST read runner.yaml when none is named."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from support.cli import run_runner
from support.manifests import write_manifest

from runner.cli_args import build_parser


def _commands(parser: argparse.ArgumentParser, prefix: str = "runner") -> list[tuple[str, argparse.ArgumentParser]]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found.append((f"{prefix} {name}", sub))
                found += _commands(sub, f"{prefix} {name}")
    return found


COMMANDS = _commands(build_parser())


def test_every_command_is_walked() -> None:
    names = {name for name, _ in COMMANDS}
    assert {f"runner {v}" for v in ("validate", "plan", "apply", "status", "doctor", "init", "output", "report", "schema", "sandbox")} <= names
    assert "runner sandbox serve" in names


@pytest.mark.parametrize("name, parser", COMMANDS, ids=[n for n, _ in COMMANDS])
def test_every_action_has_help_and_the_command_an_example(name: str, parser: argparse.ArgumentParser) -> None:
    assert parser.description and "\n" not in parser.description.strip(), name
    assert parser.epilog and parser.epilog.startswith("examples:\n  runner "), name
    assert isinstance(parser.formatter_class, type) and issubclass(parser.formatter_class, argparse.RawDescriptionHelpFormatter)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            continue
        label = "/".join(action.option_strings) or action.metavar or action.dest
        assert action.help and action.help != argparse.SUPPRESS, f"{name}: {label} has no help"
    text = parser.format_help()
    assert "examples:\n" in text


def test_top_level_help_has_examples() -> None:
    result = run_runner("--help")
    assert result.code == 0
    assert "examples:\n  runner init" in result.stdout and "runner.yaml" in result.stdout


@pytest.mark.parametrize("verb", ["validate", "plan", "status"])
def test_manifest_defaults_to_runner_yaml(tmp_path: Path, verb: str) -> None:
    write_manifest(tmp_path, filename="runner.yaml")
    result = run_runner(verb, cwd=tmp_path)
    assert result.code == 0, result.stdout + result.stderr
    assert "runner.yaml" in result.stdout or "demo" in result.stdout


@pytest.mark.parametrize("verb", ["validate", "plan", "apply", "status", "output", "report"])
def test_missing_runner_yaml_is_a_clear_error(tmp_path: Path, verb: str) -> None:
    args = [verb, "-o", "r.html"] if verb == "report" else [verb]
    result = run_runner(*args, cwd=tmp_path)
    assert result.code == 1
    assert "no MANIFEST named and no runner.yaml in" in result.stderr
    assert "Traceback" not in result.stderr


def test_output_name_alone_reads_runner_yaml(tmp_path: Path) -> None:
    """``runner output NAME``: a name that is not a manifest is the job, in runner.yaml."""
    write_manifest(tmp_path, filename="runner.yaml")
    result = run_runner("output", "demo", cwd=tmp_path)
    assert "no MANIFEST named" not in result.stderr
    assert "runner.lock.yaml: no lockfile yet; run `runner apply runner.yaml` first" in result.stderr
