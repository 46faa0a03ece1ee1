"""A token bucket shared by every request to the API; a 429's Retry-After pauses all of it.

GCRA form (a "theoretical arrival time"): exact, O(1), no background refill task. Waiters
queue on a fair lock so requests go out in arrival order.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

import anyio


class TokenBucket:
    def __init__(
        self,
        rate: float | None,
        burst: int = 1,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.rate = rate if rate and rate > 0 else None
        self.burst = max(1, int(burst))
        self._clock = clock
        self._sleep = sleep
        self._tat = clock()
        self._paused_until = 0.0
        self._lock = anyio.Lock()
        self.acquired = 0

    def pause(self, seconds: float) -> None:
        """Hold every request back for ``seconds`` (a server said so)."""
        self._paused_until = max(self._paused_until, self._clock() + max(0.0, seconds))

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self._clock()
                wait = self._paused_until - now
                if self.rate is not None:
                    interval = 1.0 / self.rate
                    earliest = self._tat - (self.burst - 1) * interval
                    wait = max(wait, earliest - now)
                if wait <= 0:
                    break
                await self._sleep(wait)
            if self.rate is not None:
                self._tat = max(self._tat, now) + 1.0 / self.rate
            self.acquired += 1
