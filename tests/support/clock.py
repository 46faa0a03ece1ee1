"""A fake clock, so timing is exact and tests never sleep."""

from __future__ import annotations


class FakeClock:
    """A settable ``time.time``/``time.monotonic`` stand-in: call it for the time, ``advance``
    it by hand, or hand ``sleep`` to code that waits (the wait is recorded in ``sleeps`` and
    moves the clock)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.advance(seconds)
