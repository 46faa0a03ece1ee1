"""``runner apply``: take the lock, plan, guard the budget, submit and follow, write the lockfile."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import anyio
import structlog

from runner import logsetup
from runner.apply import Applier, ApplyOptions, ApplyResult, LogReporter, Reporter
from runner.client import ApiClient
from runner.endpoint import Connection, connect
from runner.errors import EXIT_INTERRUPTED, UsageError
from runner.lockfile import LockSession
from runner.models import Manifest
from runner.plan import SUBMITTING_ACTIONS, Plan
from runner.ratelimit import TokenBucket
from runner.render import apply_summary, plan_text
from runner.workspace import load, lockfile_for, prepare

log = structlog.get_logger("runner.apply")
API_ACTIONS = ("create", "replace", "retry", "resume", "blocked")


def run(args: argparse.Namespace) -> int:
    if len(args.manifests) > 1 and args.lockfile:
        raise UsageError("--lockfile cannot be used with several manifests")
    if args.parallelism is not None and args.parallelism < 1:
        raise UsageError("--parallelism must be at least 1")
    if args.max_submissions is not None and args.max_submissions < 0:
        raise UsageError("--max-submissions must be 0 or more")
    worst = 0
    for manifest_path in args.manifests:
        code = apply_one(manifest_path, args)
        if code == EXIT_INTERRUPTED:
            return code
        worst = max(worst, code)
    return worst


def budget_guard(plan: Plan, manifest: Manifest, args: argparse.Namespace) -> None:
    """Refuse, before anything is sent, a plan that would start more trainings than allowed."""
    submissions = sum(1 for c in plan.changes if c.action in SUBMITTING_ACTIONS)
    if args.resubmit_uncertain:
        submissions += len(plan.with_action("blocked"))
    limit, source = args.max_submissions, "--max-submissions"
    if limit is None:
        limit, source = manifest.api.max_submissions, "api.max_submissions"
    if limit is not None and submissions > limit:
        raise UsageError(
            f"{plan.manifest}: the plan would start {submissions} trainings, more than {source} "
            f"allows ({limit}); nothing was submitted. Raise the limit or narrow the run with --target."
        )


def apply_one(manifest_path: str, args: argparse.Namespace) -> int:
    manifest = load(manifest_path)
    with LockSession(lockfile_for(manifest, args.lockfile)) as session:
        prepared = prepare(manifest_path, args.lockfile, args.target, state=session.state)
        plan = prepared.plan
        budget_guard(plan, manifest, args)
        if not args.quiet:
            sys.stderr.write(plan_text(plan))
        options = ApplyOptions(
            no_wait=args.no_wait,
            resubmit_uncertain=args.resubmit_uncertain,
            prune=args.prune,
            parallelism=args.parallelism,
        )
        rich_view = logsetup.current_format == "console" and not args.quiet and sys.stderr.isatty()
        with _reporter(rich_view) as reporter:
            if any(c.action in API_ACTIONS for c in plan.changes):
                with connect(manifest, args.endpoint, os.environ) as conn:
                    log.info("endpoint", url=conn.url, embedded=conn.embedded)
                    result = anyio.run(_run_online, plan, session, manifest, options, conn, reporter)
            else:
                # Only noops and orphans: no endpoint, key or sandbox needed.
                applier = Applier(plan, session, None, manifest.api, options, reporter)
                result = anyio.run(applier.run)
    _report(result, args, rich_view)
    return result.exit_code


@contextlib.contextmanager
def _reporter(rich_view: bool):  # type: ignore[no-untyped-def]
    if rich_view:
        from runner.progress import RichReporter

        with RichReporter() as reporter:
            yield reporter
    else:
        yield LogReporter()


def _report(result: ApplyResult, args: argparse.Namespace, rich_view: bool) -> None:
    if rich_view:
        from runner.progress import print_summary_table

        print_summary_table(result)
    elif not args.quiet or result.exit_code:
        sys.stderr.write(apply_summary(result))
    if result.fatal:
        print(f"error: {result.fatal}", file=sys.stderr)
    if result.credit_exhausted:
        print(
            "error: the API answered 402 (insufficient credit); no further jobs were submitted. "
            "Add credit and run apply again: it submits only the rest.",
            file=sys.stderr,
        )


async def _run_online(
    plan: Plan,
    session: LockSession,
    manifest: Manifest,
    options: ApplyOptions,
    conn: Connection,
    reporter: Reporter,
) -> ApplyResult:
    bucket = TokenBucket(manifest.api.requests_per_second, manifest.api.burst)
    async with ApiClient(conn.url, conn.api_key, bucket) as client:
        return await Applier(plan, session, client, manifest.api, options, reporter).run()
