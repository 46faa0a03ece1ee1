"""When to ask the API about a training: the poll schedule and what this run has learned.

The API has no push we can rely on (webhooks need a public URL) and no ETA, so ``apply``
polls. Two costs pull against each other: a slot frees only when we *see* a training end
(poll late and the next job starts late), and every poll spends a token of the shared rate
limit that a submission could have used (at ``max_in_flight: 50`` and 10 s polls the
status checks alone would take 5 requests/s).

- ``poll_delay`` backs off in proportion to the time already waited, so a finished training
  is seen at most ~5 % of its running time late, and a long one costs few requests.
- ``TrainingTimes`` remembers, per request shape (option, type, image count, iterations),
  the shortest training this run has seen end. A training of the same shape is first asked
  about at 90 % of that, and again when that shortest one had ended: the polls that could
  only answer "still running" are skipped, a finish at the usual time is seen at once, and
  one that comes sooner (the service got faster, or the first sample waited in a queue)
  is seen at the 90 % poll and lowers the estimate for the next ones.
  Only this run's own trainings count, timed from their 200 on the monotonic clock; the
  lockfile's timestamps include the upload and have one-second resolution, and a service
  that got faster since would leave slots idle.
"""

from __future__ import annotations

from runner.api.wire import Shape

POLL_SHARE = 0.05  # wait at most this share of the time already waited...
POLL_MAX_FACTOR = 6.0  # ...and never more than this many poll_intervals
LEARNED_SHARE = 0.9  # first poll of a known shape: this share of the shortest one seen


def poll_delay(poll_interval: float, waited: float) -> float:
    """The next poll's delay: back off in proportion to the time already waited.

    A finished training is noticed at most ~5% of its running time late (a slot frees
    only when we see it finish), while a long training is asked about at most every
    ``6 × poll_interval``: short jobs stay fast, long ones cost few requests.
    """
    return min(max(poll_interval, waited * POLL_SHARE), poll_interval * POLL_MAX_FACTOR)



class TrainingTimes:
    """The shortest successful training seen this run, per shape."""

    def __init__(self) -> None:
        self._shortest: dict[Shape, float] = {}

    def seen(self, shape: Shape, seconds: float) -> None:
        """A training of ``shape`` was seen finished ``seconds`` after its 200 arrived."""
        known = self._shortest.get(shape)
        if known is None or seconds < known:
            self._shortest[shape] = seconds

    def first_poll(self, shape: Shape, poll_interval: float) -> float:
        """Seconds after the 200 to ask first: ``poll_interval``, or later for a known shape."""
        known = self._shortest.get(shape)
        if known is None:
            return poll_interval
        return max(poll_interval, known * LEARNED_SHARE)

    def next_poll(self, shape: Shape, poll_interval: float, waited: float) -> float:
        """Seconds until the next poll of a training ``waited`` seconds old and still running:
        the usual back-off, but no later than when the shortest of its shape had ended."""
        delay = poll_delay(poll_interval, waited)
        known = self._shortest.get(shape)
        if known is not None and waited < known:
            delay = min(delay, known - waited)
        return delay
