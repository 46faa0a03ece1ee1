"""Downscaling images before upload (``upload.max_side``), and the cache of what it made.

Phone and camera photos are 3-8 MB of 12 MP or more; Flux LoRA trainers work at about one
megapixel, so most of those bytes would be thrown away after crossing a CI runner's
uplink. An image whose longer side is larger than ``max_side`` is sent downscaled:

- EXIF orientation applied (a portrait photo stays upright once its tag is gone);
- the same format (JPEG stays JPEG, PNG stays PNG, WebP stays WebP), so the part's name
  and type are unchanged;
- JPEGs are decoded at the largest DCT scale (1/2, 1/4, 1/8) that still leaves at least
  ``max_side`` pixels (libjpeg's scaled decode, which filters as it reduces: twice as
  fast as a full decode and a quarter of the memory), then Lanczos to the exact size;
  JPEG and WebP are written at ``jpeg_quality`` (95 unless set);
- metadata dropped (EXIF, XMP, comments, text chunks: GPS positions and camera serials
  need not travel), except the ICC colour profile, which changes how the pixels look.

What the fingerprint records for a downscaled image is ``sent_id``: the original's digest
and the setting, never the downscaled bytes' digest, so a new Pillow version (whose
encoder may write other bytes) never replaces a trained job.

The cache: the downscaled files are derived data, kept in the per-user cache folder
(``runner.cache``: never under the repository, where a commit could plant a file that
claims to be the downscaled copy of an image), under ``resized/``, named by a hash of the
original's digest, the setting and ``RESIZE_VERSION``. Each file has a sealed sidecar
(``usercache.write_sealed``) holding its size and sha256; a file is used only when its
sidecar verifies, its size matches, and (before it is sent) its bytes hash to the sidecar's
sha256. Everything is opened with ``O_NOFOLLOW`` and written by temp file and rename, so a
crash leaves the old file or none. With caches off, files go to a private temporary folder
for this process. A miss only costs a resize, never a wrong upload.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import stat
import tempfile
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from runner import cache as usercache
from runner.atomic import NOFOLLOW, atomic_write_bytes
from runner.manifest.images import MAX_PIXELS, open_regular
from runner.models import ImageInfo

# Bump when the bytes written for a given input and setting change (the cache key only;
# the fingerprint never depends on it).
RESIZE_VERSION = 1
DEFAULT_QUALITY = 95
# The formats written; cameras' multi-picture JPEGs (MPO) are sent as their first picture.
_SAVE_AS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "WEBP": "WEBP"}
LOSSY = frozenset({"JPEG", "WEBP"})
_READ_FLAGS = os.O_RDONLY | NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_CHUNK = 1 << 20
PURPOSE = "resized"


@dataclass(frozen=True)
class Setting:
    """What decides the downscaled bytes besides the image itself."""

    max_side: int
    quality: int = DEFAULT_QUALITY

    def applies(self, info: ImageInfo) -> bool:
        return info.longer > self.max_side


@dataclass(frozen=True)
class Resized:
    """A downscaled image in the cache: what is sent instead of the original."""

    path: Path
    size: int
    sha256: str
    width: int
    height: int


class StaleResize(Exception):
    """A cached file no longer matches its sidecar (changed, damaged): resize again."""


def read_info(path: Path) -> ImageInfo:
    """The header's size and format (no pixels decoded); OSError when it is not an image."""
    from runner.manifest.images import FORMATS, pil

    image_mod, unidentified = pil()
    with open_regular(path) as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore", image_mod.DecompressionBombWarning)
        try:
            with image_mod.open(fh, formats=FORMATS) as im:
                return ImageInfo(im.size[0], im.size[1], str(im.format))
        except (unidentified, SyntaxError, ValueError) as exc:
            raise OSError(f"not a JPEG, PNG or WebP image: {exc}") from exc


def sent_id(digest: str, info: ImageInfo, setting: Setting | None) -> str:
    """The image as the fingerprint sees it: its digest, plus the setting when it is
    downscaled (the quality only for the formats it changes)."""
    if setting is None or not setting.applies(info):
        return digest
    quality = f"q{setting.quality}" if _SAVE_AS.get(info.fmt) in LOSSY else ""
    return f"{digest}@{setting.max_side}{quality}"


def target_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size with the longer side at ``max_side``, the aspect kept (at least 1 pixel)."""
    scale = max_side / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def cache_key(digest: str, info: ImageInfo, setting: Setting) -> str:
    text = f"{RESIZE_VERSION}:{digest}:{_SAVE_AS.get(info.fmt, info.fmt)}:{setting.max_side}:{setting.quality}"
    return hashlib.sha256(text.encode()).hexdigest()[:40]


# -- the work -----------------------------------------------------------------------------


def downscale(path: Path, setting: Setting) -> tuple[bytes, int, int]:
    """The downscaled image's bytes and size (module docstring); OSError for a bad file.

    Holds one decoded image (at most a quarter of the original's pixels for a JPEG) and
    the encoded result, about 15 MB for a 12 MP photo at ``max_side: 1536``.
    """
    from PIL import Image, ImageOps

    from runner.manifest.images import FORMATS

    with open_regular(path) as fh, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(fh, formats=FORMATS) as opened:
                fmt = _SAVE_AS.get(str(opened.format))
                if fmt is None:  # pragma: no cover - FORMATS admits only these
                    raise OSError(f"cannot downscale {opened.format} images")
                width, height = opened.size
                if width * height > MAX_PIXELS:
                    raise OSError(f"image is {width}x{height} pixels, over the limit of {MAX_PIXELS}")
                icc = opened.info.get("icc_profile")
                new_w, new_h = target_size(width, height, setting.max_side)
                if fmt == "JPEG":
                    # The largest scaled decode that still has the pixels the result needs.
                    opened.draft(opened.mode if opened.mode in ("RGB", "L", "CMYK") else "RGB", (new_w, new_h))
                opened.load()
                # In place: a second full-size copy would double the peak memory.
                ImageOps.exif_transpose(opened, in_place=True)
                image = _resizable(opened, fmt)
                # exif_transpose swapped the sides when the photo stands upright.
                out_w, out_h = target_size(image.size[0], image.size[1], setting.max_side)
                smaller = image.resize((out_w, out_h), Image.Resampling.LANCZOS, reducing_gap=3.0)
                del image
        except (SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as exc:
            raise OSError(f"cannot decode the image to downscale it: {exc}") from exc
    smaller.info.clear()  # no EXIF, XMP, comments or text chunks travel on
    options: dict[str, Any] = {}
    if icc:
        options["icc_profile"] = icc
    if fmt == "JPEG":
        options.update(quality=setting.quality, optimize=True)
    elif fmt == "WEBP":
        options.update(quality=setting.quality, method=4)
    buf = io.BytesIO()
    smaller.save(buf, format=fmt, **options)
    return buf.getvalue(), out_w, out_h


def _resizable(image: Any, fmt: str) -> Any:
    """A mode Lanczos works in and ``fmt`` can write (palette and 1-bit images widen)."""
    if image.mode == "P":
        return image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode == "1":
        return image.convert("L")
    if fmt == "JPEG" and image.mode not in ("RGB", "L", "CMYK"):
        return image.convert("RGB")
    return image


# -- the cache ------------------------------------------------------------------------------


class ResizeCache:
    """Downscaled images by ``cache_key``: files and sealed sidecars in one private folder.

    Thread-safe: two threads asking for one key resize it once (the second waits).
    """

    def __init__(self, folder: Path | None) -> None:
        self._private = folder is None
        self.folder = folder if folder is not None else Path(tempfile.mkdtemp(prefix="runner-resized-"))
        self._ready = False
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self.made = 0
        self.reused = 0

    @classmethod
    def for_manifest(cls, manifest_folder: Path) -> ResizeCache:
        where = usercache.folder_for(manifest_folder)
        return cls(None if where is None else where / "resized")

    def close(self) -> None:
        """Remove a private temporary folder (caches off); a cache folder stays."""
        if self._private:
            shutil.rmtree(self.folder, ignore_errors=True)

    def _folder(self) -> Path:
        if not self._ready:
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.folder, 0o700)
            st = os.lstat(self.folder)
            mine = not hasattr(os, "geteuid") or st.st_uid == os.geteuid()
            if not stat.S_ISDIR(st.st_mode) or not mine or st.st_mode & 0o022:
                raise OSError(f"the resize cache {self.folder} is not a private folder of this user")
            self._ready = True
        return self.folder

    def _paths(self, key: str, fmt: str) -> tuple[Path, Path]:
        ext = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}[_SAVE_AS[fmt]]
        folder = self._folder()
        return folder / f"{key}{ext}", folder / f"{key}.json"

    def lookup(self, key: str, fmt: str) -> Resized | None:
        """The cached file's record when its sidecar verifies and its size matches; reads
        the sidecar and stats the file, never the image's bytes."""
        try:
            image, sidecar = self._paths(key, fmt)
        except OSError:
            return None
        payload = usercache.read_sealed(sidecar, PURPOSE) if not self._private else _read_plain(sidecar)
        if payload is None:
            return None
        try:
            record = json.loads(payload)
            found = Resized(image, int(record["size"]), str(record["sha256"]), int(record["width"]),
                            int(record["height"]))
        except (ValueError, KeyError, TypeError):
            return None
        try:
            st = os.lstat(image)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_size != found.size:
            return None
        return found

    def get(self, source: Path, digest: str, info: ImageInfo, setting: Setting) -> Resized:
        """The downscaled copy of ``source``: from the cache, else made now and cached."""
        key = cache_key(digest, info, setting)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            found = self.lookup(key, info.fmt)
            if found is not None:
                self.reused += 1
                return found
            return self._make(source, key, info, setting)

    def refresh(self, source: Path, digest: str, info: ImageInfo, setting: Setting) -> Resized:
        """Make it again (the cached copy failed its check before upload)."""
        key = cache_key(digest, info, setting)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            return self._make(source, key, info, setting)

    def _make(self, source: Path, key: str, info: ImageInfo, setting: Setting) -> Resized:
        data, width, height = downscale(source, setting)
        digest = hashlib.sha256(data).hexdigest()
        image, sidecar = self._paths(key, info.fmt)
        atomic_write_bytes(image, data, fsync=False)  # a cache: a torn file fails its check
        record = {"size": len(data), "sha256": digest, "width": width, "height": height}
        payload = json.dumps(record, sort_keys=True).encode()
        if self._private:
            atomic_write_bytes(sidecar, payload, fsync=False)
        else:
            usercache.write_sealed(sidecar, PURPOSE, payload)
        self.made += 1
        return Resized(image, len(data), digest, width, height)


def _read_plain(path: Path) -> bytes | None:
    """A sidecar in this process's own temporary folder (caches off): not sealed."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        return fh.read(1 << 16)


def open_verified(resized: Resized) -> BinaryIO:
    """Open a cached file to send it: never through a symlink, a regular file of this
    user, its size and sha256 those of its sidecar; positioned at the start. The same
    open file is what gets sent, so nothing can change between the check and the upload.
    Raises ``StaleResize`` when it does not match."""
    try:
        fd = os.open(resized.path, _READ_FLAGS)
    except OSError as exc:
        raise StaleResize(f"{resized.path}: {exc.strerror or exc}") from exc
    fh = os.fdopen(fd, "rb")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != resized.size or (
            hasattr(os, "geteuid") and st.st_uid != os.geteuid()
        ):
            raise StaleResize(f"{resized.path}: not the file its record describes")
        h = hashlib.sha256()
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
        if h.hexdigest() != resized.sha256:
            raise StaleResize(f"{resized.path}: its content changed since it was made")
        fh.seek(0)
        return fh
    except BaseException:
        fh.close()
        raise
