"""Training images on disk: check each file is a real image (``runner.manifest.image_paths``
finds which files a job names).

The image check must be fast enough for thousands of jobs yet catch what would make an
upload fail: it reads the header with Pillow (lazily imported; restricted to JPEG, PNG and
WebP so no other decoder runs on user files), refuses decompression bombs by pixel count
before any pixel is decoded, and tells a truncated file from a whole one by looking at its
tail (JPEG end marker, PNG ``IEND``, WebP RIFF length); only when the tail looks wrong does
it decode (a 1/8-scale JPEG draft, or PNG CRC verification) to be sure. Every file is opened
non-blocking after ``stat`` says it is a regular file, so a FIFO never hangs us and symlink
loops and unreadable files come back as messages. Results are cached per file identity
(inode, size, mtime) so plan and apply re-validating the manifest costs stats only, and a
file used by several jobs is decoded once.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import stat
import threading
import warnings
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, BinaryIO

from runner.manifest.image_paths import Containment, describe_os_error

MAX_PIXELS = 89_478_485  # Pillow's default MAX_IMAGE_PIXELS: 0.25 GB of 24-bit RGB
FORMATS = ("JPEG", "PNG", "WEBP")  # JPEG also opens cameras' multi-picture (MPO) files
_TAIL = 4096

# Never block on a FIFO swapped in; binary on Windows; not inherited by children.
_OPEN_FLAGS = (
    os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
)

_cache: dict[tuple[int, int, int, int, bool], str | None] = {}
_cache_lock = threading.Lock()



def check_file(
    path: Path, *, decode: bool = True, stats: dict[str, os.stat_result] | None = None
) -> str | None:
    """None if ``path`` is a readable JPEG/PNG/WebP image; otherwise what is wrong with it.

    ``decode=False`` checks only that it is a non-empty, readable regular file: a ``stat``
    and an ``access``, no open (this runs on every file of every plan). A file that passes
    has its ``stat`` result stored in ``stats`` (by ``str(path)``), so fingerprinting need
    not stat it again.
    """
    try:
        st = os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ENOENT and os.path.islink(path):
            return "broken symlink"
        return describe_os_error(exc)
    if stat.S_ISDIR(st.st_mode):
        return "is a folder, not an image"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file (a FIFO, socket or device)"
    if st.st_size == 0:
        return "empty file"
    if not decode:
        if not os.access(path, os.R_OK):
            return "permission denied"
        if stats is not None:
            stats[str(path)] = st
        return None
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, decode)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    result = _check_open(path, st.st_size, decode)
    with _cache_lock:
        _cache[key] = result
    if result is None and stats is not None:
        stats[str(path)] = st
    return result


def open_regular(path: Path, buffering: int = -1) -> BinaryIO:
    """Open an image without ever blocking: a file swapped for a FIFO (or a device, or a
    folder) since validation is refused, instead of hanging the whole apply or plan."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file (changed since validation)", str(path))
        # O_NONBLOCK stays: it changes nothing for a regular file, and clearing it would
        # cost two more system calls per file on a 100,000-file plan.
        fh: BinaryIO = open(fd, "rb", buffering=buffering)  # noqa: SIM115 - the caller closes it
        return fh
    except BaseException:
        os.close(fd)
        raise


def _check_open(path: Path, size: int, decode: bool) -> str | None:
    try:
        # O_NONBLOCK: if the file was swapped for a FIFO since the stat, open must not wait.
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        return describe_os_error(exc)
    try:
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return "not a regular file (a FIFO, socket or device)"
            return _check_image(fh, size) if decode else None
    except OSError as exc:
        return describe_os_error(exc)


def check_content(content: bytes) -> str | None:
    """``check_file``'s image check on a small file's bytes, already read for its hash."""
    if not content:
        return "empty file"
    return _check_image(io.BytesIO(content), len(content))


@functools.cache
def pil() -> tuple[Any, type[Exception]]:
    """Import Pillow on first use only, so commands that never look at images start fast.

    Cached: the imports cost more per call than a small image's header check.
    """
    from PIL import Image, JpegImagePlugin, PngImagePlugin, UnidentifiedImageError, WebPImagePlugin

    del JpegImagePlugin, PngImagePlugin, WebPImagePlugin  # registered on import
    return Image, UnidentifiedImageError


def _check_image(fh: IO[bytes], size: int) -> str | None:
    Image, UnidentifiedImageError = pil()
    # Every time, not once: whoever resets the warning filters (pytest does per test) would
    # otherwise see Pillow's warning for an image we refuse by size ourselves.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    try:
        with Image.open(fh, formats=FORMATS) as im:
            fmt = im.format
            width, height = im.size
            if width <= 0 or height <= 0:
                return "image has no pixels"
            if width * height > MAX_PIXELS:
                return (
                    f"image is {width}x{height} pixels, over the limit of {MAX_PIXELS} "
                    "(refused as a possible decompression bomb)"
                )
            if _tail_ok(fh, fmt, size):
                return None
            return _deep_check(im, fmt)
    except Image.DecompressionBombError:
        return f"image has too many pixels (over {MAX_PIXELS}; refused as a decompression bomb)"
    except UnidentifiedImageError:
        from runner.manifest.lfs import pointer_problem  # a checkout without LFS: say so (issue 14)

        return pointer_problem(fh, size) or "not a JPEG, PNG or WebP image"
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as exc:
        return _damage(fh, size, exc)
    except Exception as exc:  # a decoder's surprise on a hostile file is still just a bad file
        return f"cannot read image ({type(exc).__name__}: {exc})"


def _damage(fh: IO[bytes], size: int, exc: BaseException) -> str:
    """Name the usual damage (a cut-off copy) plainly; show the decoder's words otherwise."""
    reason = str(exc)
    if "truncat" in reason.lower() or isinstance(exc, EOFError):
        return "truncated image"
    try:
        fh.seek(0)
        head = fh.read(12)
    except OSError:
        head = b""
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and int.from_bytes(head[4:8], "little") + 8 > size:
        return "truncated image"
    return f"corrupt image ({reason})"


def _tail_ok(fh: IO[bytes], fmt: str | None, size: int) -> bool:
    """Cheap completeness check on the last bytes; False means 'look closer', not 'bad'."""
    if fmt == "WEBP":
        fh.seek(0)
        head = fh.read(12)
        declared = int.from_bytes(head[4:8], "little") + 8
        return head[:4] == b"RIFF" and declared <= size
    fh.seek(max(0, size - _TAIL))
    tail = fh.read(_TAIL).rstrip(b"\x00\r\n\t ")
    if fmt in ("JPEG", "MPO"):
        return tail.endswith(b"\xff\xd9")
    if fmt == "PNG":
        return b"IEND" in tail[-12:]
    return False


def _deep_check(im: Any, fmt: str | None) -> str | None:
    """Decode just enough to be sure: JPEG at 1/8 scale, PNG by CRC of every chunk."""
    try:
        if fmt == "PNG":
            im.verify()
        else:
            im.draft("RGB", (max(1, im.size[0] // 8), max(1, im.size[1] // 8)))
            im.load()
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        reason = str(exc)
        if "truncat" in reason.lower() or isinstance(exc, EOFError):
            return "truncated image"
        return f"corrupt image ({reason})"
    return None


def find_problems(
    paths: Iterable[Path],
    *,
    decode: bool = True,
    stats: dict[str, os.stat_result] | None = None,
    contain: Containment | None = None,
    outside: dict[Path, str] | None = None,
) -> dict[Path, str]:
    """``check_files``, keeping only the files with a problem (usually none).

    Without ``decode`` (plan and apply, on every image of the manifest) this is an inlined
    loop on the path text: stat, regular, non-empty, ``access``; a file that looks wrong
    goes through ``check_file`` for the exact message. A file listed twice is checked
    twice, which costs less than hashing 100,000 Paths to find the duplicates.

    With ``contain``, a file that a symlink takes out of the folder goes into ``outside``
    (path -> where it leads) instead, and is neither checked nor opened. Files whose stat
    is in ``stats`` already were checked by ``resolve``.
    """
    if contain is not None:
        return _find_problems_contained(paths, decode, stats, contain, {} if outside is None else outside)
    if decode:
        return {p: problem for p, problem in check_files(paths, stats=stats).items() if problem}
    problems: dict[Path, str] = {}
    do_stat, do_access, is_reg, readable = os.stat, os.access, stat.S_ISREG, os.R_OK
    known = stats if stats is not None else {}
    for path in paths:
        text = str(path)
        st = known.get(text)  # stat'ed moments ago by ``resolve``
        if st is None:
            try:
                st = do_stat(text)
            except OSError:
                st = None
        if st is not None and is_reg(st.st_mode) and st.st_size and do_access(text, readable):
            if stats is not None:
                stats[text] = st
            continue
        _report_problem(path, stats, problems)
    return problems


def _report_problem(path: Path, stats: dict[str, os.stat_result] | None, problems: dict[Path, str]) -> None:
    """A file that failed the quick stat check: ``check_file`` says exactly what is wrong."""
    problem = check_file(path, decode=False, stats=stats)
    if problem:
        problems[path] = problem


def _find_problems_contained(
    paths: Iterable[Path],
    decode: bool,
    stats: dict[str, os.stat_result] | None,
    contain: Containment,
    outside: dict[Path, str],
) -> dict[Path, str]:
    """``find_problems`` with the symlink check: one ``lstat`` per file, as ``stat`` was."""
    problems: dict[Path, str] = {}
    kept: list[Path] = []
    do_lstat, do_stat, do_access, readable = os.lstat, os.stat, os.access, os.R_OK
    is_reg, is_link = stat.S_ISREG, stat.S_ISLNK
    known = stats if stats is not None else {}  # resolve's stats: checked there
    inside_dir, sep = contain._inside.get, os.sep  # folders known to be inside (leaves fills it)
    for path in paths:
        text = str(path)
        st = known.get(text)
        if st is None:
            try:
                st = do_lstat(text)
            except OSError:
                st = None
            link = st is not None and is_link(st.st_mode)
            # The usual case inline: not a link, in a folder already found to be inside.
            if link or not inside_dir(text[: text.rfind(sep)]):
                leads = contain.leaves(text, link)
                if leads is not None:
                    outside[path] = leads
                    continue
            if link:
                try:
                    st = do_stat(text)
                except OSError:
                    st = None
        if decode:
            kept.append(path)
            continue
        if st is not None and is_reg(st.st_mode) and st.st_size and do_access(text, readable):
            if stats is not None:
                stats[text] = st
            continue
        _report_problem(path, stats, problems)
    if decode and kept:
        problems = {p: problem for p, problem in check_files(kept, stats=stats).items() if problem}
    return problems


def check_files(
    paths: Iterable[Path],
    *,
    decode: bool = True,
    workers: int = 1,
    stats: dict[str, os.stat_result] | None = None,
) -> dict[Path, str | None]:
    """Check many files, each only once.

    Sequential by default: measured on 20,000 small images with a warm page cache (the usual
    case right after a checkout), threads were slower (0.6 s alone, 0.8 s with 2, 1.2 s
    with 4), because Pillow's header parsing holds the GIL. ``workers > 1`` helps only
    where each read waits on the disk or network (cold caches, network drives).
    """
    unique = list(dict.fromkeys(paths))
    if workers <= 1 or len(unique) < 64 or not decode:
        return {p: check_file(p, decode=decode, stats=stats) for p in unique}
    # A few large batches: one future per file costs more than a small image's check.
    size = max(16, len(unique) // (workers * 4))
    batches = [unique[i : i + size] for i in range(0, len(unique), size)]

    def run(batch: list[Path]) -> list[str | None]:
        return [check_file(p, decode=decode, stats=stats) for p in batch]

    out: dict[Path, str | None] = {}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="imgcheck") as pool:
        for batch, results in zip(batches, pool.map(run, batches), strict=True):
            out.update(zip(batch, results, strict=True))
    return out
