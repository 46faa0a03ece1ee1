"""Load a manifest: YAML with positions -> ``${VAR}`` expansion -> JSON Schema -> semantic checks.

A manifest is untrusted input (a pull request can change it), so ``${NAME}`` is expanded
only for the variables its top-level ``variables`` list declares, only in ``webhook_url``
(``defaults`` and jobs: the one field that is neither fingerprinted, recorded nor shown),
and never for the API key's variable (``api.api_key_env``). ``${`` anywhere else is an
error at its place (``$${`` stays a literal ``${``). Every expanded value is a secret: it is
registered with ``logsetup.register_secret`` (so logs and messages mask it), the schema and
every message see the source text (``${LORA_WEBHOOK}``), and the value reaches only
``Job.webhook_url``, which only the request sent at apply uses. validate and plan never
need the values: a declared variable that is not set is a warning there, and
``Manifest.unset`` carries the errors apply raises before sending anything.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.diagnostics import Diagnostic, Severity, format_path, sort_diagnostics
from runner.errors import InputError
from runner.gcpause import paused_gc
from runner.logsetup import register_secret
from runner.manifest import schema as schemacheck
from runner.manifest.checks import Checker
from runner.manifest.loader import Document, PathPart, YamlError, load_file
from runner.manifest.values import clip
from runner.models import ApiSettings, Manifest

_VAR = re.compile(r"\$\$\{|\$\{([^}]*)\}|\$\{")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
VARIABLE_NAME = re.compile(r"[A-Z_][A-Z0-9_]*")  # what ``variables`` may declare (the schema's pattern)
DEFAULT_KEY_ENV = ApiSettings.api_key_env
MAX_DIAGNOSTICS = 1000  # per manifest: a hostile file must not print a million lines
EXPANDED_IN = "webhook_url (in defaults and in jobs)"
_ONLY_THERE = f"variables are only expanded in {EXPANDED_IN}; write $${{ for a literal ${{"


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
    expander = _Expander(doc, env, file)
    data = expander.run(doc.data)
    # The schema sees the source text (``${LORA_WEBHOOK}``), never an expanded value, so
    # neither its messages nor its cache of valid documents can hold a secret.
    later = schemacheck.validate(data, doc, file, cache=schema_cache)
    folder = Path(os.path.abspath(path)).parent
    checker = Checker(
        file=file, folder=folder, doc=doc, check_images=check_images, stats=stats,
        templates=expander.templates,
    )
    api, jobs = checker.run(data)
    # A value left unexpanded fails other checks too; its ${VAR} problem is the one to fix.
    unexpanded = {d.path for d in expander.diagnostics if d.severity == "error"}
    later = [d for d in later + checker.diagnostics if d.path not in unexpanded]
    diags = sort_diagnostics(diags + expander.diagnostics + later)
    if len(diags) > MAX_DIAGNOSTICS:
        more = f"more errors not shown (only the first {MAX_DIAGNOSTICS} are listed)"
        diags = [*diags[:MAX_DIAGNOSTICS], Diagnostic(file, 0, 0, "", more)]
    if any(d.severity == "error" for d in diags):
        return None, diags
    manifest = Manifest(
        path=Path(os.path.abspath(path)),
        api=api,
        jobs=tuple(jobs),
        variables=tuple(expander.declared),
        unset=tuple(expander.unset),
    )
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

        log = logsetup.get_logger("runner.manifest.read")
        for d in found:
            log.warning("manifest_warning", diagnostic=d.format(), file=d.file, line=d.line, path=d.path)
        if warnings is not None:
            warnings.extend(found)
    return manifest


def _as_error(d: Diagnostic) -> Diagnostic:
    return Diagnostic(d.file, d.line, d.col, d.path, d.message, "error")


def expand_string(
    text: str, environ: Mapping[str, str], declared: Mapping[str, str] | None = None
) -> tuple[str, list[tuple[int, str]]]:
    """Expand ``${VAR}`` from ``environ``; ``$${`` stands for a literal ``${``.

    Returns the text and a list of ``(offset, problem)``; an unset variable is left as
    written so one mistake does not cascade into others. With ``declared`` (the manifest's
    variables, each mapped to "" or to why it may not be expanded), any other name is a
    problem too.
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
        if declared is not None and (name not in declared or declared[name]):
            why = declared.get(name) or f"{name} is not declared in variables (the top-level list of the variables ${{...}} may expand)"
            problems.append((match.start(), f"{token}: {why}"))
            return token
        if name not in environ:
            problems.append((match.start(), f"environment variable {name} is not set"))
            return token
        return environ[name]

    if "${" not in text:
        return text, []
    return _VAR.sub(sub, text), problems


@dataclass(frozen=True)
class Template:
    """A ``webhook_url`` that held ``${``: its source text and what it expands to.

    ``value`` is None when a variable it uses is not set; ``secret`` when it used any
    variable (then only ``source`` may ever be shown).
    """

    source: str
    value: str | None
    secret: bool


def expandable(path: tuple[PathPart, ...]) -> bool:
    """The places ``${NAME}`` is expanded: ``defaults.webhook_url`` and ``jobs[i].webhook_url``."""
    if path == ("defaults", "webhook_url"):
        return True
    return len(path) == 3 and path[0] == "jobs" and isinstance(path[1], int) and path[2] == "webhook_url"


@dataclass
class _Expander:
    """One pass over the data: declared variables, templates in ``webhook_url``, and an
    error for ``${`` anywhere else; problems placed at the ``${``."""

    doc: Document
    environ: Mapping[str, str]
    file: str
    diagnostics: list[Diagnostic] = field(default_factory=list)
    templates: dict[tuple[PathPart, ...], Template] = field(default_factory=dict)
    unset: list[Diagnostic] = field(default_factory=list)
    # The names ``variables`` declares (in order), and the rules ``expand_string`` applies:
    # name -> "" (may be expanded) or why it may not be (the API key's variable, always).
    declared: list[str] = field(default_factory=list)
    rules: dict[str, str] = field(default_factory=dict)
    _used: set[str] = field(default_factory=set)

    def run(self, data: Any) -> Any:
        self.declare(data)
        out = self.walk(data, ())
        for i, name in enumerate(self._listed(data)):
            if name in self.declared and name not in self._used:
                self.add(("variables", i), f"{name} is declared but not used in any {EXPANDED_IN}", "warning")
        return out

    @staticmethod
    def _listed(data: Any) -> list[Any]:
        listed = data.get("variables") if isinstance(data, dict) else None
        return listed if isinstance(listed, list) else []

    def declare(self, data: Any) -> None:
        api = data.get("api") if isinstance(data, dict) else None
        key_env = api.get("api_key_env") if isinstance(api, dict) else None
        if not isinstance(key_env, str):
            key_env = DEFAULT_KEY_ENV
        # The key's variable, and the default one too: a pull request that renames
        # api.api_key_env must not thereby make the real key expandable.
        never = {
            DEFAULT_KEY_ENV: f"{DEFAULT_KEY_ENV} is the API key's default variable and can never be expanded",
            key_env: f"{key_env} holds the API key (api.api_key_env) and can never be expanded",
        }
        for i, name in enumerate(self._listed(data)):
            if not isinstance(name, str) or not VARIABLE_NAME.fullmatch(name):
                continue  # the schema says what is wrong
            if name in never:
                self.add(("variables", i), never[name] + "; remove it from variables")
            elif name not in self.rules:
                self.declared.append(name)
                self.rules[name] = ""
        self.rules.update(never)

    def add(
        self, path: tuple[PathPart, ...], message: str, severity: Severity = "error",
        at: tuple[str, int] | None = None,
    ) -> None:
        """One problem at ``path``; with ``at`` (the text, an offset) at that ``${``."""
        line, col = self.doc.position(path) if at is None else _offset_position(self.doc, path, *at)
        self.diagnostics.append(Diagnostic(self.file, line, col, format_path(list(path)), clip(message), severity))

    def walk(self, value: Any, path: tuple[PathPart, ...]) -> Any:
        if isinstance(value, str):
            if "${" not in value:
                return value
            if expandable(path):
                return self.template(value, path)
            return self.literal(value, path)
        if isinstance(value, list):
            return [self.walk(v, (*path, i)) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.walk(v, (*path, k)) for k, v in value.items()}
        return value

    def literal(self, text: str, path: tuple[PathPart, ...]) -> str:
        """Outside ``webhook_url``: ``$${`` is a literal ``${``, any other ``${`` an error."""
        reported = False

        def sub(match: re.Match[str]) -> str:
            nonlocal reported
            token = match.group(0)
            if token == "$${":
                return "${"
            if not reported:  # one error per value is enough to point at the field
                reported = True
                self.add(path, _ONLY_THERE, at=(text, match.start()))
            return token

        return _VAR.sub(sub, text)

    def template(self, text: str, path: tuple[PathPart, ...]) -> str:
        """Check and expand one ``webhook_url``; the data keeps the source text."""
        used: list[tuple[int, str]] = []
        for match in _VAR.finditer(text):
            name = match.group(1)
            if name is not None and match.group(0) != "$${":
                used.append((match.start(), name))
        value, problems = expand_string(text, self.environ, self.rules)
        missing = [(offset, name) for offset, name in used if name in self.declared and name not in self.environ]
        errors = [(o, m) for o, m in problems if not m.startswith("environment variable ")]
        names = {name for _, name in used}
        self._used.update(names)
        for offset, message in errors:
            self.add(path, message, at=(text, offset))
        if errors:
            return text
        for name in names:
            register_secret(self.environ.get(name))
        for offset, name in missing:
            note = f"${{{name}}}: environment variable {name} is not set"
            self.add(path, f"{note}; apply needs it (validate and plan do not)", "warning", at=(text, offset))
            line, col = _offset_position(self.doc, path, text, offset)
            self.unset.append(Diagnostic(self.file, line, col, format_path(list(path)), note))
        expanded = None if missing else value
        if names:
            register_secret(expanded)
        self.templates[path] = Template(text, expanded, bool(names))
        return text


def _offset_position(doc: Document, path: tuple[PathPart, ...], text: str, offset: int) -> tuple[int, int]:
    """Column of the ``${`` itself when the scalar is on one line, else the scalar's start."""
    node = doc.node(path)
    line, col = doc.position(path)
    if node is None or "\n" in text or node.style not in (None, "'", '"'):
        return line, col
    quote = 1 if node.style in ("'", '"') else 0
    return line, col + quote + offset
