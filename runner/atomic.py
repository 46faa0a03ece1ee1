"""Atomic file replacement, and opening runner's own state files without following symlinks.

``atomic_write_text``: temp file in the same folder, fsync, rename, fsync the folder. A
reader (or a crash) sees the old file or the new one, never half of either. The temp file
is made by ``tempfile.mkstemp`` (``O_CREAT | O_EXCL | O_NOFOLLOW``, a random name, mode
0600), so a planted symlink can neither be written through nor guessed; the rename
replaces a symlink at the destination instead of writing through it.

``open_state``: the lockfile, its journal and lock are runner's state, which a pull
request must not be able to redirect. They are opened with ``O_NOFOLLOW`` (and
``O_NONBLOCK``, so a FIFO cannot hang us) and must be regular files; a symlink is an
``UnsafeStateFile`` error, never followed.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_FLAGS = NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


class UnsafeStateFile(OSError):
    """A state file (or its folder) is a symlink or not a regular file: not opened."""


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # some filesystems refuse O_RDONLY fsync on dirs
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_text(path: Path, text: str, *, fsync: bool = True) -> None:
    atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_write_bytes(path: Path, data: bytes, *, fsync: bool = True, replace: bool = True) -> None:
    """Write ``data`` to ``path`` atomically (mode 0600 when new: mkstemp's).

    ``replace=False`` never replaces an existing file (or symlink): ``FileExistsError``.
    """
    folder = path.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            os.link(tmp, path, follow_symlinks=False)  # fails if anything is there
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        fsync_dir(folder)


def is_symlink_error(exc: OSError, path: Path | str) -> bool:
    """Did ``O_NOFOLLOW`` refuse ``path`` because it is a symlink? (ELOOP on Linux and
    macOS, EMLINK on FreeBSD, EFTYPE on NetBSD)."""
    if exc.errno not in (errno.ELOOP, errno.EMLINK, getattr(errno, "EFTYPE", errno.ELOOP)):
        return False
    return os.path.islink(path)


def open_state(path: Path, flags: int = os.O_RDONLY, mode: int = 0o644, *, dir_fd: int | None = None) -> int:
    """``os.open`` for a state file: never through a symlink, regular files only.

    Raises ``UnsafeStateFile`` (an OSError) for a symlink or anything but a regular file,
    and the OSError of the open otherwise (``FileNotFoundError`` when it is missing).
    """
    try:
        fd = os.open(path if dir_fd is None else path.name, flags | _FLAGS, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ENXIO or is_symlink_error(exc, path):
            raise UnsafeStateFile(exc.errno, _why(path), str(path)) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafeStateFile(errno.EINVAL, "not a regular file", str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _why(path: Path) -> str:
    if os.path.islink(path):
        try:
            return f"is a symlink (to {os.readlink(path)})"
        except OSError:
            return "is a symlink"
    return "not a regular file"


def read_state(path: Path) -> bytes | None:
    """The bytes of a state file, or None when it does not exist (see ``open_state``)."""
    try:
        fd = open_state(path)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def check_state_dir(path: Path) -> bool:
    """True when ``path`` is a real folder, False when nothing is there; ``UnsafeStateFile``
    for a symlink (to anything, even a folder) or another kind of file."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeStateFile(errno.ELOOP, _why(path), str(path))
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeStateFile(errno.ENOTDIR, "not a folder", str(path))
    return True


def open_state_dir(path: Path, *, create: bool = False) -> int:
    """An ``O_DIRECTORY | O_NOFOLLOW`` descriptor of a state folder (made 0755 if
    ``create``), for opening files in it with ``dir_fd`` so a swapped folder cannot redirect
    them; ``UnsafeStateFile`` when it is a symlink or not a folder."""
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o755)  # mkdir never follows a symlink at ``path``
    check_state_dir(path)
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(path, flags)
    except OSError as exc:
        if is_symlink_error(exc, path) or exc.errno == errno.ENOTDIR:
            raise UnsafeStateFile(exc.errno, _why(path), str(path)) from None
        raise
