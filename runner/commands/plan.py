"""``runner plan``: what apply would do, against the lockfile; nothing is submitted."""

from __future__ import annotations

import argparse
import sys

from runner.errors import EXIT_CHANGES, EXIT_OK
from runner.render import plan_json, plan_markdown, plan_text
from runner.workspace import prepare


def run(args: argparse.Namespace) -> int:
    worst = EXIT_OK
    for manifest_path in args.manifests:
        prepared = prepare(manifest_path, args.lockfile, args.target)
        plan = prepared.plan
        if args.refresh:
            from runner.refresh import refresh_plan

            plan = refresh_plan(prepared)
        if args.format == "json":
            sys.stdout.write(plan_json(plan))
        elif args.format == "markdown":
            sys.stdout.write(plan_markdown(plan))
        else:
            sys.stdout.write(plan_text(plan))
        if args.detailed_exitcode and plan.has_changes:
            worst = max(worst, EXIT_CHANGES)
    return worst
