"""The live view's remaining-time estimate, from the trainings this run has seen end.

The API gives no ETA, so the only honest estimate is what this run has measured: trainings
of one shape (option, type, image count, iterations) take about as long as the ones of that
shape that already ended. Until every running job's shape has been seen to end once, there
is no estimate ("estimating…" would be a guess dressed as a number). Queued jobs are
counted at the mean of all measured trainings, spread over the slots this run has used.
Wall-clock seconds throughout: a resumed training is timed from its ``submitted_at``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from runner.models import LockEntry

EtaShape = tuple[str | None, str | None, int, object]


def entry_shape(entry: LockEntry) -> EtaShape:
    return (entry.option, entry.finetune_type, entry.images, entry.inputs.get("num_iterations"))


def wall_time(iso: str | None) -> float | None:
    if not iso:
        return None
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


class Durations:
    """Mean training time per shape, from the ones seen to succeed."""

    def __init__(self) -> None:
        self._sum: dict[EtaShape, float] = {}
        self._count: dict[EtaShape, int] = {}

    def add(self, shape: EtaShape, seconds: float) -> None:
        if seconds >= 0:
            self._sum[shape] = self._sum.get(shape, 0.0) + seconds
            self._count[shape] = self._count.get(shape, 0) + 1

    def mean(self, shape: EtaShape) -> float | None:
        count = self._count.get(shape)
        return self._sum[shape] / count if count else None

    def overall(self) -> float | None:
        count = sum(self._count.values())
        return sum(self._sum.values()) / count if count else None


def remaining(
    durations: Durations,
    running: Iterable[tuple[EtaShape, float]],
    queued: int,
    slots: int,
) -> float | None:
    """Seconds until the last job ends, or None while a running job's shape is unmeasured.

    ``running``: (shape, seconds it has trained so far) per training job. The estimate is
    the longer of the slowest running job's time left and all the work left shared by the
    ``slots`` jobs that run at once; an overdue job counts as about to end."""
    left: list[float] = []
    for shape, elapsed in running:
        typical = durations.mean(shape)
        if typical is None:
            return None
        left.append(max(0.0, typical - elapsed))
    overall = durations.overall()
    if overall is None or (not left and queued == 0):
        return None
    work = sum(left) + queued * overall
    return max(max(left, default=0.0), work / max(1, slots))

