"""``runner status``: each job's state from the lockfile (journal replayed), optionally refreshed.

On a terminal the jobs are a rich table; piped (``| grep failed``, CI logs) they are plain
columns that survive any pager or parser. With several manifests each gets its own block
and a total line closes the output; one manifest that cannot be read does not hide the
others (its error goes to stderr and sets the exit code).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from runner import logsetup
from runner.errors import RunnerError
from runner.lockfile import read_lockfile
from runner.manifests import expand_manifests, worst
from runner.render import (
    status_counts,
    status_counts_phrase,
    status_rows,
    status_table,
    status_text,
)
from runner.workspace import load, lockfile_for


def run(args: argparse.Namespace) -> int:
    manifests = expand_manifests(args.manifests, lockfile=args.lockfile)
    many = len(manifests) > 1
    console = _console() if args.format == "text" else None
    documents: list[dict[str, Any]] = []
    codes: list[int] = []
    totals: dict[str, int] = {}
    for manifest_path in manifests:
        try:
            lockfile, rows = _rows(manifest_path, args)
        except RunnerError as exc:
            if not many:
                raise
            print(f"error: {manifest_path}: {logsetup.redact(str(exc))}", file=sys.stderr)
            codes.append(exc.exit_code)
            documents.append({"manifest": manifest_path, "error": logsetup.redact(str(exc))})
            continue
        codes.append(0)
        for status, n in status_counts(rows).items():
            totals[status] = totals.get(status, 0) + n
        if args.format == "json":
            documents.append({"manifest": manifest_path, "lockfile": str(lockfile), "jobs": rows})
        elif console is not None:
            console.print(status_table(rows, title=manifest_path if many else None))
        else:
            if many:
                sys.stdout.write(f"{manifest_path}:\n")
            sys.stdout.write(status_text(rows))
            if many:
                sys.stdout.write("\n")
    if args.format == "json":
        doc: dict[str, Any] = documents[0] if not many else {"manifests": documents}
        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    elif many:
        line = f"Total over {len(manifests)} manifests: {status_counts_phrase(dict(sorted(totals.items())))}."
        if console is not None:
            console.print(line)
        else:
            sys.stdout.write(line + "\n")
    return worst(codes)


def _rows(manifest_path: str, args: argparse.Namespace) -> tuple[Any, list[dict[str, Any]]]:
    manifest = load(manifest_path)
    lockfile = lockfile_for(manifest, args.lockfile)
    entries = read_lockfile(lockfile).entries
    if args.refresh:
        from runner.refresh import refresh_entries

        entries = refresh_entries(manifest, entries)
    names = sorted({job.name for job in manifest.jobs} | set(entries))
    return lockfile, status_rows(entries, names)


def _console() -> Any:
    """A rich Console when stdout is a terminal, else None (plain columns)."""
    if not sys.stdout.isatty():
        return None
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else None
