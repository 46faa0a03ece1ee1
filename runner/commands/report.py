"""``runner report MANIFEST... -o report.html``: one self-contained HTML gallery of results.

Reads each manifest (for its job list) and its lockfile (journal replayed; read-only),
embeds the samples (see ``runner.report_html``) and writes the page atomically. With
several manifests one that cannot be read is shown as such on the page and sets the exit
code (the worst), while the others are still reported.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from runner import __version__, logsetup
from runner.errors import RunnerError, UsageError
from runner.lockfile import read_lockfile
from runner.manifests import expand_manifests, worst
from runner.report_html import Section, cards_for, fill_samples, render_html, write_report
from runner.workspace import load, lockfile_for


def run(args: argparse.Namespace) -> int:
    if args.image_size < 64 or args.image_size > 4096:
        raise UsageError("--image-size must be between 64 and 4096 pixels")
    manifests = expand_manifests(args.manifests)
    sections: list[Section] = []
    folders: dict[str, Path] = {}
    codes: list[int] = []
    for manifest_path in manifests:
        try:
            manifest = load(manifest_path)
            entries = read_lockfile(lockfile_for(manifest, None)).entries
        except RunnerError as exc:
            if len(manifests) == 1:
                raise
            message = logsetup.redact(str(exc))
            print(f"error: {manifest_path}: {message}", file=sys.stderr)
            sections.append(Section(manifest_path, error=message))
            codes.append(exc.exit_code)
            continue
        names = {job.name for job in manifest.jobs} | set(entries)
        sections.append(Section(manifest_path, cards_for(manifest_path, names, entries)))
        folders[manifest_path] = manifest.folder
        codes.append(0)
    fill_samples([s for s in sections if s.error is None], folders, args.image_size)
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = Path(args.output)
    write_report(out, render_html(sections, generated_at=generated, version=__version__))
    cards = [c for s in sections for c in s.cards]
    samples = [smp for c in cards for smp in c.samples]
    missing = sum(1 for smp in samples if smp.data_uri is None)
    note = f", {missing} unavailable" if missing else ""
    print(
        f"wrote {os.fspath(out)}: {len(cards)} jobs, {len(samples) - missing} samples embedded{note}",
        file=sys.stderr,
    )
    return worst(codes)
