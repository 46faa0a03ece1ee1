"""``runner report MANIFEST... -o report.html``: one self-contained HTML gallery of results.

Reads each manifest (for its job list) and its lockfile (journal replayed; read-only),
embeds the samples (see ``runner.views.report.fetch``: only from the manifest's own API, within
``--timeout``) and writes the page atomically, so an interrupted report (SIGINT/SIGTERM:
exit 130 at once) leaves no file behind, nor half of one. With several manifests one that
cannot be read is shown as such on the page and sets the exit code (the worst), while the
others are still reported.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from runner import __version__, logsetup
from runner.api.endpoint import target_identity
from runner.engine.pipeline import load, lockfile_for
from runner.errors import RunnerError, UsageError
from runner.manifest.many import expand_manifests, worst
from runner.state.lockfile import read_lockfile
from runner.views.report.cards import Section, cards_for
from runner.views.report.fetch import fill_samples
from runner.views.report.page import render_html, write_report
from runner.views.report.policy import FetchPolicy, normalize_allowed_host


def _seconds(value: object, flag: str) -> float:
    if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise UsageError(f"{flag} must be a number of seconds > 0, not {value!r}")
    return float(value)


def run(args: argparse.Namespace) -> int:
    if args.image_size < 64 or args.image_size > 4096:
        raise UsageError("--image-size must be between 64 and 4096 pixels")
    timeout = _seconds(getattr(args, "timeout", 120.0), "--timeout")
    image_timeout = min(timeout, _seconds(getattr(args, "image_timeout", 20.0), "--image-timeout"))
    try:
        allowed = tuple(normalize_allowed_host(h) for h in getattr(args, "allow_host", None) or ())
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    manifests = expand_manifests(args.manifests)
    sections: list[Section] = []
    folders: dict[str, Path] = {}
    policies: dict[str, FetchPolicy] = {}
    codes: list[int] = []
    for manifest_path in manifests:
        try:
            manifest = load(manifest_path)
            entries = read_lockfile(lockfile_for(manifest, None)).entries
            api = target_identity(manifest, None, os.environ)
        except RunnerError as exc:
            if len(manifests) == 1:
                raise
            message = logsetup.redact(str(exc))
            print(logsetup.error_text(f"{logsetup.clean(manifest_path)}: {message}"), file=sys.stderr)
            sections.append(Section(manifest_path, error=message))
            codes.append(exc.exit_code)
            continue
        names = {job.name for job in manifest.jobs} | set(entries)
        jobs = {job.name: job for job in manifest.jobs}
        sections.append(Section(manifest_path, cards_for(manifest_path, names, entries, jobs)))
        folders[manifest_path] = manifest.folder
        policies[manifest_path] = FetchPolicy(api, allowed)
        codes.append(0)
    fill_samples(
        [s for s in sections if s.error is None],
        folders,
        args.image_size,
        policies=policies,
        timeout=timeout,
        image_timeout=image_timeout,
    )
    generated = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
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
