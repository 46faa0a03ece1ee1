"""The uploaded images of a POST /finetune: checked, hashed and kept on disk.

Both run in a worker thread (the parts are spooled files) and read in chunks, so a large
upload neither blocks the event loop nor sits in memory.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from fastapi import UploadFile

from runner.sandbox.messages import ClientMessage

COPY_CHUNK = 1024 * 1024


def inspect(files: list[UploadFile], sides: list[int]) -> list[tuple[str, str, int]]:
    """(sha256, image format, size in bytes) for each upload. Raises ClientMessage(400) for
    empty or non-image files. ``sides`` receives each image's longer side in pixels (from
    its header)."""
    from PIL import Image

    out = []
    for index, upload in enumerate(files):
        upload.file.seek(0)
        digest = hashlib.sha256()
        size = 0
        while chunk := upload.file.read(COPY_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        name = upload.filename or ""
        if size == 0:
            raise ClientMessage(400, f"image_files[{index}] ({name!r}) is empty")
        upload.file.seek(0)
        try:
            with Image.open(upload.file) as im:
                fmt = (im.format or "").lower()
                sides.append(max(im.size))
        except Exception:
            raise ClientMessage(
                400, f"image_files[{index}] ({name!r}) is not an image the sandbox can read"
            ) from None
        out.append((digest.hexdigest(), fmt or "bin", size))
    return out


def store(files: list[UploadFile], formats: list[str], folder: Path) -> None:
    """Each upload as ``NNN.<format>`` in ``folder``: the names the sandbox chose, never the
    client's."""
    folder.mkdir(parents=True, exist_ok=True)
    for index, (upload, fmt) in enumerate(zip(files, formats, strict=True)):
        upload.file.seek(0)
        ext = {"jpeg": "jpg"}.get(fmt, fmt)
        with open(folder / f"{index:03d}.{ext}", "wb") as out:
            shutil.copyfileobj(upload.file, out, COPY_CHUNK)
