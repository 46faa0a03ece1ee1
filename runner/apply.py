"""The scheduler: submit and follow the plan's jobs concurrently, recording every change.

Structured concurrency (anyio): one task per job in a task group; ``max_in_flight`` trainings
and ``max_uploads`` uploads as CapacityLimiters; the token bucket lives in the client. A
job's failure is an ``Outcome`` value, never an exception escaping the group.

Write-ahead order for a submission: journal ``submitting`` (attempt + Idempotency-Key) ->
POST -> journal ``training`` with the trigger word the moment the 200 arrives. If the answer
is lost the job is journaled ``uncertain``; a crash in between leaves ``submitting``, which
the next plan treats the same way.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import anyio
import structlog

from runner import logsetup
from runner.client import ApiClient, Uncertain, idempotency_key
from runner.errors import (
    EXIT_CREDIT,
    EXIT_INCOMPLETE,
    EXIT_INPUT,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ApiError,
    InsufficientCredit,
)
from runner.lockfile import LockEntry, LockfileWriteError, LockSession
from runner.models import ApiSettings
from runner.plan import Change, Plan
from runner.polling import TrainingTimes, poll_delay, shape_of

log = logsetup.get_logger("runner.apply")

INTERRUPT_GRACE = 10.0  # seconds an in-flight upload may finish after Ctrl-C


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ApplyOptions:
    no_wait: bool = False
    resubmit_uncertain: bool = False
    prune: bool = False
    parallelism: int | None = None
    flush_interval: float = 5.0


@dataclass
class Outcome:
    name: str
    action: str
    status: str  # the lock status at the end, or "skipped"
    trigger_word: str | None = None
    message: str | None = None


class Reporter(Protocol):
    def job_changed(self, name: str, action: str, entry: LockEntry | None, message: str | None) -> None: ...

    def started(self, total: int) -> None: ...


class LogReporter:
    """One structlog event per state change, with the job's name (JSON lines in CI)."""

    def started(self, total: int) -> None:
        log.info("apply.start", jobs=total)

    def job_changed(self, name: str, action: str, entry: LockEntry | None, message: str | None) -> None:
        status = entry.status if entry else "skipped"
        fields: dict[str, Any] = {"job": name, "action": action, "status": status}
        if entry is not None and entry.trigger_word:
            fields["trigger_word"] = entry.trigger_word
        if message:
            fields["message"] = message
        level = log.warning if status in ("failed", "uncertain") else log.info
        level("job." + status, **fields)


@dataclass
class ApplyResult:
    outcomes: list[Outcome] = field(default_factory=list)
    credit_exhausted: bool = False
    interrupted: bool = False
    fatal: str | None = None
    pruned: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.fatal:
            return EXIT_INPUT
        if self.credit_exhausted:
            return EXIT_CREDIT
        if any(o.status != "succeeded" for o in self.outcomes):
            return EXIT_INCOMPLETE
        return EXIT_OK


class _Unrecordable(Exception):
    """A change could not be journaled: the job's task ends here, the run is stopping."""


class Applier:
    def __init__(
        self,
        plan: Plan,
        session: LockSession,
        client: ApiClient | None,
        settings: ApiSettings,
        options: ApplyOptions,
        reporter: Reporter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.plan = plan
        self.session = session
        self._client = client
        self.settings = settings
        self.options = options
        self.reporter = reporter or LogReporter()
        self.clock = clock
        in_flight = options.parallelism or settings.max_in_flight
        self.in_flight = anyio.CapacityLimiter(max(1, in_flight))
        self.uploads = anyio.CapacityLimiter(max(1, settings.max_uploads))
        self.result = ApplyResult()
        self.stop_submitting = False
        self._post_scopes: set[anyio.CancelScope] = set()
        self._scope: anyio.CancelScope | None = None
        self._last_flush = clock()
        self._flush_interval = options.flush_interval
        self.training_times = TrainingTimes()

    @property
    def client(self) -> ApiClient:
        assert self._client is not None, "a plan with API work needs a client"
        return self._client

    # ----- bookkeeping ---------------------------------------------------------------

    def _record(self, change: Change, entry: LockEntry | None, message: str | None = None) -> None:
        try:
            self.session.record(change.name, entry)
            self.reporter.job_changed(change.name, change.action, entry, message)
            self._maybe_flush()
        except LockfileWriteError as exc:
            self._abort_unwritable(exc, change, entry)
            raise _Unrecordable from exc

    def _abort_unwritable(self, exc: LockfileWriteError, change: Change, entry: LockEntry | None) -> None:
        """Nothing can be recorded any more: stop everything rather than pay for what we
        could not write down, and put the one unrecorded change on stderr for the user."""
        if self.result.fatal is None:
            self.result.fatal = str(exc)
        self.stop_submitting = True
        fields: dict[str, str | None] = {"job": change.name}
        if entry is not None:
            fields.update(status=entry.status, trigger_word=entry.trigger_word, asset_id=entry.asset_id)
        log.error("could not record a change; stopping", error=str(exc), **fields)
        if self._scope is not None:
            self._scope.cancel()

    def _maybe_flush(self) -> None:
        if self.clock() - self._last_flush >= self._flush_interval:
            started = self.clock()
            self.session.flush()
            self._last_flush = self.clock()
            # Keep rewrites a small share of the run even for very large lockfiles.
            self._flush_interval = max(self._flush_interval, 20 * (self._last_flush - started))

    def _outcome(self, change: Change, status: str, entry: LockEntry | None, message: str | None = None) -> None:
        self.result.outcomes.append(
            Outcome(change.name, change.action, status, entry.trigger_word if entry else None, message)
        )

    # ----- the run ----------------------------------------------------------------------

    async def run(self) -> ApplyResult:
        plan = self.plan
        if self.options.prune:
            for change in plan.with_action("orphan"):
                try:
                    self._record(change, None, "pruned from the lockfile")
                except _Unrecordable:
                    return self.result
                self.result.pruned.append(change.name)
        for change in plan.with_action("noop"):
            self._outcome(change, "succeeded", change.entry)
        work = plan.with_action("create", "replace", "retry", "resume", "blocked")
        self.reporter.started(len(work))
        if not work:
            return self.result
        blocked = plan.with_action("blocked")
        submits = plan.with_action("create", "replace", "retry")
        honoured = False
        if blocked or submits:
            # Known before the first POST, so a lost answer can be replayed safely at once.
            try:
                honoured = await self.client.probe_idempotency()
            except ApiError as exc:
                if exc.status in (401, 403):
                    self.result.fatal = f"the API refused the key (HTTP {exc.status}): {exc.message}"
                    for change in work:
                        self._outcome(change, "skipped", change.entry, "not submitted")
                    return self.result
                log.warning("could not learn whether the API honours idempotency keys", error=exc.message)
        replay_blocked = self.options.resubmit_uncertain or honoured
        async with anyio.create_task_group() as tg:
            self._scope = tg.cancel_scope
            tg.start_soon(self._watch_signals, tg.cancel_scope)
            async with anyio.create_task_group() as jobs:
                # Resumed trainings first: they already hold a slot at the API.
                for change in plan.with_action("resume"):
                    jobs.start_soon(self._follow_job, change)
                for change in submits:
                    jobs.start_soon(self._submit_job, change, False)
                for change in blocked:
                    if replay_blocked:
                        jobs.start_soon(self._submit_job, change, True)
                    else:
                        message = (
                            "not resubmitted: the API gives no way to check whether it started; "
                            "rerun with --resubmit-uncertain to submit it again (may charge twice)"
                        )
                        self.reporter.job_changed(change.name, "blocked", change.entry, message)
                        self._outcome(change, "uncertain", change.entry, message)
            tg.cancel_scope.cancel()  # stop the signal watcher
        return self.result

    async def _watch_signals(self, scope: anyio.CancelScope) -> None:
        # Leaving the receiver resets the signals to their defaults (asyncio's
        # remove_signal_handler); put back what the CLI installed, so a SIGTERM during the
        # final lockfile write still becomes a clean exit 130 rather than a kill.
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            await self._receive_signals(scope)
        finally:
            for sig, handler in previous.items():
                if handler is not None:
                    signal.signal(sig, handler)

    async def _receive_signals(self, scope: anyio.CancelScope) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            count = 0
            async for signum in signals:
                count += 1
                self.result.interrupted = True
                self.stop_submitting = True
                log.warning(
                    "interrupted: no new submissions; saving the lockfile",
                    signal=signal.Signals(signum).name,
                )
                grace = INTERRUPT_GRACE if count == 1 else 0.0
                for post in self._post_scopes:
                    post.deadline = min(post.deadline, anyio.current_time() + grace)
                if count == 1 and self._post_scopes:
                    # Let uploads in flight get their answer (and trigger word) first.
                    with anyio.move_on_after(grace):
                        while self._post_scopes:
                            await anyio.sleep(0.05)
                scope.cancel()
                return

    # ----- one job ----------------------------------------------------------------------

    async def _submit_job(self, change: Change, replay: bool) -> None:
        with contextlib.suppress(_Unrecordable):  # the run is stopping; fatal is set
            await self._submit_job_inner(change, replay)

    async def _submit_job_inner(self, change: Change, replay: bool) -> None:
        async with self.in_flight:
            if self.stop_submitting:
                self._outcome(change, "skipped", change.entry, "not submitted")
                return
            entry = await self._submit(change, replay)
            if entry is None or entry.status != "training":
                return
            if self.options.no_wait:
                self._outcome(change, "training", entry, "not waited for (--no-wait)")
                return
            await self._follow(change, entry, just_submitted=True)

    async def _follow_job(self, change: Change) -> None:
        with contextlib.suppress(_Unrecordable):
            await self._follow_job_inner(change)

    async def _follow_job_inner(self, change: Change) -> None:
        assert change.entry is not None
        if self.options.no_wait:
            self._outcome(change, "training", change.entry, "not waited for (--no-wait)")
            return
        async with self.in_flight:
            await self._follow(change, change.entry)

    async def _submit(self, change: Change, replay: bool) -> LockEntry | None:
        fp = change.job
        assert fp is not None
        previous = change.entry
        if replay and previous is not None:
            attempt = previous.attempt or 1
            key = previous.idempotency_key or idempotency_key(fp.fingerprint, attempt)
        elif change.action == "retry" and previous is not None:
            attempt = previous.attempt + 1
            key = idempotency_key(fp.fingerprint, attempt)
        else:
            attempt = 1
            key = idempotency_key(fp.fingerprint, attempt)
        job = fp.job
        base = LockEntry(
            fingerprint=fp.fingerprint,
            status="submitting",
            option=job.option,
            finetune_type=None if job.is_kontext else job.finetune_type,
            images=len(job.images) or len(job.image_urls),
            submitted_at=utcnow(),
            attempt=attempt,
            idempotency_key=key,
            inputs=fp.inputs,
        )
        with structlog.contextvars.bound_contextvars(job=change.name, action=change.action):
            try:
                async with self.uploads:
                    if self.stop_submitting:
                        self._outcome(change, "skipped", previous, "not submitted")
                        return None
                    # Write-ahead: the key is durable before the request can reach the server.
                    self._record(change, base)
                    with anyio.CancelScope(shield=True) as scope:
                        self._post_scopes.add(scope)
                        try:
                            result = await self.client.submit(job, key)
                        finally:
                            self._post_scopes.discard(scope)
                    if scope.cancelled_caught:
                        raise Uncertain("interrupted while the request was in flight", job=change.name)
            except InsufficientCredit as exc:
                self.stop_submitting = True
                self.result.credit_exhausted = True
                self._record(change, previous, exc.message)  # nothing started: as it was
                self._outcome(change, "skipped", previous, exc.message)
                return None
            except Uncertain as exc:
                entry = base.evolve(status="uncertain", error={"status": exc.status, "message": exc.message})
                self._record(change, entry, exc.message)
                self._outcome(change, "uncertain", entry, exc.message)
                return entry
            except ApiError as exc:
                if exc.status in (401, 403):
                    self.stop_submitting = True
                    self.result.fatal = f"the API refused the key (HTTP {exc.status}): {exc.message}"
                    self._record(change, previous, exc.message)
                    self._outcome(change, "skipped", previous, exc.message)
                    return None
                if exc.status == 0 and not isinstance(exc, Uncertain):
                    # Connect errors after every retry: nothing reached the server.
                    entry = base.evolve(status="failed", error={"status": 0, "message": exc.message})
                else:
                    entry = base.evolve(status="failed", error={"status": exc.status, "message": exc.message})
                self._record(change, entry, exc.message)
                self._outcome(change, "failed", entry, exc.message)
                return entry
            except OSError as exc:
                message = f"cannot read image {exc.filename or ''}: {exc.strerror or exc}"
                entry = base.evolve(status="failed", error={"status": 0, "message": message})
                self._record(change, entry, message)
                self._outcome(change, "failed", entry, message)
                return entry
            if not result.trigger_word:
                message = "the API accepted the job but its answer had no trigger word"
                entry = base.evolve(status="uncertain", asset_id=result.asset_id,
                                    error={"status": 200, "message": message})
                self._record(change, entry, message)
                self._outcome(change, "uncertain", entry, message)
                return entry
            entry = base.evolve(status="training", trigger_word=result.trigger_word, asset_id=result.asset_id)
            self._record(change, entry)
            return entry

    async def _follow(self, change: Change, entry: LockEntry, *, just_submitted: bool = False) -> None:
        assert entry.trigger_word is not None
        base = max(0.05, self.settings.poll_interval)
        started = self.clock()
        deadline = started + self.settings.job_timeout
        with structlog.contextvars.bound_contextvars(job=change.name, action=change.action):
            # Learned times apply to trainings timed from their 200 in this run; a resumed
            # one's age is unknown, so it polls on the plain back-off (and may be done: ask).
            shape = shape_of(change.job.job) if just_submitted and change.job is not None else None
            if shape is not None:
                # A training that has just started cannot have ended: asking now only
                # spends a request of the rate limit.
                first = self.training_times.first_poll(shape, base)
                await anyio.sleep(min(first, max(0.0, deadline - self.clock())))
            while True:
                status = None
                try:
                    # Retries back off inside status(); job_timeout still bounds the wait.
                    with anyio.move_on_after(max(0.0, deadline - self.clock())):
                        status = await self.client.status(entry.trigger_word, job=change.name)
                except ApiError as exc:
                    if exc.status in (401, 403):
                        self.result.fatal = f"the API refused the key (HTTP {exc.status}): {exc.message}"
                        self._outcome(change, "training", entry, exc.message)
                        return
                    log.warning("status check failed; will ask again", error=exc.message, status=exc.status)
                else:
                    # status is None when job_timeout ran out mid-retry: reported below.
                    if status is not None and status.state == "succeeded":
                        done = entry.evolve(
                            status="succeeded", results=status.results, finished_at=utcnow(), error=None
                        )
                        self._record(change, done)
                        self._outcome(change, "succeeded", done)
                        if shape is not None:
                            self.training_times.seen(shape, self.clock() - started)
                        return
                    elif status is not None and status.state == "failed":
                        message = status.message or "training failed"
                        failed = entry.evolve(
                            status="failed", finished_at=utcnow(),
                            error={"status": 0, "message": message},
                        )
                        self._record(change, failed, message)
                        self._outcome(change, "failed", failed, message)
                        return
                remaining = deadline - self.clock()
                if remaining <= 0:
                    message = f"still training after job_timeout ({self.settings.job_timeout:g}s); the next apply resumes it"
                    self.reporter.job_changed(change.name, change.action, entry, message)
                    self._outcome(change, "training", entry, message)
                    return
                waited = self.clock() - started
                if shape is not None:
                    delay = self.training_times.next_poll(shape, base, waited)
                else:
                    delay = poll_delay(base, waited)
                await anyio.sleep(min(delay, remaining))

