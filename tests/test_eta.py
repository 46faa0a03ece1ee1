"""The live view's remaining-time estimate (runner/views/eta.py and the terminal reporter)."""

from __future__ import annotations

import pytest

from runner.models import LockEntry
from runner.views.eta import Durations, entry_shape, remaining, wall_time

A = ("FluxFinetune", "Auto", 10, 0)
B = ("FluxFinetune", "Style", 20, 0)


def durations(*seen: tuple[tuple[str, str, int, int], float]) -> Durations:
    d = Durations()
    for shape, seconds in seen:
        d.add(shape, seconds)
    return d


@pytest.mark.parametrize(
    ("seen", "running", "queued", "slots", "expected"),
    [
        ([], [(A, 5.0)], 0, 1, None),  # nothing measured: no number
        ([(A, 100.0)], [(B, 5.0)], 0, 1, None),  # a running shape never seen to end
        ([(A, 100.0)], [(A, 40.0)], 0, 1, 60.0),  # one left, 60 s to go
        ([(A, 100.0), (A, 60.0)], [(A, 20.0)], 0, 1, 60.0),  # the mean of the ones seen
        ([(A, 100.0)], [(A, 130.0)], 0, 1, 0.0),  # overdue: about to end, never negative
        ([(A, 100.0)], [(A, 40.0)], 3, 1, 360.0),  # one slot: 60 s + 3 x 100 s in a row
        ([(A, 100.0)], [(A, 40.0), (A, 90.0)], 4, 2, 235.0),  # (60 + 10 + 400) / 2
        ([(A, 100.0)], [(A, 0.0)], 0, 8, 100.0),  # never below the slowest running job
        ([(A, 100.0)], [], 0, 1, None),  # nothing left to run
    ],
)
def test_remaining_is_measured_or_absent(
    seen: list[tuple[tuple[str, str, int, int], float]],
    running: list[tuple[tuple[str, str, int, int], float]],
    queued: int, slots: int, expected: float | None,
) -> None:
    assert remaining(durations(*seen), running, queued, slots) == expected


def test_entry_shape_and_wall_time() -> None:
    entry = LockEntry("sha256:1", "training", option="FluxFinetune", finetune_type="Auto", images=3,
                      inputs={"num_iterations": 300})
    assert entry_shape(entry) == ("FluxFinetune", "Auto", 3, 300)
    assert wall_time("2026-12-02T15:30:00Z") == 1796225400.0
    assert wall_time(None) is None and wall_time("yesterday") is None


def test_reporter_estimates_after_a_shape_has_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    """The terminal reporter learns from the events apply sends it, on the wall clock."""
    from runner.views import progress

    now = [1000.0]
    monkeypatch.setattr(progress.time, "time", lambda: now[0])
    reporter = progress.RichReporter()
    reporter.started(3)

    def entry(status: str) -> LockEntry:
        return LockEntry("sha256:1", status, option="FluxFinetune", finetune_type="Auto", images=2,
                         inputs={"num_iterations": 0})

    reporter.job_changed("a", "create", entry("training"), None)
    assert reporter.estimate() is None  # nothing has ended yet
    now[0] = 1030.0
    reporter.job_changed("a", "create", entry("succeeded"), None)
    reporter.job_changed("b", "create", entry("training"), None)
    now[0] = 1040.0
    assert reporter.estimate() == pytest.approx(20.0 + 30.0)  # b's 20 s left, then c's 30 s
    text = "".join(seg.text for seg in reporter.console.render(reporter))
    assert "about 50s left" in text and "1/3 jobs finished" in text
