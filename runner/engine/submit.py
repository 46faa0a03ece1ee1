"""Submit one job: downscale, journal ``submitting``, POST, journal what the answer means.

Write-ahead: the attempt and its Idempotency-Key are in the journal before the request can
reach the server, and the trigger word the moment the 200 arrives. A POST in flight is
shielded from Ctrl-C for a grace period (``scheduler.INTERRUPT_GRACE``), so a training
that was paid for is not lost for want of reading its answer. How the entry moves is
``runner.engine.transitions``; a job that was never sent is recorded as it was.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import structlog

from runner import logsetup
from runner.api import wire
from runner.engine.follow import follow
from runner.engine.plan import Change
from runner.engine.transitions import AnswerLost, Refused, on_submitted, submitting, transition
from runner.engine.upload import too_large_hint
from runner.errors import ApiError, InsufficientCredit, KeyRefused, Uncertain, Unreachable
from runner.manifest.resize import Resized, StaleResize
from runner.models import Fingerprinted, LockEntry, utcnow

if TYPE_CHECKING:
    from runner.engine.scheduler import Applier

log = logsetup.get_logger("runner.engine.apply")


async def submit_job(run: Applier, change: Change, replay: bool) -> None:
    """The job's whole life in this run: wait for a slot, submit, follow to the end.

    ``replay``: send again under the entry's own key (a lost answer where keys are honoured).
    """
    async with run.in_flight:
        if run.stop_submitting:
            run.queued.discard(change.name)
            run.outcome(change, "skipped", change.entry, "not submitted")
            return
        with run.slot(change.name):
            entry = await submit(run, change, replay)
            if entry is None or entry.status != "training":
                return
            if run.options.no_wait:
                run.outcome(change, "training", entry, "not waited for (--no-wait)")
                return
            await follow(run, change, entry, just_submitted=True)


async def submit(run: Applier, change: Change, replay: bool) -> LockEntry | None:
    """POST the job once; the entry it ends in, or None when it was not sent."""
    fp = change.job
    assert fp is not None
    base = submitting(fp, change.entry, change.action, replay,
                      api=run.api, api_key_env=run.settings.api_key_env, at=utcnow())
    resized: dict[Path, Resized] = {}
    with structlog.contextvars.bound_contextvars(job=change.name, action=change.action):
        try:
            # Downscaled before taking an upload slot: resizing overlaps others' uploads.
            if fp.resize:
                resized = await run.preparer.parts(fp)
            submitted = await _write_ahead_post(run, change, base, resized)
        except ApiError as exc:
            if isinstance(exc, Uncertain):
                run.result.sent = True  # the answer was lost: it may have started
            return _after_error(run, change, base, exc, resized)
        except OSError as exc:
            message = f"cannot read image {exc.filename or ''}: {exc.strerror or exc}"
            return _settle(run, change, transition(base, Refused(0, message)), message)
        if submitted is None:
            return None
        run.result.sent = True  # accepted: a training was started (and paid for)
        entry = on_submitted(base, submitted, run.api)
        if entry.status == "uncertain":
            return _settle(run, change, entry, (entry.error or {}).get("message"))
        if submitted.found_at != "data.trigger_word":
            log.info("trigger word read", found_at=submitted.found_at)
        run.record(change, entry)
        return entry


async def _write_ahead_post(
    run: Applier, change: Change, base: LockEntry, resized: dict[Path, Resized]
) -> wire.Submitted | None:
    """In an upload slot: journal ``base``, then POST under its key, shielded from Ctrl-C."""
    assert change.job is not None and base.idempotency_key is not None
    async with run.uploads:
        if run.stop_submitting:
            run.outcome(change, "skipped", change.entry, "not submitted")
            return None
        # Write-ahead: the key is durable before the request can reach the server.
        run.record(change, base)
        with anyio.CancelScope(shield=True) as scope:
            run.post_scopes.add(scope)
            try:
                submitted = await _post(run, change.job, base.idempotency_key, resized)
            finally:
                run.post_scopes.discard(scope)
        if scope.cancelled_caught:
            raise Uncertain("interrupted while the request was in flight", job=change.name)
        return submitted


async def _post(run: Applier, fp: Fingerprinted, key: str, resized: dict[Path, Resized]) -> wire.Submitted:
    """Submit; a downscaled copy that fails its check before sending is made again once."""
    timeout = run.settings.job_timeout
    try:
        return await run.client.submit(fp.job, key, replay_for=timeout, resized=resized)
    except StaleResize as exc:
        log.warning("a downscaled image in the cache failed its check; making it again", error=str(exc))
        for path in resized:
            resized[path] = await run.preparer.remake(fp, path)
    try:
        return await run.client.submit(fp.job, key, replay_for=timeout, resized=resized)
    except StaleResize as exc:
        raise OSError(f"the downscaled copy cannot be checked: {exc}") from exc


def _after_error(
    run: Applier, change: Change, base: LockEntry, exc: ApiError, resized: dict[Path, Resized]
) -> LockEntry | None:
    """Record what an error means for the job; the entry it ends in, None if never sent."""
    if isinstance(exc, Uncertain):
        return _settle(run, change, transition(base, AnswerLost(exc.status, exc.message, exc.answer)), exc.message)
    if isinstance(exc, InsufficientCredit):
        run.stop_submitting = True
        run.result.credit_exhausted = True
        message = exc.message
    elif isinstance(exc, KeyRefused):
        run.key_refused(exc)
        message = exc.message
    elif isinstance(exc, Unreachable):
        message = f"not submitted: {exc.message}"  # nothing reached the server: nothing paid
    else:
        message = exc.message
        if exc.status == 413:
            assert change.job is not None
            message += f" ({too_large_hint(change.job.job, resized)})"
        return _settle(run, change, transition(base, Refused(exc.status, message)), message)
    # Nothing started: the job is recorded as it was.
    run.record(change, change.entry, message)
    run.outcome(change, "skipped", change.entry, message)
    return None


def _settle(run: Applier, change: Change, entry: LockEntry, message: str | None) -> LockEntry:
    """Record the job's final entry for this run (uncertain or failed) and its outcome."""
    run.record(change, entry, message)
    run.outcome(change, entry.status, entry, message)
    return entry
