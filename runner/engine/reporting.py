"""What an apply tells as it runs: one event per job change, and a heartbeat.

``Reporter`` is what the scheduler calls; ``LogReporter`` writes structlog events (JSON lines
in CI); the live view on a terminal (``runner.views.progress.RichReporter``) is the other.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol

from runner import logsetup
from runner.models import LockEntry

log = logsetup.get_logger("runner.engine.apply")

# A log line at least this often while trainings run, so a CI log is never silent for long
# (DESIGN section 2). RUNNER_HEARTBEAT_SECONDS shortens it, for tests.
HEARTBEAT_SECONDS = 60.0


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


class Reporter(Protocol):
    def job_changed(self, name: str, action: str, entry: LockEntry | None, message: str | None) -> None: ...

    def started(self, total: int) -> None: ...

    def heartbeat(self, beat: Heartbeat) -> None: ...


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
