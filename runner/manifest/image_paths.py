"""Which files a job names: folders, globs and lists resolved inside the manifest's folder.

Resolution is deterministic because the order of images is part of a job's fingerprint and,
for Kontext, of its meaning: folders and globs are read in sorted order, hidden files are
skipped, and only ``.jpg .jpeg .png .webp`` count.

Symlinks that leave the manifest's folder are refused (``Containment``) unless the command
runs with ``--allow-outside-links`` (``ALLOW_OUTSIDE_LINKS``): a pull request can commit a
link to ``/etc/passwd`` or to another project's data, and the reviewed apply would upload
it. The check costs no extra system call per file: the ``stat`` every file gets anyway
becomes an ``lstat``, and each folder's real path is found once.
"""

from __future__ import annotations

import errno
import fnmatch
import functools
import glob
import os
import stat
from contextvars import ContextVar
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

SUPPORTED_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SUPPORTED_TEXT = " ".join(SUPPORTED_SUFFIXES)
MAX_GLOB_MATCHES = 100_000

# Set by the command line's ``--allow-outside-links`` for the length of one command.
ALLOW_OUTSIDE_LINKS: ContextVar[bool] = ContextVar("allow_outside_links", default=False)
LEAVES = "symlink leaves the manifest's folder"


@dataclass
class Resolved:
    """What one ``images`` entry resolved to: absolute paths in order, or why it failed.

    ``outside`` is where the entry really leads when a symlink takes it out of the folder.
    """

    paths: list[Path] = field(default_factory=list)
    error: str | None = None
    outside: str | None = None


class Containment:
    """Does a path, symlinks resolved, stay inside ``folder``? Real paths of folders are
    found one ``lstat`` each (the parent's real path is known) and remembered, so checking
    100,000 files in 10,000 folders costs 10,000 ``lstat`` more than not checking."""

    def __init__(self, folder: Path) -> None:
        self.folder = os.path.normpath(os.path.abspath(folder))
        self.root = os.path.realpath(self.folder)
        self._below = self.folder.rstrip(os.sep) + os.sep
        self._prefix = self.root.rstrip(os.sep) + os.sep
        self._real: dict[str, str] = {self.folder: self.root}
        self._inside: dict[str, bool] = {}

    def inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self._prefix)

    def real_dir(self, text: str) -> str:
        """``os.path.realpath(text)`` for a normalised absolute folder path, remembered."""
        real = self._real.get(text)
        if real is not None:
            return real
        head, _, name = text.rpartition(os.sep)
        if not text.startswith(self._below) or not name:
            real = os.path.realpath(text)
        else:
            try:
                link = stat.S_ISLNK(os.lstat(text).st_mode)
            except OSError:
                link = False  # missing: nothing to follow, its place is its name
            if link:
                real = os.path.realpath(text)
            else:
                real = self.real_dir(head).rstrip(os.sep) + os.sep + name
        self._real[text] = real
        return real

    def known_inside(self, folder: str) -> None:
        """``folder`` was found (by ``leaves``) to really be inside: remember it."""
        self._inside[folder] = True

    def leaves(self, text: str, is_link: bool) -> str | None:
        """Where ``text`` (normalised, absolute) really is when that is outside the folder;
        None when it stays inside. ``is_link``: ``text`` itself is a symlink (lstat)."""
        if text == self.folder:
            return None
        if is_link:
            real = os.path.realpath(text)
            return None if self.inside(real) else real
        head, _, name = text.rpartition(os.sep)
        parent_inside = self._inside.get(head)
        if parent_inside is None:
            parent_inside = self._inside[head] = self.inside(self.real_dir(head or os.sep))
        if parent_inside:
            return None
        return self.real_dir(head).rstrip(os.sep) + os.sep + name


def containment(folder: Path) -> Containment | None:
    """The check for this command: None under ``--allow-outside-links``."""
    return None if ALLOW_OUTSIDE_LINKS.get() else Containment(folder)


def glob_base(folder: Path, spec: str) -> str:
    """The folder a glob starts from: its leading components without wildcards."""
    head = os.path.dirname(os.path.normpath(os.path.join(folder, os.path.expanduser(spec))))
    while glob.has_magic(head):
        head = os.path.dirname(head)
    return head


def is_glob(spec: str) -> bool:
    return glob.has_magic(spec)


def is_supported(path: str | Path) -> bool:
    return str(path).lower().endswith(SUPPORTED_SUFFIXES)


def absolute(folder: Path, spec: str) -> Path:
    """Join lexically (no symlink resolution): the path we show and upload is the one written."""
    return _path(os.path.normpath(os.path.join(folder, os.path.expanduser(spec))))


def _path(text: str) -> Path:
    """``Path(text)`` for a normalised path, without re-parsing the folder part every time.

    Manifests name thousands of files in a few folders; parsing each full path costs more
    than the ``stat`` that follows (pathlib parses every component), so the folder's Path
    is cached and the file name appended as an already-parsed part.
    """
    head, tail = os.path.split(text)
    if not head or not tail or tail in (".", ".."):
        return Path(text)
    return _child(_folder_path(head), tail)


@functools.lru_cache(maxsize=4096)
def _folder_path(text: str) -> Path:
    return Path(text)


def _child(folder: Path, name: str) -> Path:
    """``folder / name`` for a name without separators: ``joinpath`` of one part is the
    quickest public way (2x ``/``; pathlib's private child constructor is not used)."""
    return folder.joinpath(name)


def list_folder(path: Path) -> Resolved:
    """Images directly inside ``path``, sorted by name; hidden files and other types skipped."""
    try:
        with os.scandir(path) as entries:
            names = sorted(
                e.name for e in entries if not e.name.startswith(".") and is_supported(e.name)
            )
    except OSError as exc:
        return Resolved(error=describe_os_error(exc))
    if not names:
        return Resolved(error=f"no images in folder (looked for {SUPPORTED_TEXT})")
    # A name from scandir has no separator: one joinpath each (at 100,000 files it counts).
    return Resolved(paths=[_child(path, name) for name in names])


def resolve(
    folder: Path,
    spec: str,
    *,
    path: Path | None = None,
    stats: dict[str, os.stat_result] | None = None,
    contain: Containment | None = None,
) -> Resolved:
    """One ``images`` entry: a glob, a folder or a single file, relative to ``folder``.

    ``path`` is ``absolute(folder, spec)`` when the caller has it already. A single file's
    ``stat`` (taken to see whether it is a folder) goes into ``stats``, for
    ``find_problems`` to reuse. With ``contain``, an entry that a symlink takes out of the
    folder is refused before anything is listed or read there (``Resolved.outside``); the
    files a folder or glob yields are checked by ``find_problems``.
    """
    if is_glob(spec):
        return _resolve_glob(folder, spec, contain)
    if path is None:
        path = absolute(folder, spec)
    try:
        st: os.stat_result | None = os.stat(path) if contain is None else os.lstat(path)
    except (OSError, ValueError):  # as os.path.isdir: anything unreadable is "not a folder"
        st = None
    if contain is not None:
        link = st is not None and stat.S_ISLNK(st.st_mode)
        leads = contain.leaves(str(path), link)
        if leads is not None:
            return Resolved(error=LEAVES, outside=leads)
        if link:
            try:
                st = os.stat(path)
            except (OSError, ValueError):
                st = None
        if st is not None and stat.S_ISDIR(st.st_mode):
            contain.known_inside(str(path))  # its files need no lstat of it again
    if st is not None and stat.S_ISDIR(st.st_mode):
        return list_folder(path)
    if st is not None and stats is not None:
        stats[str(path)] = st
    if not is_supported(path) and os.path.lexists(path):
        return Resolved(error=f"unsupported file type (use {SUPPORTED_TEXT})")
    return Resolved(paths=[path])


def _resolve_glob(folder: Path, spec: str, contain: Containment | None) -> Resolved:
    """A glob entry: its matches in sorted order, images only, folders skipped."""
    if contain is not None:
        base = glob_base(folder, spec)
        leads = contain.leaves(base, os.path.islink(base))
        if leads is not None:
            return Resolved(error=LEAVES, outside=leads)
    pattern = os.path.join(folder, os.path.expanduser(spec))
    listed = _glob_in_one_folder(pattern)
    if listed is not None:
        matches, folders = listed
    else:
        try:
            matches = list(islice(glob.iglob(pattern, recursive=True), MAX_GLOB_MATCHES + 1))
        except (OSError, RecursionError) as exc:
            return Resolved(error=f"cannot expand glob: {exc}")
        folders = None
    if len(matches) > MAX_GLOB_MATCHES:
        return Resolved(error=f"glob matches more than {MAX_GLOB_MATCHES} files")
    images = sorted(
        os.path.normpath(m)
        for m in matches
        if is_supported(m) and not (m in folders if folders is not None else os.path.isdir(m))
    )
    if not images:
        return Resolved(error=f"no images match (looked for {SUPPORTED_TEXT})")
    return Resolved(paths=[_path(m) for m in images])


def _glob_in_one_folder(pattern: str) -> tuple[list[str], set[str]] | None:
    """``glob.glob(pattern)`` and which matches are folders, when only the last component
    has wildcards (``data/sneaker/*.jpg``, the usual case); None for other patterns.

    Same rules as glob (hidden names only for a pattern starting with ``.``, fnmatch on
    names, an unreadable folder matches nothing), but one ``scandir`` also says which
    matches are folders, where glob + ``os.path.isdir`` stat every match again.
    """
    folder, name_pattern = os.path.split(pattern)
    if not folder or not name_pattern or glob.has_magic(folder) or name_pattern == "**":
        return None
    names: dict[str, bool] = {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    names[entry.name] = entry.is_dir()
                except OSError:
                    names[entry.name] = False
    except OSError:
        return [], set()
    if not name_pattern.startswith("."):
        names = {n: d for n, d in names.items() if not n.startswith(".")}
    matches = fnmatch.filter(names, name_pattern)
    joined = [os.path.join(folder, n) for n in matches]
    return joined, {j for j, n in zip(joined, matches, strict=True) if names[n]}


def describe_os_error(exc: OSError) -> str:
    """Short, stable words for the errors users meet (no errno numbers, no paths)."""
    if exc.errno == errno.ENOENT:
        return "file not found"
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if exc.errno == errno.ENOTDIR:
        return "a parent of this path is not a folder"
    return (exc.strerror or str(exc)).lower()
