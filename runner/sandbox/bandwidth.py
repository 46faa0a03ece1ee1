"""``--bandwidth-mbps``: request bodies read no faster than a CI runner's uplink sends them.

One link shared by every request, as an uplink is: concurrent uploads split the rate
between them instead of each getting all of it. The app's ``receive`` is slowed; uvicorn
then stops reading the socket once its buffer is full, so the client really waits (TCP
flow control), as it would behind a slow link, and its own timing is what gets measured.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio
from starlette.types import Message, Receive

# Up to this much may arrive at once after an idle moment (a link's buffers), so the
# first chunk of a request is not held back for nothing.
BURST_SECONDS = 0.05


class Link:
    """A shared virtual clock: each chunk is due when the link would have carried it."""

    def __init__(self, mbps: float, clock: Callable[[], float] = anyio.current_time) -> None:
        self.bytes_per_second = mbps * 1_000_000 / 8
        self._clock = clock
        self._free_at = 0.0  # when the link finishes what it has carried so far

    async def carry(self, size: int) -> None:
        """Wait until ``size`` more bytes could have crossed the link."""
        if size <= 0:
            return
        now = self._clock()
        start = max(self._free_at, now - BURST_SECONDS)
        self._free_at = start + size / self.bytes_per_second
        wait = self._free_at - now
        if wait > 0:
            await anyio.sleep(wait)

    def throttled(self, receive: Receive) -> Receive:
        """``receive`` returning each body chunk only once the link has carried it."""

        async def slow() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                await self.carry(len(message.get("body", b"")))
            return message

        return slow
