"""Follow one training: poll its status until it ends, ``job_timeout`` runs out, or its
answers cannot be read.

Polls back off (``runner.api.polling``); a training timed from its 200 in this run polls on
what trainings of its shape took. An unreadable answer is never success or failure: after
``MAX_UNREADABLE`` in a row the job is no longer followed this run (its trigger word and
state are kept, the next apply asks again).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import anyio
import structlog

from runner import logsetup
from runner.api import wire
from runner.api.polling import poll_delay
from runner.engine.plan import Change
from runner.engine.transitions import StatusUnreadable, on_status, transition
from runner.errors import ApiError, KeyRefused
from runner.models import LockEntry, utcnow

if TYPE_CHECKING:
    from runner.engine.scheduler import Applier

log = logsetup.get_logger("runner.engine.apply")

MAX_UNREADABLE = 5  # unreadable status answers in a row before a job is no longer followed


async def follow_job(run: Applier, change: Change) -> None:
    """A training resumed from the lockfile: follow it in a slot (never resubmitted)."""
    assert change.entry is not None
    if run.options.no_wait:
        run.queued.discard(change.name)
        run.outcome(change, "training", change.entry, "not waited for (--no-wait)")
        return
    async with run.in_flight:
        with run.slot(change.name):
            # Shown (a row on a terminal, a log line in CI) from the start, not only at its end.
            run.reporter.job_changed(change.name, change.action, change.entry, None)
            await follow(run, change, change.entry)


@dataclass
class _Polls:
    """One job's polling: the base interval, when it started and must end, its shape."""

    base: float
    started: float
    deadline: float
    shape: wire.Shape | None
    unreadable: int = 0  # unreadable answers in a row


async def follow(run: Applier, change: Change, entry: LockEntry, *, just_submitted: bool = False) -> None:
    assert entry.trigger_word is not None
    started = run.clock()
    # Learned times apply to trainings timed from their 200 in this run; a resumed one's
    # age is unknown, so it polls on the plain back-off (and may be done: ask).
    shape = wire.shape(change.job.job) if just_submitted and change.job is not None else None
    polls = _Polls(max(0.05, run.settings.poll_interval), started, started + run.settings.job_timeout, shape)
    with structlog.contextvars.bound_contextvars(job=change.name, action=change.action):
        if shape is not None:
            # A training that has just started cannot have ended: asking now only spends a
            # request of the rate limit.
            first = run.training_times.first_poll(shape, polls.base)
            await anyio.sleep(min(first, max(0.0, polls.deadline - run.clock())))
        while not await _ask(run, change, entry, polls):
            remaining = polls.deadline - run.clock()
            if remaining <= 0:
                message = (f"still training after job_timeout ({run.settings.job_timeout:g}s); "
                           "the next apply resumes it")
                run.reporter.job_changed(change.name, change.action, entry, message)
                run.outcome(change, "training", entry, message)
                return
            await anyio.sleep(min(_next_delay(run, polls), remaining))


def _next_delay(run: Applier, polls: _Polls) -> float:
    if polls.unreadable:
        return polls.base  # five quick looks, not five back-offs, before giving up
    waited = run.clock() - polls.started
    if polls.shape is not None:
        return run.training_times.next_poll(polls.shape, polls.base, waited)
    return poll_delay(polls.base, waited)


async def _ask(run: Applier, change: Change, entry: LockEntry, polls: _Polls) -> bool:
    """One status request (retries back off inside it); whether following has ended."""
    assert entry.trigger_word is not None
    status: wire.Status | wire.Unreadable | None = None
    try:
        with anyio.move_on_after(max(0.0, polls.deadline - run.clock())):
            status = await run.client.status(entry.trigger_word, job=change.name)
    except KeyRefused as exc:
        run.key_refused(exc)
        run.outcome(change, "training", entry, exc.message)
        return True
    except ApiError as exc:
        log.warning("status check failed; will ask again", error=exc.message, status=exc.status)
        return False
    if isinstance(status, wire.Unreadable):
        return _unreadable(run, change, entry, polls, status)
    polls.unreadable = 0
    if status is None:  # job_timeout ran out mid-retry: the caller reports it
        return False
    # -v: every poll's answer (job and action are bound by the caller).
    log.debug("job.poll", state=status.state, word=status.word,
              progress=status.progress, elapsed=round(run.clock() - polls.started, 1))
    ended = on_status(entry, status, utcnow())
    if ended is None:
        return False
    message = (ended.error or {}).get("message") if ended.status == "failed" else None
    run.record(change, ended, message)
    run.outcome(change, ended.status, ended, message)
    if ended.status == "succeeded" and polls.shape is not None:
        run.training_times.seen(polls.shape, run.clock() - polls.started)
    return True


def _unreadable(run: Applier, change: Change, entry: LockEntry, polls: _Polls, status: wire.Unreadable) -> bool:
    polls.unreadable += 1
    if polls.unreadable == 1:
        log.warning("status answer not understood; asking again", reason=status.reason, status=status.status)
    if polls.unreadable < MAX_UNREADABLE:
        return False
    message = (
        f"stopped following: {polls.unreadable} status answers in a row could not be read "
        f"(last: {status.reason}); the trigger word is kept and the next apply asks again. "
        "The last answer is in the lockfile: please send it to the runner maintainers"
    )
    kept = transition(entry, StatusUnreadable(status.status, status.raw, message))
    run.record(change, kept, message)
    run.outcome(change, "training", kept, message)
    return True
