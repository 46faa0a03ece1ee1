"""The token bucket, driven by a fake clock so timing is exact and the test is fast."""

from __future__ import annotations

import itertools

import anyio
from support.clock import FakeClock

from runner.api.ratelimit import TokenBucket


def test_rate_and_burst_are_exact() -> None:
    """With rate 20/s and burst 4, 4 go at once and the rest leave 50 ms apart."""
    clock = FakeClock(1000.0)
    bucket = TokenBucket(20, 4, clock=clock, sleep=clock.sleep)
    times: list[float] = []

    async def main() -> None:
        for _ in range(24):
            await bucket.acquire()
            times.append(clock.now)

    anyio.run(main)
    assert times[:4] == [1000.0] * 4
    gaps = [round(b - a, 6) for a, b in itertools.pairwise(times[3:])]
    assert all(abs(g - 0.05) < 1e-9 for g in gaps), gaps
    # 20 requests after the burst take exactly one second.
    assert abs(times[-1] - times[3] - 1.0) < 1e-9


def test_pause_holds_every_request() -> None:
    """A Retry-After pause delays the next acquire even with tokens to spare."""
    clock = FakeClock(1000.0)
    bucket = TokenBucket(100, 10, clock=clock, sleep=clock.sleep)

    async def main() -> None:
        await bucket.acquire()
        bucket.pause(3.0)
        await bucket.acquire()

    anyio.run(main)
    assert clock.now >= 1003.0


def test_unlimited_never_sleeps() -> None:
    """rate None means no client-side limit."""
    clock = FakeClock(1000.0)
    bucket = TokenBucket(None, 1, clock=clock, sleep=clock.sleep)

    async def main() -> None:
        for _ in range(100):
            await bucket.acquire()

    anyio.run(main)
    assert clock.sleeps == []
    assert bucket.acquired == 100
