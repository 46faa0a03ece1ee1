"""``runner status``: each job's state from the lockfile (journal replayed), optionally refreshed.

On a terminal the jobs are a rich table; piped (``| grep failed``, CI logs) they are plain
columns that survive any pager or parser. With several manifests each gets its own block
and a total line closes the output; one manifest that cannot be read does not hide the
others (its error goes to stderr and sets the exit code).

An entry made against another API than the manifest targets (``RUNNER_ENDPOINT`` or
``api.endpoint``) is shown as made elsewhere: ``made_elsewhere`` and ``api`` in JSON, the
status cell on a terminal, the detail column when piped.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from runner import logsetup
from runner.api.endpoint import accepts, made_at, target_identity
from runner.engine.pipeline import load, lockfile_for
from runner.errors import RunnerError
from runner.logsetup import clean, clean_lines, guard
from runner.manifest.many import expand_manifests, worst
from runner.state.lockfile import read_lockfile
from runner.views import status as view
from runner.views.plan import dumps


def run(args: argparse.Namespace) -> int:
    manifests = expand_manifests(args.manifests, lockfile=args.lockfile)
    many = len(manifests) > 1
    console = _console() if args.format == "text" else None
    documents: list[dict[str, Any]] = []
    codes: list[int] = []
    totals: dict[str, int] = {}
    for manifest_path in manifests:
        try:
            lockfile, api, rows = _rows(manifest_path, args)
        except RunnerError as exc:
            if not many:
                raise
            message = clean_lines(logsetup.redact(str(exc)))
            print(guard(f"error: {clean(manifest_path)}: {message}"), file=sys.stderr)
            codes.append(exc.exit_code)
            documents.append({"manifest": manifest_path, "error": logsetup.redact(str(exc))})
            continue
        codes.append(0)
        for status, n in view.status_counts(rows).items():
            totals[status] = totals.get(status, 0) + n
        if args.format == "json":
            documents.append({"manifest": manifest_path, "lockfile": str(lockfile), "api": api, "jobs": rows})
        elif console is not None:
            console.print(view.status_table(rows, title=manifest_path if many else None))
        else:
            if many:
                sys.stdout.write(guard(f"{clean(manifest_path)}:\n"))
            sys.stdout.write(view.status_text(rows))
            if many:
                sys.stdout.write("\n")
    if args.format == "json":
        doc: dict[str, Any] = documents[0] if not many else {"manifests": documents}
        sys.stdout.write(dumps(doc))
    elif many:
        line = f"Total over {len(manifests)} manifests: {view.status_counts_phrase(dict(sorted(totals.items())))}."
        if console is not None:
            console.print(line, markup=False, highlight=False)
        else:
            sys.stdout.write(line + "\n")
    return worst(codes)


def _rows(manifest_path: str, args: argparse.Namespace) -> tuple[Any, str, list[dict[str, Any]]]:
    """The lockfile, the identity of the API the manifest targets, and one row per job."""
    manifest = load(manifest_path)
    api = target_identity(manifest, None, os.environ)
    lockfile = lockfile_for(manifest, args.lockfile)
    entries = read_lockfile(lockfile).entries
    if args.refresh:
        from runner.engine.refresh import refresh_entries

        # Only this API's entries: another API's trigger words mean nothing to it.
        mine = {n: e for n, e in entries.items() if accepts(api, made_at(e, api))}
        entries = {**entries, **refresh_entries(manifest, mine)}
    names = sorted({job.name for job in manifest.jobs} | set(entries))
    return lockfile, api, view.status_rows(entries, names, api=api)


def _console() -> Any:
    """A rich Console when stdout is a terminal, else None (plain columns)."""
    if not sys.stdout.isatty():
        return None
    from rich.console import Console

    console = Console()
    return console if console.is_terminal else None
