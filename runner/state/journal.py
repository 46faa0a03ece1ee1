"""The journal: every state change, appended and fsynced before the request that depends
on it is sent, and replayed over the lockfile by every reader.

One JSON line per change, ``{"job": NAME, "entry": ENTRY | null}``, each checked against
the lockfile schema's own entry, like the lockfile's entries. ``LockSession`` writes it and
empties it once the lockfile holds everything; a crash loses at most the change in flight.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from runner.atomic import UnsafeStateFile, read_state
from runner.diagnostics import format_path
from runner.models import LockEntry
from runner.state.files import invalid, unsafe


def record_line(name: str, entry: LockEntry | None) -> bytes:
    """The journal line for one change."""
    line = json.dumps(
        {"job": name, "entry": None if entry is None else entry.to_dict()},
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return line.encode("utf-8") + b"\n"


@functools.cache
def _record_validator() -> Any:
    """A journal record: ``{"job": NAME, "entry": ENTRY | null}``, with the lockfile schema's
    own job-name rule and entry definition, so a record is exactly as valid as an entry."""
    from jsonschema import Draft202012Validator

    from runner.shipped_schemas import load_schema

    lock = load_schema("lockfile")
    names = lock["properties"]["jobs"].get("propertyNames", {})
    schema = {
        "$schema": lock.get("$schema", "https://json-schema.org/draft/2020-12/schema"),
        "$defs": lock["$defs"],
        "type": "object",
        "additionalProperties": False,
        "required": ["job", "entry"],
        "properties": {
            "job": {"type": "string", **names},
            "entry": {"oneOf": [{"type": "null"}, {"$ref": "#/$defs/entry"}]},
        },
    }
    return Draft202012Validator(schema)


def _record_problem(record: Any) -> tuple[str, str] | None:
    """(key path, message) of the first way ``record`` is not a valid journal record."""
    validator = _record_validator()
    if validator.is_valid(record):
        return None
    errors = sorted(validator.iter_errors(record), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    error = errors[0]
    # "entry" is a oneOf (null or an entry): name what is wrong inside the entry instead.
    while error.context:
        error = max(error.context, key=lambda e: len(e.absolute_path))
    return format_path(list(error.absolute_path)), error.message[:300]


def replay_journal(path: Path, entries: dict[str, LockEntry]) -> int:
    """Apply journal records over ``entries`` (by job name); returns how many were applied.

    Only the last line can be torn (it was being written when the process died): it is the
    change in flight and is dropped when it is not whole JSON. A line before it that is not
    JSON, or any line that is JSON but not a valid record (checked against the lockfile
    schema's entry), means the file was tampered with: an error naming the line, rather
    than a guess. The journal is read without following a symlink.
    """
    try:
        data = read_state(path)
    except UnsafeStateFile as exc:
        raise unsafe(path, exc, "the journal") from None
    except OSError as exc:
        raise invalid(path, f"cannot read journal: {exc}") from exc
    if data is None:
        return 0
    lines = data.split(b"\n")
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    applied = 0
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:  # includes UnicodeDecodeError
            if index == last:
                break  # torn by a crash mid-append: the change in flight
            raise invalid(path, f"journal line {index + 1} is damaged: {exc}", line=index + 1) from None
        except RecursionError:
            raise invalid(path, f"journal line {index + 1} is nested too deeply", line=index + 1) from None
        problem = _record_problem(record)
        if problem is not None:
            where, message = problem
            raise invalid(
                path, f"journal line {index + 1} is not a valid record: {message}", where, index + 1
            )
        name = record["job"]
        raw = record["entry"]
        entry = None if raw is None else LockEntry.from_dict(raw)
        if entry is None:
            entries.pop(name, None)
        else:
            entries[name] = entry
        applied += 1
    return applied


