"""The scheduler: submit and follow the plan's jobs concurrently, recording every change.

Structured concurrency (anyio): one task per job in a task group; ``max_in_flight`` trainings
and ``max_uploads`` uploads as CapacityLimiters; the token bucket lives in the client. A
job's failure is an ``Outcome`` value, never an exception escaping the group. What one job
does is ``runner.engine.submit`` (the POST, write-ahead) and ``runner.engine.follow`` (the
polls); how its lock entry moves is ``runner.engine.transitions``.

Write-ahead order for a submission: journal ``submitting`` (attempt + Idempotency-Key) ->
POST -> journal ``training`` with the trigger word the moment the 200 arrives. If the answer
is lost the job is journaled ``uncertain``; a crash in between leaves ``submitting``, which
the next plan treats the same way.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import anyio

from runner import logsetup
from runner.api.client import ApiClient
from runner.api.polling import TrainingTimes
from runner.engine.follow import follow_job
from runner.engine.plan import SUBMITTING_ACTIONS, Change, Plan
from runner.engine.reporting import Heartbeat, LogReporter, Reporter, heartbeat_seconds
from runner.engine.submit import submit_job
from runner.engine.upload import Preparer
from runner.errors import ApiError, KeyRefused
from runner.manifest.resize import ResizeCache
from runner.models import ApiSettings, ApplyResult, LockEntry, Outcome
from runner.state.session import LockfileWriteError, LockSession

log = logsetup.get_logger("runner.engine.apply")

INTERRUPT_GRACE = 10.0  # seconds an in-flight upload may finish after Ctrl-C
# Lock statuses of a job the service may still be training (and charging for).
ON_SERVICE = ("training", "submitting", "uncertain")
NOT_RESUBMITTED_LOST = (
    "not resubmitted: the API gives no way to check whether it started; "
    "rerun with --resubmit-uncertain to submit it again (may charge twice)"
)
NOT_RESUBMITTED_UNREAD = (
    "not resubmitted: the API took it (and may have charged) but its answer "
    "had no trigger word we could read; the answer is kept in the lockfile. "
    "--resubmit-uncertain trains it again (charged again)"
)


@dataclass(frozen=True)
class ApplyOptions:
    no_wait: bool = False
    resubmit_uncertain: bool = False
    prune: bool = False
    parallelism: int | None = None
    flush_interval: float = 5.0


class _Unrecordable(Exception):
    """A change could not be journaled: the job's task ends here, the run is stopping."""


class Applier:
    """One run: the limits, the result, and what every job task shares."""

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
        self._preparer = preparer
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
        self.post_scopes: set[anyio.CancelScope] = set()
        self._scope: anyio.CancelScope | None = None
        self._last_flush = clock()
        self._flush_interval = options.flush_interval
        self.training_times = TrainingTimes()
        self.heartbeat_every = heartbeat_seconds()
        self.queued: set[str] = set()
        self._running: dict[str, float] = {}  # job -> clock() when it took its slot
        self._done = 0

    @property
    def client(self) -> ApiClient:
        assert self._client is not None, "a plan with API work needs a client"
        return self._client

    @property
    def preparer(self) -> Preparer:
        if self._preparer is None:  # callers that did not say where the cache is: a private one
            self._preparer = Preparer(ResizeCache(None), self.settings.max_uploads)
        return self._preparer

    # ----- bookkeeping ---------------------------------------------------------------

    def record(self, change: Change, entry: LockEntry | None, message: str | None = None) -> None:
        """Journal the job's entry (None: drop it) and report the change."""
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

    def outcome(self, change: Change, status: str, entry: LockEntry | None, message: str | None = None) -> None:
        self.result.outcomes.append(
            Outcome(change.name, change.action, status, entry.trigger_word if entry else None, message)
        )

    def key_refused(self, exc: KeyRefused) -> None:
        """401/403, whatever the request: the run sends nothing more, and exits 1."""
        self.stop_submitting = True
        if self.result.fatal is None:
            self.result.fatal = exc.message

    # ----- the run ----------------------------------------------------------------------

    async def run(self) -> ApplyResult:
        plan = self.plan
        if self.options.prune:
            for change in plan.with_action("orphan"):
                try:
                    self.record(change, None, "pruned from the lockfile")
                except _Unrecordable:
                    return self.result
                self.result.pruned.append(change.name)
        for change in plan.with_action("noop"):
            self.outcome(change, "succeeded", change.entry)
        work = plan.api_work()
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

    async def _preflight(self, work: list[Change]) -> bool | None:
        """Whether the API honours Idempotency-Key; None when the run ends before any job."""
        submits = self.plan.with_action(*SUBMITTING_ACTIONS)
        replayable = [c for c in self.plan.with_action("blocked") if lost_answer(c.entry)]
        try:
            # One free request first: an endpoint that cannot be reached, or a refused key,
            # ends the run here with one message, before any job is touched.
            await self.client.reach()
            if submits or (replayable and not self.options.resubmit_uncertain):
                # Known before the first POST, so a lost answer can be replayed safely at once.
                try:
                    return await self.client.probe_idempotency()
                except KeyRefused:
                    raise
                except ApiError as exc:
                    log.warning("could not learn whether the API honours idempotency keys", error=exc.message)
            return False
        except ApiError as exc:
            self.result.fatal = exc.message
            for change in work:
                self.outcome(change, "skipped", change.entry, "not submitted")
            return None

    async def _run_work(self, work: list[Change]) -> ApplyResult:
        self.queued = {c.name for c in work}
        honoured = await self._preflight(work)
        if honoured is None:
            return self.result
        async with anyio.create_task_group() as tg:
            self._scope = tg.cancel_scope
            tg.start_soon(self._watch_signals, tg.cancel_scope)
            tg.start_soon(self._heartbeat)
            async with anyio.create_task_group() as jobs:
                # Resumed trainings first: they already hold a slot at the API.
                for change in self.plan.with_action("resume"):
                    jobs.start_soon(self._task, follow_job, change)
                for change in self.plan.with_action(*SUBMITTING_ACTIONS):
                    jobs.start_soon(self._task, submit_job, change, False)
                for change in self.plan.with_action("blocked"):
                    self._start_blocked(jobs, change, honoured)
            tg.cancel_scope.cancel()  # stop the signal watcher and the heartbeat
        return self.result

    def _start_blocked(self, jobs: anyio.abc.TaskGroup, change: Change, honoured: bool) -> None:
        lost = lost_answer(change.entry)
        if self.options.resubmit_uncertain or (honoured and lost):
            # A lost answer is replayed under its own key (safe where keys are honoured); an
            # answer we kept but could not read would only come back the same under that
            # key, so a resubmission is a new attempt.
            jobs.start_soon(self._task, submit_job, change, lost)
            return
        message = NOT_RESUBMITTED_LOST if lost else NOT_RESUBMITTED_UNREAD
        self.queued.discard(change.name)
        self._done += 1
        self.reporter.job_changed(change.name, "blocked", change.entry, message)
        self.outcome(change, "uncertain", change.entry, message)

    async def _task(self, job: Callable[..., Awaitable[None]], *args: Any) -> None:
        with contextlib.suppress(_Unrecordable):  # the run is stopping; fatal is set
            await job(self, *args)

    def beat(self) -> Heartbeat:
        now = self.clock()
        longest = min(self._running.items(), key=lambda item: (item[1], item[0]), default=None)
        return Heartbeat(
            running=len(self._running), queued=len(self.queued), done=self._done,
            longest=longest[0] if longest else None,
            longest_seconds=now - longest[1] if longest else 0.0,
        )

    async def _heartbeat(self) -> None:
        while True:
            await anyio.sleep(self.heartbeat_every)
            self.reporter.heartbeat(self.beat())

    @contextlib.contextmanager
    def slot(self, name: str) -> Iterator[None]:
        """The job holds a slot (``in_flight``): running, for the heartbeat, until it ends."""
        self.queued.discard(name)
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
                for post in self.post_scopes:
                    post.deadline = min(post.deadline, anyio.current_time() + grace)
                if count == 1 and self.post_scopes:
                    # Let uploads in flight get their answer (and trigger word) first.
                    with anyio.move_on_after(grace):
                        while self.post_scopes:
                            await anyio.sleep(0.05)
                scope.cancel()
                return


class _Stopping:
    """The handler of a signal that arrives while an interrupted apply saves its lockfile."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, signum: int, frame: Any) -> None:
        log.warning("interrupted again: still saving the lockfile; what is still training follows")
        signal.signal(signum, self.previous)


def lost_answer(entry: LockEntry | None) -> bool:
    """An uncertain entry whose POST answer never arrived (the one a same-key replay can
    recover), as opposed to one whose answer arrived and could not be read (kept in it)."""
    if entry is None or entry.status != "uncertain":
        return True
    status = (entry.error or {}).get("status")
    return not (isinstance(status, int) and 200 <= status < 300)

