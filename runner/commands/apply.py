"""``runner apply``: take the lock, plan, guard the budget, submit and follow, write the lockfile.

Before anything is sent (phase 1, and again under the lock), two refusals for untrusted
manifests: a declared variable a ``webhook_url`` uses is not set (``Manifest.unset``), and
a trust change that needs approval (``runner.engine.trust``: another endpoint or key variable than
the lockfile's entries were made with) without ``--allow-trust-change``. Both exit 1 before
the key is read.

Streams (DESIGN section 2): the result (the plan, the summary with the lockfile's path, and
after Ctrl-C what is still training and how to resume) is on stdout; logs and the live view
are on stderr, so with ``--log-format json`` every stderr line is one JSON object. On a
terminal, a plan that would start trainings anywhere but the embedded sandbox asks ``yes``
first (``--auto-approve`` skips it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

from runner import logsetup
from runner.api.endpoint import target_identity
from runner.diagnostics import Diagnostic
from runner.engine.pipeline import Prepared, prepare
from runner.engine.plan import SUBMITTING_ACTIONS, Plan
from runner.engine.reporting import LogReporter, Reporter
from runner.engine.run import amend_identity, execute, plan_locked
from runner.engine.scheduler import ApplyOptions
from runner.engine.trust import refuse, with_text
from runner.errors import EXIT_INTERRUPTED, InputError, RunnerError, UsageError
from runner.manifest.many import expand_manifests, worst
from runner.models import ApplyResult, LockEntry, Manifest
from runner.state.session import LockSession
from runner.views.plan import plan_text
from runner.views.summary import apply_summary

log = logsetup.get_logger("runner.engine.apply")


def run(args: argparse.Namespace) -> int:
    """Validate and plan every manifest first, so bad input anywhere means nothing is sent."""
    manifests = expand_manifests(args.manifests, lockfile=args.lockfile)
    if args.parallelism is not None and args.parallelism < 1:
        raise UsageError("--parallelism must be at least 1")
    if args.max_submissions is not None and args.max_submissions < 0:
        raise UsageError("--max-submissions must be 0 or more")
    # Phase 1, read-only: every manifest valid, planned and within its budget before
    # anything is sent (validation, hashing and the plan are not repeated in phase 2).
    prepared: list[Prepared] = []
    problems: list[str] = []
    for manifest_path in manifests:
        try:
            one = prepare(manifest_path, args.lockfile, args.target, endpoint=args.endpoint)
            trust_guard(one.manifest, one.display, one.api or "", one.state.entries, args)
            if args.max_submissions is None:
                budget_guard(one.plan, one.manifest, args)
            prepared.append(one)
        except RunnerError as exc:
            if len(manifests) == 1:
                raise
            problems.append(logsetup.redact(str(exc)))
    if problems:
        raise InputError("\n".join(problems) + "\nnothing was submitted")
    total = sum(submissions_in(p.plan, args) for p in prepared)
    if args.max_submissions is not None and total > args.max_submissions:
        raise UsageError(
            f"the plan would start {total} trainings, more than --max-submissions allows "
            f"({args.max_submissions}); nothing was submitted"
        )
    # Phase 2: each manifest under its own lock, one after the other.
    codes: list[int] = []
    for one in prepared:
        if len(manifests) > 1 and not args.quiet:
            print(f"== {logsetup.safe(one.display)}", flush=True)
        try:
            code = apply_one(one, args)
        except RunnerError as exc:
            if len(manifests) == 1:
                raise
            complain(f"{logsetup.clean(one.display)}: {exc}")
            code = exc.exit_code
        codes.append(code)
        if code == EXIT_INTERRUPTED:
            break
    if len(manifests) > 1:
        names = dict(zip(manifests, codes, strict=False))
        summary = ", ".join(f"{m}: exit {c}" for m, c in names.items())
        print(logsetup.guard(f"Applied {len(codes)} of {len(manifests)} manifests ({logsetup.clean(summary)})."))
    return worst(codes)


def complain(message: str) -> None:
    """An error on stderr: ``error: ...`` text, or one JSON log line with JSON logs."""
    if logsetup.current_format == "json":
        log.error(logsetup.redact(message))
    else:
        print(logsetup.error_text(message), file=sys.stderr)


def shown_path(path: Path) -> str:
    """``path`` relative to the current folder when it is inside it, as a user would type it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(path)


def resume_command(prepared: Prepared, args: argparse.Namespace) -> str:
    """The command that resumes this run: apply again, with the same lockfile and targets."""
    argv = ["runner", "apply", prepared.display]
    if args.lockfile:
        argv += ["--lockfile", args.lockfile]
    for name in args.target or ():
        argv += ["--target", name]
    if args.endpoint:
        argv += ["--endpoint", args.endpoint]
    return shlex.join(argv)


def approve(plan: Plan, target: str, args: argparse.Namespace) -> None:
    """On a terminal, ask ``yes`` before a plan starts paid trainings (as ``terraform apply``
    does). Asked for every endpoint but the embedded ``sandbox`` (a served sandbox, or any
    URL, may be the live service); not asked with ``--auto-approve`` or without a terminal
    on both stdin and stdout (CI). Anything but ``yes`` exits 1 with nothing sent."""
    if not _would_ask(plan, target, args):
        return
    starts = submissions_in(plan, args)
    print(logsetup.guard(
        f"\nDo you want to start {starts} training{'s' if starts != 1 else ''} on "
        f"{logsetup.clean(target)}? They are paid once started.\n"
        "  Only 'yes' will be accepted to approve (--auto-approve skips this question).\n"
    ))
    try:
        answer = input("  Enter a value: ")
    except EOFError:
        answer = ""
    if answer.strip() != "yes":
        raise UsageError("apply cancelled (the answer was not 'yes'); nothing was sent")


def trace_path(args: argparse.Namespace) -> Path | None:
    """``--trace-http FILE``, else ``RUNNER_TRACE_HTTP``: where every exchange is written."""
    value = getattr(args, "trace_http", None) or os.environ.get("RUNNER_TRACE_HTTP")
    return Path(value) if value else None


def submissions_in(plan: Plan, args: argparse.Namespace) -> int:
    count = sum(1 for c in plan.changes if c.action in SUBMITTING_ACTIONS)
    if args.resubmit_uncertain:
        count += len(plan.with_action("blocked"))
    return count


def budget_guard(plan: Plan, manifest: Manifest, args: argparse.Namespace) -> None:
    """Refuse, before anything is sent, a plan that would start more trainings than allowed."""
    submissions = submissions_in(plan, args)
    limit, source = args.max_submissions, "--max-submissions"
    if limit is None:
        limit, source = manifest.api.max_submissions, "api.max_submissions"
    if limit is not None and submissions > limit:
        raise UsageError(
            f"{plan.manifest}: the plan would start {submissions} trainings, more than {source} "
            f"allows ({limit}); nothing was submitted. Raise the limit or narrow the run with --target."
        )


def trust_guard(
    manifest: Manifest, display: str, target: str, entries: dict[str, LockEntry], args: argparse.Namespace
) -> None:
    """Refuse, before the key is read, an unset variable or an unapproved trust change."""
    if manifest.unset:
        raise InputError(
            [*manifest.unset, Diagnostic(display, 0, 0, "", "set the variables above (declared in variables); nothing was submitted")]
        )
    if not getattr(args, "allow_trust_change", False):
        from runner.engine.trust import assess

        refuse(assess(target, manifest.api.api_key_env, entries), display, "apply")


def apply_one(prepared: Prepared, args: argparse.Namespace) -> int:
    manifest = prepared.manifest
    with LockSession(prepared.lockfile) as session:
        target = target_identity(manifest, args.endpoint, os.environ)
        # Again against the lockfile as it is under the lock, before anything is sent.
        trust_guard(manifest, prepared.display, target, session.state.entries, args)
        plan = plan_locked(prepared, session, target)
        budget_guard(plan, manifest, args)
        assert plan.trust is not None
        amend_identity(session, manifest, target, plan)
        asks = not args.quiet or _would_ask(plan, target, args)
        if asks:
            sys.stdout.write(with_text(plan_text(plan), plan.trust))
            sys.stdout.flush()
        approve(plan, target, args)
        options = ApplyOptions(
            no_wait=args.no_wait,
            resubmit_uncertain=args.resubmit_uncertain,
            prune=args.prune,
            parallelism=args.parallelism,
        )
        rich_view = logsetup.current_format == "console" and not args.quiet and sys.stderr.isatty()
        with _reporter(rich_view) as reporter:
            result = execute(plan, session, manifest, options, reporter, endpoint=args.endpoint, trace=trace_path(args))
    _report(result, args, rich_view, shown_path(prepared.lockfile), resume_command(prepared, args))
    return result.exit_code


def _would_ask(plan: Plan, target: str, args: argparse.Namespace) -> bool:
    return (
        bool(submissions_in(plan, args)) and target != "sandbox" and not getattr(args, "auto_approve", False)
        and sys.stdin.isatty() and sys.stdout.isatty()
    )


@contextlib.contextmanager
def _reporter(rich_view: bool) -> Iterator[Reporter]:
    if rich_view:
        from runner.views.progress import RichReporter

        with RichReporter() as reporter:
            yield reporter
    else:
        yield LogReporter()


def _report(result: ApplyResult, args: argparse.Namespace, rich_view: bool, lockfile: str, command: str) -> None:
    """The summary on stdout; errors, and with JSON logs the Ctrl-C notice, on stderr."""
    if rich_view:
        from runner.views.progress import print_summary_table

        print_summary_table(result, lockfile, command)
    elif not args.quiet or result.exit_code:
        sys.stdout.write(("" if args.quiet else "\n") + apply_summary(result, lockfile, command))
    sys.stdout.flush()
    if logsetup.current_format == "json" and (result.interrupted or result.on_service):
        fields = {"saved": lockfile, "still_training": result.on_service, "resume": command}
        event = "apply.interrupted" if result.interrupted else "apply.not_waited"
        log.warning(event, **fields)
    if result.fatal:
        complain(result.fatal)
    if result.credit_exhausted:
        complain(
            "the API answered 402 (insufficient credit); no further jobs were submitted. "
            "Add credit and run apply again: it submits only the rest."
        )
