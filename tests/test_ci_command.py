"""CI runs exactly the README's test command: lint, types, then the suite, from a clean clone."""

from __future__ import annotations

import re

from support.paths import REPO_ROOT

COMMAND = (
    "python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'"
    " && .venv/bin/ruff check . && .venv/bin/mypy && .venv/bin/python -m pytest -q"
)


def test_readme_and_ci_run_the_same_command() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Running the tests"):]
    shown = re.search(r"```sh\n(.+?)\n```", section, re.S)
    assert shown is not None and shown.group(1) == COMMAND
    ci = (REPO_ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert COMMAND in ci.splitlines()


def test_mypy_is_strict_in_the_project_config() -> None:
    config = (REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8")
    mypy = config[config.index("[tool.mypy]"):]
    mypy = mypy[: mypy.index("\n[", 1)] if "\n[" in mypy[1:] else mypy
    assert re.search(r"^strict = true$", mypy, re.M), mypy
