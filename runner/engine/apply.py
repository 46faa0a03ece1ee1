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
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import anyio
import structlog

from runner import logsetup
from runner.api import wire
from runner.api.client import ApiClient, idempotency_key
from runner.api.polling import TrainingTimes, poll_delay
from runner.engine.plan import Change, Plan
from runner.engine.upload import Preparer, too_large_hint
from runner.errors import (
    ApiError,
    InsufficientCredit,
    Uncertain,
    Unreachable,
)
from runner.manifest.resize import ResizeCache, Resized, StaleResize
from runner.models import ApiSettings, ApplyResult, Fingerprinted, LockEntry, Outcome, utcnow
from runner.state.lockfile import LockfileWriteError, LockSession

log = logsetup.get_logger("runner.engine.apply")

INTERRUPT_GRACE = 10.0  # seconds an in-flight upload may finish after Ctrl-C
MAX_UNREADABLE = 5  # unreadable status answers in a row before a job is no longer followed
# A log line at least this often while trainings run, so a CI log is never silent for long
# (DESIGN section 2). RUNNER_HEARTBEAT_SECONDS shortens it, for tests.
HEARTBEAT_SECONDS = 60.0
# Lock statuses of a job the service may still be training (and charging for).
ON_SERVICE = ("training", "submitting", "uncertain")


def heartbeat_seconds() -> float:
    value = os.environ.get("RUNNER_HEARTBEAT_SECONDS")
    try:
        seconds = float(value) if value else HEARTBEAT_SECONDS
    except ValueError:
        seconds = HEARTBEAT_SECONDS
    return seconds if seconds > 0 else HEARTBEAT_SECONDS


def elapsed_text(seconds: float) -> str:
    """``42s``, ``12m03s``, ``1h05m``: a job's running time as a person reads it."""
    seconds = int(max(0.0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass(frozen=True)
class ApplyOptions:
    no_wait: bool = False
    resubmit_uncertain: bool = False
    prune: bool = False
    parallelism: int | None = None
    flush_interval: float = 5.0


class Reporter(Protocol):
    def job_changed(self, name: str, action: str, entry: LockEntry | None, message: str | None) -> None: ...

    def started(self, total: int) -> None: ...

    def heartbeat(self, beat: Heartbeat) -> None: ...


@dataclass(frozen=True)
class Heartbeat:
    """Where a run stands: jobs holding a slot (uploading or training), waiting for one,
    finished; and the job running longest with its elapsed seconds."""

    running: int
    queued: int
    done: int
    longest: str | None = None
    longest_seconds: float = 0.0

    def text(self) -> str:
        line = f"still running: {self.running} running, {self.queued} queued, {self.done} done"
        if self.longest is not None:
            line += f"; longest: {self.longest} ({elapsed_text(self.longest_seconds)})"
        return line


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

    def heartbeat(self, beat: Heartbeat) -> None:
        fields: dict[str, Any] = {"running": beat.running, "queued": beat.queued, "done": beat.done}
        if beat.longest is not None:
            fields.update(longest=beat.longest, longest_elapsed=elapsed_text(beat.longest_seconds),
                          longest_seconds=round(beat.longest_seconds, 1))
        log.info("apply.heartbeat", **fields)


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
        api: str | None = None,
        preparer: Preparer | None = None,
    ) -> None:
        self.plan = plan
        # Downscales images (upload.max_side) ahead of their upload, in max_uploads threads.
        self.preparer = preparer
        # Where the entries this run makes are recorded as made (DESIGN section 4).
        self.api = api
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
        self.heartbeat_every = heartbeat_seconds()
        self._queued: set[str] = set()
        self._running: dict[str, float] = {}  # job -> clock() when it took its slot
        self._done = 0

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
        try:
            return await self._run_work(work)
        finally:
            self.result.on_service = sorted(
                c.name for c in work
                if (e := self.session.state.entries.get(c.name)) is not None and e.status in ON_SERVICE
            )

    async def _run_work(self, work: list[Change]) -> ApplyResult:
        plan = self.plan
        self._queued = {c.name for c in work}
        blocked = plan.with_action("blocked")
        submits = plan.with_action("create", "replace", "retry")
        try:
            # One free request first: an endpoint that cannot be reached, or a refused key,
            # ends the run here with one message, before any job is touched.
            await self.client.reach()
        except ApiError as exc:
            self.result.fatal = exc.message
            for change in work:
                self._outcome(change, "skipped", change.entry, "not submitted")
            return self.result
        replayable = [c for c in blocked if _lost_answer(c.entry)]
        honoured = False
        if submits or (replayable and not self.options.resubmit_uncertain):
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
        async with anyio.create_task_group() as tg:
            self._scope = tg.cancel_scope
            tg.start_soon(self._watch_signals, tg.cancel_scope)
            tg.start_soon(self._heartbeat)
            async with anyio.create_task_group() as jobs:
                # Resumed trainings first: they already hold a slot at the API.
                for change in plan.with_action("resume"):
                    jobs.start_soon(self._follow_job, change)
                for change in submits:
                    jobs.start_soon(self._submit_job, change, False)
                for change in blocked:
                    lost = _lost_answer(change.entry)
                    if self.options.resubmit_uncertain or (honoured and lost):
                        # A lost answer is replayed under its own key (safe where keys are
                        # honoured); an answer we kept but could not read would only come
                        # back the same under that key, so a resubmission is a new attempt.
                        jobs.start_soon(self._submit_job, change, lost)
                    else:
                        message = (
                            "not resubmitted: the API gives no way to check whether it started; "
                            "rerun with --resubmit-uncertain to submit it again (may charge twice)"
                            if lost else
                            "not resubmitted: the API took it (and may have charged) but its answer "
                            "had no trigger word we could read; the answer is kept in the lockfile. "
                            "--resubmit-uncertain trains it again (charged again)"
                        )
                        self._queued.discard(change.name)
                        self._done += 1
                        self.reporter.job_changed(change.name, "blocked", change.entry, message)
                        self._outcome(change, "uncertain", change.entry, message)
            tg.cancel_scope.cancel()  # stop the signal watcher and the heartbeat
        return self.result

    def beat(self) -> Heartbeat:
        now = self.clock()
        longest = min(self._running.items(), key=lambda item: (item[1], item[0]), default=None)
        return Heartbeat(
            running=len(self._running), queued=len(self._queued), done=self._done,
            longest=longest[0] if longest else None,
            longest_seconds=now - longest[1] if longest else 0.0,
        )

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(self.heartbeat_every)
            self.reporter.heartbeat(self.beat())

    @contextlib.contextmanager
    def _slot(self, name: str) -> Iterator[None]:
        """The job holds a slot (``in_flight``): running, for the heartbeat, until it ends."""
        self._queued.discard(name)
        self._running[name] = self.clock()
        try:
            yield
        finally:
            self._running.pop(name, None)
            self._done += 1

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
                    # Once interrupted, another Ctrl-C while the lockfile is saved says so and
                    # lets the save finish (a third one is the CLI's own: exit 130).
                    signal.signal(sig, _Stopping(handler) if self.result.interrupted else handler)

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
                self._queued.discard(change.name)
                self._outcome(change, "skipped", change.entry, "not submitted")
                return
            with self._slot(change.name):
                await self._submit_and_follow(change, replay)

    async def _submit_and_follow(self, change: Change, replay: bool) -> None:
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
            self._queued.discard(change.name)
            self._outcome(change, "training", change.entry, "not waited for (--no-wait)")
            return
        async with self.in_flight:
            with self._slot(change.name):
                # Shown (a row on a terminal, a log line in CI) from the start, not only at its end.
                self.reporter.job_changed(change.name, change.action, change.entry, None)
                await self._follow(change, change.entry)

    async def _submit(self, change: Change, replay: bool) -> LockEntry | None:
        fp = change.job
        assert fp is not None
        previous = change.entry
        if replay and previous is not None:
            attempt = previous.attempt or 1
            key = previous.idempotency_key or idempotency_key(fp.fingerprint, attempt)
        elif change.action in ("retry", "blocked") and previous is not None:
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
            finetune_type=wire.sent_finetune_type(job),
            images=wire.image_count(job),
            submitted_at=utcnow(),
            api=self.api,
            api_key_env=self.settings.api_key_env,
            attempt=attempt,
            idempotency_key=key,
            inputs=fp.inputs,
        )
        with structlog.contextvars.bound_contextvars(job=change.name, action=change.action):
            try:
                # Downscaled before taking an upload slot: resizing overlaps others' uploads.
                resized = await self._preparer().parts(fp) if fp.resize else {}
                async with self.uploads:
                    if self.stop_submitting:
                        self._outcome(change, "skipped", previous, "not submitted")
                        return None
                    # Write-ahead: the key is durable before the request can reach the server.
                    self._record(change, base)
                    with anyio.CancelScope(shield=True) as scope:
                        self._post_scopes.add(scope)
                        try:
                            result = await self._post(fp, key, resized)
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
            except Unreachable as exc:
                # Nothing reached the server: the job is as it was, and nothing was paid.
                message = f"not submitted: {exc.message}"
                self._record(change, previous, message)
                self._outcome(change, "skipped", previous, message)
                return None
            except Uncertain as exc:
                entry = base.evolve(
                    status="uncertain", answer=exc.answer,
                    error={"status": exc.status, "message": exc.message},
                )
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
                message = exc.message
                if exc.status == 413:
                    message += f" ({too_large_hint(job, resized)})"
                entry = base.evolve(status="failed", error={"status": exc.status, "message": message})
                self._record(change, entry, message)
                self._outcome(change, "failed", entry, message)
                return entry
            except OSError as exc:
                message = f"cannot read image {exc.filename or ''}: {exc.strerror or exc}"
                entry = base.evolve(status="failed", error={"status": 0, "message": message})
                self._record(change, entry, message)
                self._outcome(change, "failed", entry, message)
                return entry
            submitted = result
            made_by = "sandbox" if submitted.app_name == "sandbox" else self.api
            if not submitted.trigger_word:
                message = (
                    "the API accepted the job (and may have charged for it) but no trigger word "
                    "could be read from its answer; the answer is kept in the lockfile: please "
                    "send it to the runner maintainers"
                )
                entry = base.evolve(status="uncertain", asset_id=submitted.asset_id, api=made_by,
                                    answer=submitted.raw, error={"status": 200, "message": message})
                self._record(change, entry, message)
                self._outcome(change, "uncertain", entry, message)
                return entry
            if submitted.found_at != "data.trigger_word":
                log.info("trigger word read", found_at=submitted.found_at)
            entry = base.evolve(status="training", trigger_word=submitted.trigger_word,
                                asset_id=submitted.asset_id, api=made_by)
            self._record(change, entry)
            return entry

    def _preparer(self) -> Preparer:
        if self.preparer is None:  # callers that did not say where the cache is: a private one
            self.preparer = Preparer(ResizeCache(None), self.settings.max_uploads)
        return self.preparer

    async def _post(self, fp: Fingerprinted, key: str, resized: dict[Path, Resized]) -> wire.Submitted:
        """Submit; a downscaled copy that fails its check before sending is made again once."""
        try:
            return await self.client.submit(fp.job, key, replay_for=self.settings.job_timeout, resized=resized)
        except StaleResize as exc:
            log.warning("a downscaled image in the cache failed its check; making it again", error=str(exc))
            for path in resized:
                resized[path] = await self._preparer().remake(fp, path)
        try:
            return await self.client.submit(fp.job, key, replay_for=self.settings.job_timeout, resized=resized)
        except StaleResize as exc:
            raise OSError(f"the downscaled copy cannot be checked: {exc}") from exc

    async def _follow(self, change: Change, entry: LockEntry, *, just_submitted: bool = False) -> None:
        assert entry.trigger_word is not None
        base = max(0.05, self.settings.poll_interval)
        started = self.clock()
        deadline = started + self.settings.job_timeout
        with structlog.contextvars.bound_contextvars(job=change.name, action=change.action):
            # Learned times apply to trainings timed from their 200 in this run; a resumed
            # one's age is unknown, so it polls on the plain back-off (and may be done: ask).
            shape = wire.shape(change.job.job) if just_submitted and change.job is not None else None
            if shape is not None:
                # A training that has just started cannot have ended: asking now only
                # spends a request of the rate limit.
                first = self.training_times.first_poll(shape, base)
                await anyio.sleep(min(first, max(0.0, deadline - self.clock())))
            unreadable = 0
            while True:
                status: wire.Status | wire.Unreadable | None = None
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
                    if isinstance(status, wire.Unreadable):
                        unreadable += 1
                        if unreadable == 1:
                            log.warning("status answer not understood; asking again",
                                        reason=status.reason, status=status.status)
                        if unreadable >= MAX_UNREADABLE:
                            message = (
                                f"stopped following: {unreadable} status answers in a row could not "
                                f"be read (last: {status.reason}); the trigger word is kept and the "
                                "next apply asks again. The last answer is in the lockfile: please "
                                "send it to the runner maintainers"
                            )
                            kept = entry.evolve(answer=status.raw,
                                                error={"status": status.status, "message": message})
                            self._record(change, kept, message)
                            self._outcome(change, "training", kept, message)
                            return
                    else:
                        unreadable = 0
                    if isinstance(status, wire.Status):
                        # -v: every poll's answer (job and action are bound above).
                        log.debug("job.poll", state=status.state, word=status.word,
                                  progress=status.progress, elapsed=round(self.clock() - started, 1))
                    # status is None when job_timeout ran out mid-retry: reported below.
                    if isinstance(status, wire.Status) and status.state == "succeeded":
                        done = entry.evolve(
                            status="succeeded", results=status.results, finished_at=utcnow(),
                            error=None, answer=None,
                        )
                        self._record(change, done)
                        self._outcome(change, "succeeded", done)
                        if shape is not None:
                            self.training_times.seen(shape, self.clock() - started)
                        return
                    elif isinstance(status, wire.Status) and status.state == "failed":
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
                if unreadable:
                    delay = base  # five quick looks, not five back-offs, before giving up
                await anyio.sleep(min(delay, remaining))


class _Stopping:
    """The handler of a signal that arrives while an interrupted apply saves its lockfile."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, signum: int, frame: Any) -> None:
        log.warning("interrupted again: still saving the lockfile; what is still training follows")
        signal.signal(signum, self.previous)


def _lost_answer(entry: LockEntry | None) -> bool:
    """An uncertain entry whose POST answer never arrived (the one a same-key replay can
    recover), as opposed to one whose answer arrived and could not be read (kept in it)."""
    if entry is None or entry.status != "uncertain":
        return True
    status = (entry.error or {}).get("status")
    return not (isinstance(status, int) and 200 <= status < 300)

