"""The live terminal view of an apply (rich): a progress bar, a line per running job, and a
final summary table. Used only on a terminal; CI gets one JSON log line per state change.
The live view is on stderr (it is progress, like logs); the summary table is the command's
result, on stdout.

Job names, trigger words and messages come from outside (the lockfile, the API): they reach
rich only as ``Text`` (never markup, so ``[link=...]`` in an error message stays text) and
through ``logsetup.safe`` (control characters escaped), like every other view."""

from __future__ import annotations

import time
from typing import Any

from runner.apply import ApplyResult, Heartbeat, LogReporter, elapsed_text
from runner.lockfile import LockEntry
from runner.logsetup import safe

ACTIVE = ("submitting", "training", "uncertain")


class RichReporter:
    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.jobs: dict[str, tuple[str, str, str | None, str | None]] = {}
        self.total = 0
        self._live: Any = None
        self._log = LogReporter()
        self._beat: Heartbeat | None = None
        self.since: dict[str, float] = {}  # job -> when this run first saw it move

    def __enter__(self) -> RichReporter:
        from rich.live import Live

        self._live = Live(self._render(), console=self.console, refresh_per_second=4, transient=True)
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.__exit__(None, None, None)
            self._live = None

    def started(self, total: int) -> None:
        self.total = total
        self._update()

    def job_changed(self, name: str, action: str, entry: LockEntry | None, message: str | None) -> None:
        status = entry.status if entry else "skipped"
        self.jobs[name] = (action, status, entry.trigger_word if entry else None, message)
        self.since.setdefault(name, time.monotonic())
        if status in ("failed", "uncertain") and message:
            from rich.text import Text

            self.console.print(Text.assemble((safe(name), "red"), f": {status}: ", safe(message)))
        self._update()

    def heartbeat(self, beat: Heartbeat) -> None:
        self._beat = beat
        self._update()

    def _update(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

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

    from runner.render import apply_headline, apply_rows, lockfile_line, resume_lines

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
