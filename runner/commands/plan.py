"""``runner plan``: what apply would do, against the lockfile; nothing is submitted.

With several manifests (or globs) each is planned against its own lockfile and printed
as with one, then one summary: a total line (text), a totals table at the top (markdown,
for a single pull-request comment over a catalog) or one document wrapping the
per-manifest plans (json). A manifest that cannot be planned is reported and the others
still are; the exit code is the worst of all (1 beats 2 beats 0).

Every view says where the key would go (``runner.engine.trust``) and shows a trust change — the
endpoint or key variable differs from what the lockfile's entries were made with — first,
before the jobs (at the top of a many-manifest markdown comment); it counts as a change for
``--detailed-exitcode``. ``--refresh`` refuses a trust change that needs approval (exit 1,
nothing sent).
"""

from __future__ import annotations

import argparse
import os
import sys

from runner import logsetup
from runner.engine.pipeline import prepare
from runner.engine.plan import Plan
from runner.engine.trust import Trust, catalog_markdown, with_markdown, with_text
from runner.errors import EXIT_CHANGES, EXIT_OK, RunnerError
from runner.manifest.many import expand_manifests, worst
from runner.views.plan import (
    plan_json,
    plan_markdown,
    plan_text,
    plans_json,
    plans_markdown,
    plans_total_text,
)


def run(args: argparse.Namespace) -> int:
    manifests = expand_manifests(args.manifests, lockfile=args.lockfile)
    if len(manifests) == 1:
        plan = _plan(manifests[0], args)
        if args.format == "json":
            sys.stdout.write(plan_json(plan))
        elif args.format == "markdown":
            sys.stdout.write(markdown_view(plan))
        else:
            sys.stdout.write(text_view(plan, color=use_color()))
        return EXIT_CHANGES if args.detailed_exitcode and plan.has_changes else EXIT_OK

    plans: list[Plan] = []
    failed: list[tuple[str, str]] = []
    codes: list[int] = []
    for manifest_path in manifests:
        try:
            plan = _plan(manifest_path, args)
        except RunnerError as exc:
            message = logsetup.redact(str(exc))
            print(logsetup.error_text(f"{logsetup.clean(manifest_path)}: {message}"), file=sys.stderr)
            failed.append((manifest_path, message))
            codes.append(exc.exit_code)
            continue
        plans.append(plan)
        codes.append(EXIT_CHANGES if args.detailed_exitcode and plan.has_changes else EXIT_OK)
        if args.format == "text":  # streamed, so a long catalog shows progress
            sys.stdout.write(text_view(plan, color=use_color()) + "\n")
            sys.stdout.flush()
    if args.format == "json":
        sys.stdout.write(plans_json(plans, failed))
    elif args.format == "markdown":
        sys.stdout.write(catalog_markdown_view(plans, failed))
    else:
        sys.stdout.write(plans_total_text(plans, failed))
    return worst(codes)


def _plan(manifest_path: str, args: argparse.Namespace) -> Plan:
    prepared = prepare(manifest_path, args.lockfile, args.target)
    assert prepared.api is not None
    plan = prepared.plan
    if args.refresh:
        from runner.engine.refresh import refresh_plan

        plan = refresh_plan(prepared)  # refuses a trust change before anything is sent
    # Against the lockfile as read: what the reviewed state says, not what --refresh learnt.
    manifest = prepared.manifest
    if getattr(args, "prune", False):
        plan = plan.pruning()
    return plan.with_trust(prepared.api, manifest.api.api_key_env, prepared.state.entries, manifest.variables)


def _trust(plan: Plan) -> Trust:
    assert plan.trust is not None
    return plan.trust


def use_color(stream: object = None) -> bool:
    """Colour the text plan: only on a terminal, never with ``NO_COLOR`` set (no-color.org)
    or ``TERM=dumb``."""
    out = stream if stream is not None else sys.stdout
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


def text_view(plan: Plan, *, color: bool = False) -> str:
    return with_text(plan_text(plan, color=color), _trust(plan))


def markdown_view(plan: Plan) -> str:
    return with_markdown(plan_markdown(plan), _trust(plan))


def catalog_markdown_view(plans: list[Plan], failed: list[tuple[str, str]]) -> str:
    """The many-manifest comment: every trust change first, then the totals and each plan
    (with where its key goes under its heading)."""
    full = plans_markdown(plans, failed)
    sections = "".join("\n" + plan_markdown(p) for p in plans)
    top = catalog_markdown([(p.manifest, _trust(p)) for p in plans])
    if sections and full.endswith(sections):
        full = full[: len(full) - len(sections)] + "".join("\n" + markdown_view(p) for p in plans)
    return top + full
