"""``runner apply``: take the lock, plan, guard the budget, submit and follow, write the lockfile."""

from __future__ import annotations

import argparse
import os
import sys

import anyio
import structlog

from runner.apply import Applier, ApplyOptions, ApplyResult
from runner.client import ApiClient
from runner.endpoint import connect
from runner.errors import EXIT_INTERRUPTED, UsageError
from runner.lockfile import LockSession
from runner.plan import SUBMITTING_ACTIONS
from runner.ratelimit import TokenBucket
from runner.render import apply_summary, plan_text
from runner.workspace import load, lockfile_for, prepare

log = structlog.get_logger("runner.apply")


def _budget_guard(prepared_plan_submissions: int, limit: int | None, source: str) -> None:
    if limit is not None and prepared_plan_submissions > limit:
        raise UsageError(
            f"the plan would start {prepared_plan_submissions} trainings, more than {source} allows "
            f"({limit}); nothing was submitted. Raise the limit or narrow the run with --target."
        )


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
        worst = code if code == EXIT_INTERRUPTED else max(worst, code)
        if code == EXIT_INTERRUPTED:
            break
    return worst


def apply_one(manifest_path: str, args: argparse.Namespace) -> int:
    manifest = load(manifest_path)
    lockfile = lockfile_for(manifest, args.lockfile)
    with LockSession(lockfile) as session:
        prepared = prepare(manifest_path, args.lockfile, args.target, state=session.state)
        plan = prepared.plan
        submissions = sum(1 for c in plan.changes if c.action in SUBMITTING_ACTIONS)
        if args.resubmit_uncertain:
            submissions += len(plan.with_action("blocked"))
        if args.max_submissions is not None:
            _budget_guard(submissions, args.max_submissions, "--max-submissions")
        else:
            _budget_guard(submissions, manifest.api.max_submissions, "api.max_submissions")
        if not args.quiet:
            sys.stderr.write(plan_text(plan))
        options = ApplyOptions(
            no_wait=args.no_wait,
            resubmit_uncertain=args.resubmit_uncertain,
            prune=args.prune,
            parallelism=args.parallelism,
        )
        needs_api = any(
            c.action in ("create", "replace", "retry", "resume", "blocked") for c in plan.changes
        )
        if not needs_api:
            applier_result = _run_offline(plan, session, manifest, options)
        else:
            with connect(manifest, args.endpoint, os.environ) as conn:
                log.info("endpoint", url=conn.url, embedded=conn.embedded)
                applier_result = anyio.run(_run_online, plan, session, manifest, options, conn)
    if not args.quiet or applier_result.exit_code:
        sys.stderr.write(apply_summary(applier_result))
    if applier_result.fatal:
        print(f"error: {applier_result.fatal}", file=sys.stderr)
    if applier_result.credit_exhausted:
        print(
            "error: the API answered 402 (insufficient credit); no further jobs were submitted. "
            "Add credit and run apply again: it submits only the rest.",
            file=sys.stderr,
        )
    return applier_result.exit_code


def _run_offline(plan, session, manifest, options) -> ApplyResult:  # type: ignore[no-untyped-def]
    """Nothing to send (all noop/orphan): no endpoint, no key, no sandbox needed."""
    applier = Applier(plan, session, None, manifest.api, options)  # type: ignore[arg-type]
    return anyio.run(applier.run)


async def _run_online(plan, session, manifest, options, conn) -> ApplyResult:  # type: ignore[no-untyped-def]
    bucket = TokenBucket(manifest.api.requests_per_second, manifest.api.burst)
    async with ApiClient(conn.url, conn.api_key, bucket) as client:
        applier = Applier(plan, session, client, manifest.api, options)
        return await applier.run()
