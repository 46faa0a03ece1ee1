"""The package layout shows the data flow, and imports run one way (issue 16, item 8).

commands (and cli) -> views -> engine -> api / state -> manifest -> base. A module may
import from its own layer and the layers below it, never from above: the pure planner and
the views stay free of I/O they do not own, and a newcomer reads the packages top-down.
Imports inside functions count too (they are how a layer would sneak a dependency in).
The sandbox is a separate program served by ``api.endpoint``: it may use only the base.
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path

from support.paths import REPO_ROOT

PACKAGE = REPO_ROOT / "runner"
LAYERS = {  # higher number: higher layer
    "base": 0,
    "sandbox": 0,
    "manifest": 1,
    "api": 2,
    "state": 2,
    "engine": 3,
    "views": 4,
    "commands": 5,
    "cli": 5,
}
BASE = {"errors", "models", "logsetup", "atomic", "gcpause", "diagnostics", "cache", "shipped_schemas", "__init__"}


def layer_of(module: str) -> str:
    """``runner.engine.apply`` -> ``engine``; a base module -> ``base``."""
    parts = module.split(".")
    assert parts[0] == "runner", module
    if len(parts) == 1:
        return "base"
    head = parts[1]
    if head in ("cli", "cli_args", "__main__"):
        return "cli"
    if head in BASE:
        return "base"
    assert head in LAYERS, f"{module}: not in any layer; add it to LAYERS or BASE"
    return head


def module_name(path: Path) -> str:
    rel = path.relative_to(REPO_ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("runner")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "runner":  # from runner import logsetup: each name is a module
                found += [(node.lineno, f"runner.{alias.name}") for alias in node.names if alias.name != "__version__"]
            elif node.module.startswith("runner."):
                found.append((node.lineno, node.module))
    return found


def violations(read: Callable[[Path], list[tuple[int, str]]] = imports) -> list[str]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = module_name(path)
        mine = layer_of(here)
        for line, target in read(path):
            theirs = layer_of(target)
            if theirs == mine:
                continue
            if mine == "sandbox" and theirs != "base":
                out.append(f"{path.relative_to(REPO_ROOT)}:{line}: the sandbox imports {target} ({theirs})")
            elif LAYERS[theirs] > LAYERS[mine]:
                out.append(f"{path.relative_to(REPO_ROOT)}:{line}: {mine} imports {target} ({theirs}, a higher layer)")
            elif theirs == "sandbox" and mine not in ("api", "views", "commands", "cli"):
                out.append(f"{path.relative_to(REPO_ROOT)}:{line}: {mine} imports the sandbox ({target})")
    return out


def test_imports_run_one_way() -> None:
    assert violations() == []


def test_every_module_is_in_a_layer() -> None:
    for path in PACKAGE.rglob("*.py"):
        layer_of(module_name(path))  # raises for a module outside the map


def test_the_check_catches_an_upward_import() -> None:
    """Negative control: a base module importing the engine, or the sandbox importing the
    manifest layer, is reported."""
    planted = {PACKAGE / "errors.py": "runner.engine.plan", PACKAGE / "sandbox" / "app.py": "runner.manifest.images"}

    def read(path: Path) -> list[tuple[int, str]]:
        return imports(path) + ([(1, planted[path])] if path in planted else [])

    found = violations(read)
    assert "runner/errors.py:1: base imports runner.engine.plan (engine, a higher layer)" in found
    assert "runner/sandbox/app.py:1: the sandbox imports runner.manifest.images (manifest)" in found
