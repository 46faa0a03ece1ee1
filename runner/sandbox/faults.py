"""Fault injection and the per-key rate limiter: the parts that make the sandbox unreliable
on purpose, so a client's retry, backoff and "uncertain" paths can be exercised.

Kinds (``--fault-kinds``, any mix; each hit picks one uniformly among those that apply):

- ``500`` ``502`` ``503``: answered at once with that status; nothing was processed, so a
  retry is always safe.
- ``drop``: the request body is read, then the connection is closed with no answer;
  nothing was processed (the client cannot know that, which is the point).
- ``slow``: the answer comes normally after sleeping between half and all of
  ``--fault-delay`` seconds.
- ``lost_post``: POST /finetune only. The training is created and charged, then the
  connection is closed instead of answering: the client's "uncertain" case.
- ``gateway_timeout``: POST /finetune only. The training is created and charged (and kept
  under its ``Idempotency-Key``), then the client gets ``504 {"message": ...}`` instead of
  the 200, as from a proxy that gave up waiting. The key is still echoed (when idempotency
  is on), so a replay under it returns the stored 200; a replay is never turned into a 504
  itself, since it creates nothing.

Both POST-only kinds answer a refused POST (4xx) as usual: only a training that was created
has an answer worth losing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from runner.sandbox.config import POST_ONLY_FAULTS, SandboxConfig

STATUS_KINDS = {"500": 500, "502": 502, "503": 503}


class FaultInjector:
    """Draws a fault (or none) per request from its own RNG, seeded for reproducible tests."""

    def __init__(self, config: SandboxConfig) -> None:
        self._rate = config.fault_rate
        self._kinds = config.fault_kinds
        self._delay = config.fault_delay
        self._rng = random.Random(config.seed)

    def draw(self, *, is_post: bool) -> str | None:
        if self._rate <= 0:
            return None
        if self._rng.random() >= self._rate:
            return None
        kinds = [k for k in self._kinds if is_post or k not in POST_ONLY_FAULTS]
        if not kinds:
            return None
        return self._rng.choice(kinds)

    def slow_seconds(self) -> float:
        return self._rng.uniform(self._delay / 2, self._delay)


class RateLimiter:
    """A token bucket per account holding up to max(1, rate) tokens.

    ``acquire`` returns None when the request may pass, otherwise the whole number of
    seconds (at least 1, as ``Retry-After`` requires) until a token is back.
    """

    def __init__(self, rate: float | None, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._clock = clock
        self._capacity = max(1.0, rate or 1.0)
        self._buckets: dict[str, tuple[float, float]] = {}

    def acquire(self, account: str) -> int | None:
        if self._rate is None:
            return None
        now = self._clock()
        tokens, last = self._buckets.get(account, (self._capacity, now))
        tokens = min(self._capacity, tokens + max(0.0, now - last) * self._rate)
        if tokens >= 1.0:
            self._buckets[account] = (tokens - 1.0, now)
            return None
        self._buckets[account] = (tokens, now)
        return max(1, math.ceil((1.0 - tokens) / self._rate))
