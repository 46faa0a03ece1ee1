"""``runner plan``: what apply would do, against the lockfile; nothing is submitted.

With several manifests (or globs) each is planned against its own lockfile and printed
as with one, then one summary: a total line (text), a totals table at the top (markdown,
for a single pull-request comment over a catalog) or one document wrapping the
per-manifest plans (json). A manifest that cannot be planned is reported and the others
still are; the exit code is the worst of all (1 beats 2 beats 0).
"""

from __future__ import annotations

import argparse
import sys

from runner import logsetup
from runner.errors import EXIT_CHANGES, EXIT_OK, RunnerError
from runner.manifests import expand_manifests, worst
from runner.plan import Plan
from runner.render import (
    plan_json,
    plan_markdown,
    plan_text,
    plans_json,
    plans_markdown,
    plans_total_text,
)
from runner.workspace import prepare


def run(args: argparse.Namespace) -> int:
    manifests = expand_manifests(args.manifests, lockfile=args.lockfile)
    if len(manifests) == 1:
        plan = _plan(manifests[0], args)
        view = {"json": plan_json, "markdown": plan_markdown}.get(args.format, plan_text)
        sys.stdout.write(view(plan))
        return EXIT_CHANGES if args.detailed_exitcode and plan.has_changes else EXIT_OK

    plans: list[Plan] = []
    failed: list[tuple[str, str]] = []
    codes: list[int] = []
    for manifest_path in manifests:
        try:
            plan = _plan(manifest_path, args)
        except RunnerError as exc:
            message = logsetup.redact(str(exc))
            print(f"error: {manifest_path}: {message}", file=sys.stderr)
            failed.append((manifest_path, message))
            codes.append(exc.exit_code)
            continue
        plans.append(plan)
        codes.append(EXIT_CHANGES if args.detailed_exitcode and plan.has_changes else EXIT_OK)
        if args.format == "text":  # streamed, so a long catalog shows progress
            sys.stdout.write(plan_text(plan) + "\n")
            sys.stdout.flush()
    if args.format == "json":
        sys.stdout.write(plans_json(plans, failed))
    elif args.format == "markdown":
        sys.stdout.write(plans_markdown(plans, failed))
    else:
        sys.stdout.write(plans_total_text(plans, failed))
    return worst(codes)


def _plan(manifest_path: str, args: argparse.Namespace) -> Plan:
    prepared = prepare(manifest_path, args.lockfile, args.target)
    if args.refresh:
        from runner.refresh import refresh_plan

        return refresh_plan(prepared)
    return prepared.plan
