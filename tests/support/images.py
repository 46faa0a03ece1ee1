"""Real image files for tests: small, valid, and made on the spot with Pillow."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

Color = tuple[int, int, int]


def seed_color(seed: int) -> Color:
    """A colour that follows ``seed``, so content and digest differ from seed to seed."""
    return ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256)


def image_bytes(
    size: tuple[int, int] = (32, 32),
    color: Color = (200, 30, 30),
    fmt: str = "PNG",
    *,
    seed: int | None = None,
    mode: str = "RGB",
) -> bytes:
    """An encoded image (PNG, JPEG, WEBP...); ``seed`` picks the colour (``seed_color``);
    ``mode="RGBA"`` gives a fully transparent image."""
    from PIL import Image

    fill: Color | tuple[int, int, int, int] = seed_color(seed) if seed is not None else color
    if mode == "RGBA":
        fill = (0, 0, 0, 0)
    out = io.BytesIO()
    Image.new(mode, size, fill).save(out, format=fmt)
    return out.getvalue()


def make_image(
    path: Path,
    size: tuple[int, int] = (32, 32),
    color: Color = (200, 30, 30),
    fmt: str = "PNG",
    *,
    seed: int | None = None,
) -> Path:
    """Write a small real image at ``path`` (parents created) and return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(size, color, fmt, seed=seed))
    return path


def make_bomb_png(path: Path, width: int = 40_000, height: int = 40_000) -> Path:
    """A tiny PNG whose header claims ``width x height`` pixels: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def truncate(path: Path, keep: float = 0.5) -> Path:
    """Cut a file to a fraction of its size, like an interrupted copy."""
    data = path.read_bytes()
    path.write_bytes(data[: max(1, int(len(data) * keep))])
    return path
