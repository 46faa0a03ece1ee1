"""JSON Schema validation (draft 2020-12) turned into readable, positioned Diagnostics.

jsonschema's own messages quote whole sub-schemas and, for ``anyOf``/``oneOf``, say only
that nothing matched. Users need the key, what was expected and what was found, so this
module rewrites each error: unknown keys get a "did you mean", enums list their choices,
``anyOf`` failures either descend into the one branch whose type matched or say which
types were allowed. Two annotation keywords in our schemas (ignored by editors and by
jsonschema) carry messages a generic translation cannot guess:

- ``x-error``: the message to show when the sub-schema carrying it fails as a whole;
- ``x-when``: the condition of an ``if``/``then``, appended to "missing key" messages.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
from collections.abc import Callable, Iterable
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import __version__
from runner import cache as usercache
from runner.diagnostics import Diagnostic, format_path
from runner.manifest.loader import Document, PathPart
from runner.shipped_schemas import load_schema

if TYPE_CHECKING:  # jsonschema costs 50 ms to import; only a cache miss needs it
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError

MAX_ERRORS = 1000  # schema errors collected per document; see ``validate``
VALID_CACHE_SIZE = 32  # documents remembered per cache file (one per manifest edit)

_PATTERN_HINTS = {
    "^[a-z0-9][a-z0-9._-]*$": "use lowercase letters, digits, '.', '_' and '-', starting with a letter or digit",
    "^[A-Za-z0-9][A-Za-z0-9_]{0,31}$": "use up to 32 letters, digits and '_', starting with a letter or digit",
    "^[A-Za-z_][A-Za-z0-9_]*$": "use letters, digits and '_', not starting with a digit",
}


@cache
def validator(name: str) -> Draft202012Validator:
    """One compiled validator per schema for the life of the process."""
    from jsonschema import Draft202012Validator

    return Draft202012Validator(load_schema(name))


def validate(
    data: Any,
    doc: Document | None,
    file: str,
    schema: str = "manifest",
    *,
    cache: Path | None = None,
) -> list[Diagnostic]:
    """Every schema error in ``data`` as a Diagnostic placed with ``doc`` (may be None).

    With ``cache`` (a sealed file in the per-user cache folder, ``runner.cache``), data that
    passed before is not validated again: the file remembers the sha256 of recent valid
    documents (with the schema and runner's version), so an unchanged manifest costs one
    ``json.dumps`` instead of a walk through jsonschema (0.65 s for 10,000 jobs). Only
    successes are remembered; errors are always computed.
    """
    key = _valid_key(data, schema) if cache is not None else None
    if key is not None and cache is not None and key in _known_valid(cache):
        return []
    out: list[Diagnostic] = []
    errors: list[ValidationError] = []
    wrong_type: set[tuple[Any, ...]] = set()
    for error in validator(schema).iter_errors(data):
        # A value of the wrong type fails every other rule at its place too ("not both" on
        # a list): the type is the one problem to report there.
        where = tuple(error.absolute_path)
        if error.validator == "type":
            wrong_type.add(where)
        elif where in wrong_type:
            continue
        # jsonschema walks every item: 100,000 bad jobs would take a minute and print
        # 200,000 lines. Over MAX_ERRORS, the caller says the rest are not shown.
        if len(errors) > MAX_ERRORS:
            break
        errors.append(error)
    for error in errors:
        if error.validator != "type" and tuple(error.absolute_path) in wrong_type:
            continue
        for path, message, at_key in _explain(error):
            line, col = doc.position(path, key=at_key) if doc is not None else (0, 0)
            out.append(Diagnostic(file, line, col, format_path(list(path)), message))
    if key is not None and cache is not None and not out:
        _remember_valid(cache, key)
    return out


def _valid_key(data: Any, schema: str) -> str | None:
    try:
        text = json.dumps(
            [usercache.SCHEMA_VALID.version, __version__, schema, load_schema(schema), data],
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        )
    except (TypeError, ValueError):  # not plain JSON data: never cached
        return None
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _known_valid(cache: Path) -> list[str]:
    keys = usercache.load(usercache.SCHEMA_VALID, cache)
    return [k for k in keys if isinstance(k, str)] if isinstance(keys, list) else []


def _remember_valid(cache: Path, key: str) -> None:
    """Best effort: a read-only checkout only loses the speed-up."""
    keys = [*[k for k in _known_valid(cache) if k != key][-(VALID_CACHE_SIZE - 1) :], key]
    with contextlib.suppress(OSError):
        cache.parent.mkdir(parents=True, exist_ok=True)
    usercache.store(usercache.SCHEMA_VALID, cache, keys)


# bool before int: True is an int to isinstance, and a boolean to a user.
_TYPE_NAMES: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"), (int, "an integer"), (float, "a number"), (str, "a string"),
    (list, "a list"), (dict, "a mapping"),
)


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return next((name for kind, name in _TYPE_NAMES if isinstance(value, kind)), type(value).__name__)


_TYPE_WORDS = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _explain(error: ValidationError) -> Iterable[tuple[tuple[PathPart, ...], str, bool]]:
    """Yield ``(path, message, place_at_key)`` for one jsonschema error."""
    path: tuple[PathPart, ...] = tuple(error.absolute_path)
    schema = error.schema if isinstance(error.schema, dict) else {}
    kind = error.validator
    instance = error.instance

    if kind == "additionalProperties" and isinstance(instance, dict):
        known = sorted(schema.get("properties", {}))
        extra = [k for k in instance if k not in schema.get("properties", {})]
        for key in extra:
            hint = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            suggestion = f"; did you mean {hint[0]!r}?" if hint else f"; expected one of: {', '.join(known)}"
            yield (*path, key), f"unknown key {key!r}{suggestion}", True
        return

    if kind in ("anyOf", "oneOf") and isinstance(instance, dict | list):
        branch = _matching_branch(error)
        if branch:
            for sub in branch:
                yield from _explain(sub)
            return

    if "x-error" in schema and kind in ("anyOf", "oneOf", "not", "pattern", "type"):
        if kind == "not":
            yield path, schema["x-error"], True
        else:
            yield path, f"{schema['x-error']} (got {_short(instance)})", False
        return

    if kind in ("anyOf", "oneOf"):
        yield from _explain_branches(error, path)
        return

    simple = _SIMPLE.get(str(kind))
    said = simple(error, schema) if simple is not None else None
    if said is not None:
        yield path, said[0], said[1]
        return
    yield path, error.message, False


def _required(error: ValidationError, schema: dict[str, Any]) -> tuple[str, bool]:
    missing = error.message.split("'")[1] if "'" in error.message else error.message
    when = f" (required when {schema['x-when']})" if "x-when" in schema else ""
    return f"missing required key {missing!r}{when}", False


def _type(error: ValidationError, _schema: dict[str, Any]) -> tuple[str, bool]:
    expected = error.validator_value
    names = [expected] if isinstance(expected, str) else list(expected)
    words = " or ".join(_TYPE_WORDS.get(n, n) for n in names)
    return f"expected {words}, got {_type_name(error.instance)}", False


def _enum(error: ValidationError, _schema: dict[str, Any]) -> tuple[str, bool]:
    choices = [c for c in error.validator_value if c is not None]
    hint = difflib.get_close_matches(str(error.instance), [str(c) for c in choices], n=1, cutoff=0.6)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    return f"{_short(error.instance)} is not one of: {', '.join(map(str, choices))}{suggestion}", False


def _pattern(error: ValidationError, _schema: dict[str, Any]) -> tuple[str, bool]:
    why = _PATTERN_HINTS.get(str(error.validator_value)) or f"must match {error.validator_value}"
    return f"{_short(error.instance)} is not valid: {why}", False


def _at_least(error: ValidationError, _schema: dict[str, Any]) -> tuple[str, bool]:
    n = error.validator_value
    if error.validator == "minLength" and n == 1:
        return "must not be empty", False
    unit = "item" if error.validator == "minItems" else "character"
    return f"needs at least {n} {unit}{'s' if n != 1 else ''}", False


def _bound(error: ValidationError, _schema: dict[str, Any]) -> tuple[str, bool]:
    op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[str(error.validator)]
    return f"must be {op} {error.validator_value}, got {_short(error.instance)}", False


def _property_names(error: ValidationError, _schema: dict[str, Any]) -> tuple[str, bool] | None:
    return (f"invalid key: {error.context[0].message}", False) if error.context else None


# One message per validator kind: (message, place it at the key rather than the value).
_SIMPLE: dict[str, Callable[[ValidationError, dict[str, Any]], tuple[str, bool] | None]] = {
    "required": _required,
    "type": _type,
    "enum": _enum,
    "const": lambda e, _s: (f"must be {e.validator_value!r}, got {_short(e.instance)}", False),
    "pattern": _pattern,
    "minItems": _at_least,
    "minLength": _at_least,
    "maxLength": lambda e, _s: (f"is too long (at most {e.validator_value} characters)", False),
    "minimum": _bound,
    "exclusiveMinimum": _bound,
    "maximum": _bound,
    "exclusiveMaximum": _bound,
    "not": lambda _e, _s: ("is not allowed here", True),
    "propertyNames": _property_names,
}


def _matching_branch(error: ValidationError) -> list[ValidationError] | None:
    """For anyOf/oneOf: the errors of the one branch whose ``type`` the value has, if any.

    That branch is the one the user meant (a list of pairs vs a mapping of folders), so
    its errors ("missing key end_dir") say more than "matched none of the branches".
    """
    branches = error.validator_value if isinstance(error.validator_value, list) else []
    by_branch: dict[int, list[ValidationError]] = {}
    for sub in error.context or []:
        by_branch.setdefault(int(sub.schema_path[0]), []).append(sub)
    matching = [
        i
        for i, branch in enumerate(branches)
        if isinstance(branch, dict)
        and "type" in branch
        and not any(e.validator == "type" and len(e.relative_path) == 0 for e in by_branch.get(i, []))
    ]
    if len(matching) == 1 and by_branch.get(matching[0]):
        return by_branch[matching[0]]
    return None


def _explain_branches(
    error: ValidationError, path: tuple[PathPart, ...]
) -> Iterable[tuple[tuple[PathPart, ...], str, bool]]:
    """For anyOf/oneOf without a clear branch: list the types that were allowed."""
    branch = _matching_branch(error)
    if branch:
        for sub in branch:
            yield from _explain(sub)
        return
    branches = error.validator_value if isinstance(error.validator_value, list) else []
    types = [b["type"] for b in branches if isinstance(b, dict) and isinstance(b.get("type"), str)]
    if types:
        words = " or ".join(_TYPE_WORDS.get(t, t) for t in dict.fromkeys(types))
        yield path, f"expected {words}, got {_type_name(error.instance)}", False
        return
    yield path, f"{_short(error.instance)} is not valid here", False
