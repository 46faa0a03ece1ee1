"""Load a manifest: YAML with positions -> ``${VAR}`` expansion -> JSON Schema -> semantic checks.

This is the one entry point plan, apply and validate share, so all of them see the same
problems in the same words:

- ``load_manifest(path, environ=..., check_images=...)`` returns ``(Manifest | None,
  diagnostics)``: every error and warning, sorted by position; the manifest is None as
  soon as there is one error.
- ``load_or_raise(path, ...)`` returns the Manifest or raises ``InputError`` carrying the
  errors. Warnings are logged (structlog, level warning, event ``manifest_warning`` with
  ``diagnostic`` holding the formatted line) and also returned by ``load_or_raise`` via
  its ``warnings`` list argument when the caller passes one.

Messages name the file as the caller gave it (``str(path)``, usually what the user typed),
so pass the path from the command line unchanged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from runner import schema as schemacheck
from runner.checks import Checker, clip
from runner.diagnostics import Diagnostic, format_path, sort_diagnostics
from runner.errors import InputError
from runner.gcpause import paused_gc
from runner.models import Manifest
from runner.yamlload import Document, PathPart, YamlError, load_file

_VAR = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_DIAGNOSTICS = 1000  # per manifest: a hostile file must not print a million lines


def load_manifest(
    path: Path,
    *,
    environ: Mapping[str, str] | None = None,
    check_images: bool = True,
    stats: dict[str, os.stat_result] | None = None,
    schema_cache: Path | None = None,
) -> tuple[Manifest | None, list[Diagnostic]]:
    """Read, expand, validate and resolve one manifest; never raises for bad input.

    ``check_images=False`` still resolves folders and globs and requires every file to be
    a regular file, but skips decoding image headers (for callers that checked recently).
    ``stats``, when given, receives the ``os.stat`` of every image file that passed.
    ``schema_cache`` is a file remembering documents that passed the JSON Schema
    (``schema.validate``); plan and apply use one under ``.runner/``.
    """
    with paused_gc():
        return _load_manifest(path, environ, check_images, stats, schema_cache)


def _load_manifest(
    path: Path,
    environ: Mapping[str, str] | None,
    check_images: bool,
    stats: dict[str, os.stat_result] | None,
    schema_cache: Path | None,
) -> tuple[Manifest | None, list[Diagnostic]]:
    file = str(path)
    env = os.environ if environ is None else environ
    try:
        doc = load_file(Path(path))
    except YamlError as exc:
        return None, [Diagnostic(file, exc.line, exc.col, "", exc.message)]
    diags = [Diagnostic(file, p.line, p.col, format_path(list(p.path)), p.message) for p in doc.problems]
    expansion: list[Diagnostic] = []
    data = _expand(doc.data, (), doc, env, file, expansion)
    later = schemacheck.validate(data, doc, file, cache=schema_cache)
    folder = Path(os.path.abspath(path)).parent
    checker = Checker(file=file, folder=folder, doc=doc, check_images=check_images, stats=stats)
    api, jobs = checker.run(data)
    # A value left unexpanded fails other checks too; its ${VAR} problem is the one to fix.
    unexpanded = {d.path for d in expansion}
    later = [d for d in later + checker.diagnostics if d.path not in unexpanded]
    diags = sort_diagnostics(diags + expansion + later)
    if len(diags) > MAX_DIAGNOSTICS:
        more = f"more errors not shown (only the first {MAX_DIAGNOSTICS} are listed)"
        diags = [*diags[:MAX_DIAGNOSTICS], Diagnostic(file, 0, 0, "", more)]
    if any(d.severity == "error" for d in diags):
        return None, diags
    manifest = Manifest(path=Path(os.path.abspath(path)), api=api, jobs=tuple(jobs))
    return manifest, diags


def load_or_raise(
    path: Path,
    *,
    environ: Mapping[str, str] | None = None,
    check_images: bool = True,
    strict: bool = False,
    warnings: list[Diagnostic] | None = None,
    stats: dict[str, os.stat_result] | None = None,
    schema_cache: Path | None = None,
) -> Manifest:
    """The manifest, or ``InputError`` with every error (warnings too when ``strict``).

    Warnings are logged through structlog and appended to ``warnings`` if given.
    """
    manifest, diags = load_manifest(
        path, environ=environ, check_images=check_images, stats=stats, schema_cache=schema_cache
    )
    found = [d for d in diags if d.severity == "warning"]
    if strict and found:
        diags = [_as_error(d) for d in diags]
        manifest = None
    if manifest is None:
        raise InputError([d for d in diags if d.severity == "error"])
    if found:
        from runner import logsetup

        log = logsetup.get_logger("runner.manifest")
        for d in found:
            log.warning("manifest_warning", diagnostic=d.format(), file=d.file, line=d.line, path=d.path)
        if warnings is not None:
            warnings.extend(found)
    return manifest


def _as_error(d: Diagnostic) -> Diagnostic:
    return Diagnostic(d.file, d.line, d.col, d.path, d.message, "error")


def expand_string(text: str, environ: Mapping[str, str]) -> tuple[str, list[tuple[int, str]]]:
    """Expand ``${VAR}`` from ``environ``; ``$${`` stands for a literal ``${``.

    Returns the text and a list of ``(offset, problem)``; an unset variable is left as
    written so one mistake does not cascade into others.
    """
    problems: list[tuple[int, str]] = []

    def sub(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "$${":
            return "${"
        name = match.group(1)
        if name is None:
            problems.append((match.start(), "unterminated ${ (write $${ for a literal ${)"))
            return token
        if not _NAME.fullmatch(name):
            problems.append((match.start(), f"invalid variable name in {token}"))
            return token
        if name not in environ:
            problems.append((match.start(), f"environment variable {name} is not set"))
            return token
        return environ[name]

    if "${" not in text:
        return text, []
    return _VAR.sub(sub, text), problems


def _expand(
    value: Any,
    path: tuple[PathPart, ...],
    doc: Document,
    environ: Mapping[str, str],
    file: str,
    diags: list[Diagnostic],
) -> Any:
    """A copy of the data with every string value expanded; problems placed at the ``${``."""
    if isinstance(value, str):
        expanded, problems = expand_string(value, environ)
        for offset, message in problems:
            line, col = _offset_position(doc, path, value, offset)
            diags.append(Diagnostic(file, line, col, format_path(list(path)), clip(message)))
        return expanded
    if isinstance(value, list):
        return [_expand(v, (*path, i), doc, environ, file, diags) for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _expand(v, (*path, k), doc, environ, file, diags) for k, v in value.items()}
    return value


def _offset_position(doc: Document, path: tuple[PathPart, ...], text: str, offset: int) -> tuple[int, int]:
    """Column of the ``${`` itself when the scalar is on one line, else the scalar's start."""
    node = doc.node(path)
    line, col = doc.position(path)
    if node is None or "\n" in text or node.style not in (None, "'", '"'):
        return line, col
    quote = 1 if node.style in ("'", '"') else 0
    return line, col + quote + offset
