"""``runner validate MANIFEST...``: schema and semantic checks; nothing is sent anywhere.

Text output (stdout, like a linter's): one ``FILE:LINE:COL: path: message`` line per
diagnostic, sorted by position, then one summary line per manifest. ``--format json``
prints a single document, stable for tools (``version`` bumps on incompatible change)::

    {"version": 1, "valid": bool,            # every manifest valid
     "diagnostics": [D, ...],                # all manifests' diagnostics, in order
     "manifests": [{"file": str, "valid": bool, "jobs": int | null,
                    "images": int | null, "errors": int, "warnings": int,
                    "diagnostics": [D, ...]}]}
    D = {"file", "line", "col", "path", "message", "severity": "error" | "warning"}

``--strict`` turns warnings into errors (their severity says so). Exit 0 when every
manifest is valid, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from runner import logsetup
from runner.diagnostics import Diagnostic, sort_diagnostics
from runner.errors import EXIT_INPUT, EXIT_OK
from runner.manifest.many import expand_manifests
from runner.manifest.read import load_manifest
from runner.models import Manifest


def run(args: argparse.Namespace) -> int:
    reports: list[dict[str, Any]] = []
    lines: list[str] = []
    for name in expand_manifests(args.manifests):
        manifest, diags = load_manifest(Path(name))
        if manifest is not None and manifest.api.max_upload_mb is not None:
            diags = sort_diagnostics([*diags, *_upload_problems(manifest, name)])
        if args.strict:
            diags = [
                Diagnostic(d.file, d.line, d.col, d.path, d.message, "error") for d in diags
            ]
        errors = sum(d.severity == "error" for d in diags)
        warnings = len(diags) - errors
        valid = errors == 0 and manifest is not None
        jobs = len(manifest.jobs) if manifest is not None and valid else None
        images = sum(len(j.images) + len(j.image_urls) for j in manifest.jobs) if jobs is not None and manifest else None
        reports.append(
            {
                "file": name,
                "valid": valid,
                "jobs": jobs,
                "images": images,
                "errors": errors,
                "warnings": warnings,
                "diagnostics": [d.to_dict() for d in diags],
            }
        )
        lines.extend(d.format() for d in diags)
        if valid:
            extra = f", {_plural(warnings, 'warning')}" if warnings else ""
            lines.append(f"{logsetup.clean(name)}: valid ({_plural(jobs or 0, 'job')}, {_plural(images or 0, 'image')}{extra})")
        else:
            lines.append(f"{logsetup.clean(name)}: invalid ({_plural(errors, 'error')}, {_plural(warnings, 'warning')})")
    all_valid = all(r["valid"] for r in reports)
    if args.format == "json":
        document = {
            "version": 1,
            "valid": all_valid,
            "diagnostics": [d for r in reports for d in r["diagnostics"]],
            "manifests": reports,
        }
        sys.stdout.write(logsetup.json_safe(json.dumps(document, indent=2)) + "\n")
    else:
        sys.stdout.write(logsetup.guard("\n".join(lines)) + "\n")
    sys.stdout.flush()
    return EXIT_OK if all_valid else EXIT_INPUT


def _upload_problems(manifest: Manifest, name: str) -> list[Diagnostic]:
    """Jobs whose request would exceed ``api.max_upload_mb`` (``runner.engine.upload``); an image
    that cannot be downscaled is an error too, at its job."""
    from runner.engine.upload import validate_uploads

    try:
        return validate_uploads(manifest, name)
    except OSError as exc:
        return [Diagnostic(name, 0, 0, "", f"cannot downscale an image to size the upload: {exc}")]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"
