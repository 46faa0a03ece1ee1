"""Packaging: the distribution is `lora-runner`, the command and the import package are `runner`.

The name `runner` on the package index belongs to an unrelated project (issue 14), so the
wheel must be called `lora-runner` while `pip install lora-runner` still gives the `runner`
command. The wheel is built offline with hatchling's PEP 517 hook (hatchling is in the test
extra), then installed without dependencies into a folder to read its metadata as pip sees it.
"""

from __future__ import annotations

import email.parser
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from support.paths import REPO_ROOT

import runner


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-c", "import sys; from hatchling.build import build_wheel; "
         "print(build_wheel(sys.argv[1]))", str(out)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stderr
    return out / result.stdout.strip().splitlines()[-1]


def _dist_info(wheel: Path, name: str) -> str:
    with zipfile.ZipFile(wheel) as archive:
        member = next(n for n in archive.namelist() if n.endswith(f".dist-info/{name}"))
        return archive.read(member).decode("utf-8")


def test_wheel_is_named_lora_runner_with_the_runner_command(wheel: Path) -> None:
    """METADATA says Name: lora-runner, the version is runner.__version__, the script is `runner`."""
    assert wheel.name == f"lora_runner-{runner.__version__}-py3-none-any.whl"
    metadata = email.parser.Parser().parsestr(_dist_info(wheel, "METADATA"))
    assert metadata["Name"] == "lora-runner"
    assert metadata["Version"] == runner.__version__
    entry_points = _dist_info(wheel, "entry_points.txt")
    assert "[console_scripts]\nrunner = runner.cli:main" in entry_points


def test_wheel_ships_the_runner_package_and_its_schemas(wheel: Path) -> None:
    """The import package is `runner` (not lora_runner) and carries the published schemas."""
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "runner/__init__.py" in names and "runner/cli.py" in names
    for schema in (REPO_ROOT / "schemas").glob("*.json"):
        assert f"runner/_schemas/{schema.name}" in names, schema.name
    for template in (REPO_ROOT / "runner" / "views" / "report" / "templates").iterdir():  # the report page
        assert f"runner/views/report/templates/{template.name}" in names, template.name
    assert not any(n.startswith(("lora_runner/", "tests/")) for n in names)


def test_installed_wheel_reports_its_distribution_and_version(wheel: Path, tmp_path: Path) -> None:
    """Installed (no dependencies, into a folder): importlib.metadata finds `lora-runner` and
    its `runner` console script, and `python -m runner --version` prints the one version."""
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--target", str(target), str(wheel)],
        check=True, capture_output=True, text=True, timeout=120,
    )
    env = dict(os.environ, PYTHONPATH=str(target))
    probe = (
        "import importlib.metadata as m, runner; "
        "d = m.distribution('lora-runner'); "
        "eps = [e for e in d.entry_points if e.group == 'console_scripts']; "
        "print(d.version, [(e.name, e.value) for e in eps], runner.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{runner.__version__} [('runner', 'runner.cli:main')] ")
    assert result.stdout.strip().endswith(str(target / "runner" / "__init__.py")), result.stdout
    result = subprocess.run(
        [sys.executable, "-m", "runner", "--version"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"runner {runner.__version__}"


def test_readme_installs_by_the_distribution_name() -> None:
    """The README's install lines name `lora-runner` for pip, pipx and uv (never `pip install runner`)."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    for line in ("pip install lora-runner", "pipx install lora-runner", "uv tool install lora-runner"):
        assert line in text, line
    assert "pip install runner" not in text


def test_ci_recipes_install_the_distribution_by_its_name() -> None:
    """pip refuses `runner @ git+URL` when the project there is named lora-runner."""
    import re

    for recipe in sorted((REPO_ROOT / "examples" / "ci").glob("*.yml")):
        text = recipe.read_text(encoding="utf-8")
        specs = re.findall(r"RUNNER_SPEC: \"([^\"]+)\"", text)
        assert specs, recipe.name
        for spec in specs:
            assert spec.startswith("lora-runner @ git+https://"), (recipe.name, spec)
