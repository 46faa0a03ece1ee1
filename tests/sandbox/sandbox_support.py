"""Helpers for the sandbox tests: images made with Pillow, multipart parts (the fake clock is
``support.clock.FakeClock``)."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image

KEY = "test-key-1"
OTHER_KEY = "test-key-2"
HEADERS = {"X-Api-Key": KEY}


def png_bytes(color: tuple[int, int, int] = (200, 40, 40), size: int = 48) -> bytes:
    buf = io.BytesIO()
    image = Image.new("RGB", (size, size), color)
    image.putpixel((0, 0), (255, 255, 255))
    image.save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(color: tuple[int, int, int] = (40, 40, 200), size: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def image_parts(count: int = 3) -> list[tuple[str, tuple[str, bytes, str]]]:
    """``count`` distinct images as repeated ``image_files`` multipart parts."""
    parts = []
    for i in range(count):
        if i % 3 == 2:
            parts.append(
                ("image_files", (f"img{i}.jpg", jpeg_bytes((i * 9 % 256, 80, 120)), "image/jpeg"))
            )
        else:
            parts.append(
                ("image_files", (f"img{i}.png", png_bytes((i * 17 % 256, 120, 60)), "image/png"))
            )
    return parts


def data(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = response.json()["data"]
    return body
