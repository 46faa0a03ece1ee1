"""Reading files under a state folder that other hands may have filled.

The sandbox's state folder (``.runner/sandbox`` beside a manifest) can arrive in a pull
request, and ``runner report`` reads it; the sandbox itself reads back the uploads it
stored. Either way a file must be what it claims: reached without following a symbolic
link at any step below the root (each folder opened with ``O_NOFOLLOW`` relative to the
one before), a regular file (not a FIFO that blocks forever, not ``/dev/zero`` that never
ends), never larger than the caller's cap, and opened without blocking (``O_NONBLOCK``).

``Refused`` says why a file was not read, in words a report card can show; a file that
does not exist raises ``FileNotFoundError`` as usual.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
FILE_FLAGS = (
    os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _NOFOLLOW | _CLOEXEC | getattr(os, "O_BINARY", 0)
)
DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
READ_CHUNK = 1024 * 1024


class Refused(Exception):
    """A file that exists but is not read: ``reason`` is short and shown to users."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def relative_parts(relative: str | Sequence[str]) -> tuple[str, ...]:
    """The components of a relative path, refusing anything that could climb out."""
    parts = PurePosixPath(relative).parts if isinstance(relative, str) else tuple(relative)
    if not parts:
        raise Refused("empty path")
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\\" in part or "\0" in part:
            raise Refused("a path that leaves the state folder")
    return tuple(parts)


def _refusal(exc: OSError, what: str, name: str, dir_fd: int) -> Exception:
    if exc.errno == errno.ENOENT:
        return exc
    try:  # O_NOFOLLOW | O_DIRECTORY on a symlink says ENOTDIR on Linux: ask the entry itself
        is_link = stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        is_link = False
    if is_link or exc.errno in (errno.ELOOP, errno.EMLINK):  # EMLINK: FreeBSD's answer
        return Refused(f"{what} is a symbolic link")
    if exc.errno == errno.ENOTDIR:
        return Refused(f"{what} is not a folder")
    return Refused(f"{what} cannot be read ({exc.strerror or exc})")


def open_beneath(root: Path, relative: str | Sequence[str], max_bytes: int) -> BinaryIO:
    """Open ``root/relative`` for reading under the rules above; the caller closes it."""
    parts = relative_parts(relative)
    if os.open not in os.supports_dir_fd or not _NOFOLLOW:  # pragma: no cover - not POSIX
        return _open_by_path(root, parts, max_bytes)
    fd = os.open(root, os.O_RDONLY | _CLOEXEC | getattr(os, "O_DIRECTORY", 0))
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                raise _refusal(exc, f"folder {part!r}", part, fd) from None
            os.close(fd)
            fd = inner
        try:
            file_fd = os.open(parts[-1], FILE_FLAGS, dir_fd=fd)
        except OSError as exc:
            raise _refusal(exc, "the file", parts[-1], fd) from None
    finally:
        os.close(fd)
    return _checked(file_fd, max_bytes)


def _open_by_path(root: Path, parts: tuple[str, ...], max_bytes: int) -> BinaryIO:  # pragma: no cover
    path = root
    for part in parts:
        path = path / part
        if path.is_symlink():
            raise Refused(f"{part!r} is a symbolic link")
    return _checked(os.open(path, FILE_FLAGS), max_bytes)


def _checked(fd: int, max_bytes: int) -> BinaryIO:
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Refused("not a regular file (a FIFO, device, socket or folder)")
        if info.st_size > max_bytes:
            raise Refused(f"too large ({info.st_size / 1e6:.1f} MB; at most {max_bytes / 1e6:.0f} MB)")
        fh: BinaryIO = open(fd, "rb")  # noqa: SIM115 - the caller closes it
        return fh
    except BaseException:
        os.close(fd)
        raise


def read_beneath(root: Path, relative: str | Sequence[str], max_bytes: int) -> bytes:
    """The whole file (see ``open_beneath``), never more than ``max_bytes`` even if it grows."""
    with open_beneath(root, relative, max_bytes) as fh:
        chunks: list[bytes] = []
        size = 0
        while chunk := fh.read(min(READ_CHUNK, max_bytes + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise Refused(f"too large (more than {max_bytes / 1e6:.0f} MB)")
        return b"".join(chunks)
