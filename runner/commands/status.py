"""``runner status``: each job's state from the lockfile (journal replayed), optionally refreshed."""

from __future__ import annotations

import argparse
import json
import sys

from runner.lockfile import read_lockfile
from runner.render import status_rows, status_text
from runner.workspace import load, lockfile_for


def run(args: argparse.Namespace) -> int:
    documents = []
    for manifest_path in args.manifests:
        manifest = load(manifest_path)
        lockfile = lockfile_for(manifest, args.lockfile)
        entries = read_lockfile(lockfile).entries
        if args.refresh:
            from runner.refresh import refresh_entries

            entries = refresh_entries(manifest, entries)
        names = sorted({job.name for job in manifest.jobs} | set(entries))
        rows = status_rows(entries, names)
        if args.format == "json":
            documents.append({"manifest": manifest_path, "lockfile": str(lockfile), "jobs": rows})
        else:
            if len(args.manifests) > 1:
                sys.stdout.write(f"{manifest_path}:\n")
            sys.stdout.write(status_text(rows))
    if args.format == "json":
        doc = documents[0] if len(documents) == 1 else {"manifests": documents}
        sys.stdout.write(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    return 0
