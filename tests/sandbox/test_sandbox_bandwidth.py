"""``--bandwidth-mbps``: the sandbox reads request bodies no faster than the link, one link
shared by every request, measured over real loopback HTTP."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
from sandbox_support import HEADERS

BODY = 1_000_000  # bytes; at 16 Mbit/s (2 MB/s) half a second


def post(url: str, size: int) -> int:
    """POST a multipart body of about ``size`` bytes (one part: not an image, so a 400)."""
    files = [("image_files", ("noise.bin", os.urandom(size), "application/octet-stream"))]
    return httpx.post(f"{url}/finetune", headers=HEADERS, files=files, timeout=30).status_code


def timed(action: Callable[[], Any]) -> float:
    started = time.monotonic()
    action()
    return time.monotonic() - started


def test_a_body_takes_as_long_as_the_link_needs(server: Callable[..., Any]) -> None:
    """1 MB at 16 Mbit/s takes at least 0.45 s (over loopback it takes milliseconds), and
    not much longer: the link runs at its rate, not slower."""
    with server(bandwidth_mbps=16) as slow:
        post(slow.url, 1000)  # connection and first-request costs out of the timing
        assert 0.45 <= timed(lambda: post(slow.url, BODY)) < 3.0


def test_concurrent_uploads_share_one_link(server: Callable[..., Any]) -> None:
    """Two 0.5 MB bodies at once through 16 Mbit/s take as long as one of 1 MB: the rate
    is the link's, not each request's."""
    with server(bandwidth_mbps=16) as slow:
        post(slow.url, 1000)
        threads = [threading.Thread(target=post, args=(slow.url, BODY // 2)) for _ in range(2)]

        def both() -> None:
            for t in threads:
                t.start()
            for t in threads:
                t.join()

        assert timed(both) >= 0.45
