"""The live terminal view of an apply (rich): a progress bar, a line per running job, and a
final summary table, and once trainings of a shape have ended, the time left. Used only on a terminal; CI gets one JSON log line per state change.
The live view is on stderr (it is progress, like logs); the summary table is the command's
result, on stdout.

Job names, trigger words and messages come from outside (the lockfile, the API): they reach
rich only as ``Text`` (never markup, so ``[link=...]`` in an error message stays text) and
through ``logsetup.safe`` (control characters escaped), like every other view."""

from __future__ import annotations

import threading
import time
from typing import Any

from runner.engine.reporting import Heartbeat, elapsed_text
from runner.logsetup import safe
from runner.models import ApplyResult, LockEntry
from runner.views.eta import Durations, EtaShape, entry_shape, remaining, wall_time

ACTIVE = ("submitting", "training", "uncertain")


class RichReporter:
    """The live view. Rich redraws it twice a second from its own thread (``__rich__``), so
    elapsed times and the estimate move between events; a lock keeps that thread from
    reading the job table while the apply's loop changes it."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.jobs: dict[str, tuple[str, str, str | None, str | None]] = {}
        self.total = 0
        self._live: Any = None
        self._beat: Heartbeat | None = None
        self.since: dict[str, float] = {}  # job -> when this run first saw it move (monotonic)
        self._lock = threading.Lock()
        self._durations = Durations()
        self._shapes: dict[str, EtaShape] = {}
        self._training_since: dict[str, float] = {}  # job -> wall time its training began
        self._slots = 1  # the most jobs seen holding a slot at once

    def __enter__(self) -> RichReporter:
        from rich.live import Live

        self._live = Live(self, console=self.console, refresh_per_second=2, transient=True)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def started(self, total: int) -> None:
        with self._lock:
            self.total = total

    def job_changed(self, name: str, action: str, entry: LockEntry | None, message: str | None) -> None:
        status = entry.status if entry else "skipped"
        with self._lock:
            self.jobs[name] = (action, status, entry.trigger_word if entry else None, message)
            self.since.setdefault(name, time.monotonic())
            if entry is not None:
                self._timing(name, entry)
            self._slots = max(self._slots, sum(1 for v in self.jobs.values() if v[1] in ACTIVE))
        if status in ("failed", "uncertain") and message:
            from rich.text import Text

            self.console.print(Text.assemble((safe(name), "red"), f": {status}: ", safe(message)))

    def _timing(self, name: str, entry: LockEntry) -> None:
        """Learn training times: from the first sight of ``training`` (or, for a training
        resumed from the lockfile, its ``submitted_at``) to ``succeeded``."""
        self._shapes[name] = entry_shape(entry)
        now = time.time()
        if entry.status == "training" and name not in self._training_since:
            began = wall_time(entry.submitted_at) if self.jobs[name][0] == "resume" else None
            self._training_since[name] = min(now, began) if began is not None else now
        elif entry.status == "succeeded" and name in self._training_since:
            self._durations.add(self._shapes[name], now - self._training_since.pop(name))
        elif entry.status not in ACTIVE:
            self._training_since.pop(name, None)

    def heartbeat(self, beat: Heartbeat) -> None:
        with self._lock:
            self._beat = beat

    def estimate(self) -> float | None:
        """Seconds left for the whole run, once the running jobs' shapes have been measured."""
        with self._lock:
            return self._estimate(time.time())

    def _estimate(self, now: float) -> float | None:
        active = [n for n, v in self.jobs.items() if v[1] in ACTIVE]
        done = sum(1 for v in self.jobs.values() if v[1] not in ACTIVE)
        queued = max(0, self.total - done - len(active))
        running = [
            (self._shapes[n], now - self._training_since.get(n, now)) for n in active if n in self._shapes
        ]
        if len(running) < len(active):
            return None
        return remaining(self._durations, running, queued, self._slots)

    def __rich__(self) -> Any:
        with self._lock:
            return self._render()

    def _render(self) -> Any:
        from rich.console import Group
        from rich.progress_bar import ProgressBar
        from rich.table import Table
        from rich.text import Text

        if self.total == 0:
            return Text("")  # nothing to follow: no empty 0/0 bar
        done = sum(1 for _a, s, _t, _m in self.jobs.values() if s in ("succeeded", "failed", "skipped"))
        running = [(n, v) for n, v in sorted(self.jobs.items()) if v[1] in ACTIVE]
        queued = max(0, self.total - done - len(running))
        bar = ProgressBar(total=self.total, completed=done, width=40)
        head = Text(f" {done}/{self.total} jobs finished · {len(running)} running · {queued} queued")
        eta = self._estimate(time.time())
        if eta is not None:
            head.append(f" · about {elapsed_text(eta)} left" if eta >= 1 else " · about to finish")
        if self._beat is not None and self._beat.longest is not None:
            head.append(f" · longest {safe(self._beat.longest)} {elapsed_text(self._beat.longest_seconds)}")
        table = Table(box=None, show_header=False, padding=(0, 1))
        now = time.monotonic()
        for name, (action, status, word, _m) in running[:20]:
            elapsed = elapsed_text(now - self.since.get(name, now))
            table.add_row(Text(safe(name)), action, status, Text(safe(word or "")), elapsed)
        if len(running) > 20:
            table.add_row(f"… and {len(running) - 20} more", "", "", "", "")
        return Group(Group(bar, head), table)


def print_summary_table(result: ApplyResult, lockfile: str | None = None, command: str | None = None) -> None:
    """The result of an apply on a terminal (stdout): the headline, a table of the jobs the
    run touched (none for a no-op), the lockfile's path and the reminder to commit it."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from runner.views.summary import apply_headline, apply_rows, lockfile_line, resume_lines

    console = Console()
    styles = {"succeeded": "green", "failed": "red", "uncertain": "yellow", "training": "cyan"}
    rows = apply_rows(result)
    if rows:
        table = Table(title="apply", show_lines=False)
        for col in ("job", "action", "status", "trigger word", "detail"):
            table.add_column(col)
        for name, action, status, word, detail in rows:
            table.add_row(
                Text(safe(name)), action, Text(status, style=styles.get(status, "")),
                Text(safe(word)), Text(safe(detail)),
            )
        console.print(table)
    console.print(Text(safe(apply_headline(result))))
    if lockfile is not None:
        console.print(Text(safe(lockfile_line(result, lockfile))))
        if command is not None and (result.interrupted or result.on_service):
            for line in resume_lines(result, lockfile, command):
                console.print(Text(safe(line)))
