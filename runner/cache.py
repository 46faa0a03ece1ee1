"""runner's caches: a per-user folder outside every repository, each file sealed with a key.

A cache may make a command faster but must never change its answer, and a pull request
must not be able to reach one (DESIGN section 3: the lockfile is the only state). So the
caches live in a per-user folder, never beside the manifest:

    $RUNNER_CACHE_DIR, else $XDG_CACHE_HOME/runner, else ~/.cache/runner
        key                     32 random bytes, 0600: seals every cache file
        <sha256(folder)[:32]>/  one folder per manifest folder (its absolute path hashed)
            folder              the manifest folder's path, for a human looking around
            digests.json        image digests by path, size, mtime and inode
            schema-valid.json   manifests that passed the JSON Schema
            NAME.parsed.json    the parsed, validated content of lockfile NAME

Every sealed file starts with an HMAC-SHA256 (under ``key``) of its purpose, its own path
and its content; a file that does not verify (written by anything but runner with this
key, copied from another place, damaged) is a cache miss, never an answer. The folder is
refused (caches off, one warning) when it is inside the repository holding the manifest
(a committed cache and key would verify), when it is not owned by this user, or when
others may write to it; runner then only runs slower. Deleting the folder at any time is
safe.

One versioning scheme for the three caches: each is a ``Kind`` below (its file, the purpose
its seal is bound to, the version of its content), read with ``load`` and written with
``store`` as sealed JSON ``{"version": N, "data": ...}``. A file of any other version is a
miss, so changing what a cache holds means bumping its ``version`` here, nowhere else.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import shutil
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

from runner.atomic import NOFOLLOW, atomic_write_bytes

SEAL_VERSION = b"runner-cache-1"
# Never through a symlink, never blocking on a FIFO swapped in, not inherited by children.
_READ_FLAGS = os.O_RDONLY | NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
KEY_BYTES = 32
MAX_FOLDERS = 256  # manifest folders remembered; the least recently used are forgotten
_FOLDER_NAME = re.compile(r"[0-9a-f]{32}")
_lock = threading.Lock()
_warned: set[str] = set()
_T = TypeVar("_T")


@dataclass(frozen=True)
class Kind:
    """One cache: its file in a manifest folder's cache folder (``{name}``: the lockfile's
    name), the purpose its seal binds it to, and the version of what it holds."""

    file: str
    purpose: str
    version: int


DIGESTS = Kind("digests.json", "digests", 2)  # path -> [size, mtime_ns, inode, digest(, info)]
SCHEMA_VALID = Kind("schema-valid.json", "schema-valid", 2)  # sha256 of documents that passed
PARSED_LOCKFILE = Kind("{name}.parsed.json", "lockfile", 2)  # {"key": ..., "document": ...}


def root() -> Path:
    """Where the caches live (not checked, not created)."""
    configured = os.environ.get("RUNNER_CACHE_DIR")
    if configured:
        return Path(os.path.abspath(os.path.expanduser(configured)))
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg and os.path.isabs(xdg):
        return Path(xdg) / "runner"
    return Path(os.path.expanduser("~")) / ".cache" / "runner"


def folder_for(folder: Path, *, create: bool = True) -> Path | None:
    """The cache folder of a manifest folder, or None when caches are off for it.

    ``create=False`` only says where it would be (nothing is made); reads pass it, so a
    command that writes no cache creates nothing.
    """
    base = _checked_root(str(root()), create)
    if base is None:
        return None
    absolute = os.path.abspath(folder)
    if _inside_repository(str(base), absolute):
        _warn_once(
            f"inside:{base}",
            f"caches are off: the cache folder {base} is inside the repository holding "
            f"{absolute}, where a commit could plant cache files; set RUNNER_CACHE_DIR "
            "to a folder outside it",
        )
        return None
    name = hashlib.sha256(absolute.encode("utf-8", "surrogateescape")).hexdigest()[:32]
    path = base / name
    if not create:
        return path
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        with contextlib.suppress(OSError):
            os.utime(path, follow_symlinks=False)  # recently used: kept by ``_evict``
    except OSError:
        return None
    else:
        with contextlib.suppress(OSError):
            atomic_write_bytes(path / "folder", absolute.encode("utf-8", "surrogateescape") + b"\n", fsync=False)
        _evict(base, keep=name)
    return path if _private_dir(path, follow=False) else None


def cache_file(folder: Path, name: str, *, create: bool = True) -> Path | None:
    """``folder_for(folder) / name``, or None when caches are off."""
    where = folder_for(folder, create=create)
    return None if where is None else where / name


def read_sealed(path: Path | None, purpose: str) -> bytes | None:
    """The content sealed at ``path`` for ``purpose``, or None (missing, foreign, damaged)."""
    if path is None:
        return None
    key = _key(create=False)
    if key is None:
        return None
    # The seal's line, then the payload, read without a copy.
    got = _read_own(path, lambda fh: (fh.readline(256), fh.read()))
    if got is None or not got[0].endswith(b"\n"):
        return None
    head, payload = got
    expected = SEAL_VERSION + b" " + _mac(key, path, purpose, payload).encode() + b"\n"
    return payload if hmac.compare_digest(head, expected) else None


def _read_own(path: Path, read: Callable[[BinaryIO], _T], *, private: bool = False) -> _T | None:
    """``read`` of a regular file this user owns, opened without following a symlink or
    blocking on a FIFO; None when it is anything else or cannot be read. ``private``: also
    None when others may read or write it."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (hasattr(os, "geteuid") and st.st_uid != os.geteuid()):
            return None
        if private and st.st_mode & 0o077:
            return None
        with os.fdopen(fd, "rb", closefd=False) as fh:
            return read(fh)
    except OSError:
        return None
    finally:
        os.close(fd)


def write_sealed(path: Path | None, purpose: str, payload: bytes) -> bool:
    """Seal and write atomically; False when caches are off or the write failed (best effort)."""
    if path is None:
        return False
    key = _key(create=True)
    if key is None:
        return False
    head = SEAL_VERSION + b" " + _mac(key, path, purpose, payload).encode() + b"\n"
    try:
        atomic_write_bytes(path, head + payload, fsync=False)
    except OSError:
        return False
    return True


def load(kind: Kind, path: Path | None) -> Any:
    """What ``store`` wrote at ``path`` for ``kind``, or None (missing, foreign, damaged, or
    another version): a cache miss, never an error."""
    payload = read_sealed(path, kind.purpose)
    if payload is None:
        return None
    try:
        stored = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    if isinstance(stored, dict) and stored.get("version") == kind.version:
        return stored.get("data")
    return None


def store(kind: Kind, path: Path | None, data: Any, *, exact: bool = False) -> bool:
    """Seal ``data`` (plain JSON) at ``path`` for ``kind``; False when not written (best effort).

    ``exact``: not written unless ``load`` would give back data equal to ``data`` (JSON
    turns non-string keys into strings, for one).
    """
    try:
        text = json.dumps({"version": kind.version, "data": data}, separators=(",", ":"), ensure_ascii=False)
        if exact and json.loads(text)["data"] != data:
            return False
    except (TypeError, ValueError, RecursionError):
        return False
    return write_sealed(path, kind.purpose, text.encode("utf-8"))


def _mac(key: bytes, path: Path, purpose: str, payload: bytes) -> str:
    h = hmac.new(key, digestmod=hashlib.sha256)
    h.update(purpose.encode("utf-8") + b"\0" + os.fsencode(os.path.abspath(path)) + b"\0")
    h.update(payload)
    return h.hexdigest()


# -- the folder and its key ----------------------------------------------------------------


@lru_cache(maxsize=8)
def _checked_root_cached(text: str) -> Path | None:
    path = Path(os.path.realpath(text))
    return path if _private_dir(path, follow=True, warn=True) else None


def _checked_root(text: str, create: bool) -> Path | None:
    """The cache root, resolved and checked (created 0700 when ``create``); None: caches off."""
    if not os.path.isdir(text):
        if not create:
            return None
        try:
            os.makedirs(text, mode=0o700, exist_ok=True)
        except OSError as exc:
            _warn_once(f"create:{text}", f"caches are off: cannot create {text}: {exc.strerror or exc}")
            return None
        _checked_root_cached.cache_clear()
    return _checked_root_cached(text)


def _private_dir(path: Path, *, follow: bool, warn: bool = False) -> bool:
    """A folder (a symlink only when ``follow``) owned by this user that others cannot write."""
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError:
        return False
    problem = None
    if not stat.S_ISDIR(st.st_mode):
        problem = "is not a folder"
    elif hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        problem = "belongs to another user"
    elif st.st_mode & 0o022:
        problem = "can be written by other users (chmod 700 it)"
    if problem and warn:
        _warn_once(f"dir:{path}", f"caches are off: the cache folder {path} {problem}")
    return problem is None


def _key_path(create: bool) -> Path | None:
    base = _checked_root(str(root()), create=create)
    return None if base is None else base / "key"


_keys: dict[str, bytes] = {}


def _key(*, create: bool) -> bytes | None:
    """This user's sealing key, made on first write; None when there is none to trust."""
    path = _key_path(create)
    if path is None:
        return None
    text = str(path)
    with _lock:
        if text in _keys:
            return _keys[text]
        key = _read_key(path)
        if key is None and create:
            key = _new_key(path)
        if key is not None:
            _keys[text] = key
        return key


def _read_key(path: Path) -> bytes | None:
    # Anything but a key this user made (0600, KEY_BYTES long) is replaced on the next write.
    key = _read_own(path, lambda fh: fh.read(KEY_BYTES + 1), private=True)
    return key if key is not None and len(key) == KEY_BYTES else None


def _new_key(path: Path) -> bytes | None:
    """Write a fresh key (0600) atomically; a concurrent runner's key, if it won, is used."""
    try:
        atomic_write_bytes(path, os.urandom(KEY_BYTES), replace=False)
    except FileExistsError:
        # Another process made one first (or a bad one is there: replace it, which
        # only invalidates this user's caches).
        key = _read_key(path)
        if key is not None:
            return key
        try:
            atomic_write_bytes(path, os.urandom(KEY_BYTES))
        except OSError:
            return None
    except OSError:
        return None
    return _read_key(path)


@lru_cache(maxsize=256)
def _inside_repository(cache: str, folder: str) -> bool:
    """Is the cache folder inside ``folder``, or inside the git work tree holding it?"""
    real = os.path.realpath(folder)
    top = real
    probe = real
    while True:
        if os.path.lexists(os.path.join(probe, ".git")):
            top = probe
            break
        parent = os.path.dirname(probe)
        if parent == probe:
            break
        probe = parent
    return any(cache == t or cache.startswith(t.rstrip(os.sep) + os.sep) for t in {real, top})


def _evict(base: Path, keep: str) -> None:
    """Forget the least recently used manifest folders beyond ``MAX_FOLDERS``."""
    try:
        with os.scandir(base) as entries:
            folders = []
            for entry in entries:
                if _FOLDER_NAME.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False):
                    folders.append((entry.stat(follow_symlinks=False).st_mtime_ns, entry.name))
    except OSError:
        return
    if len(folders) <= MAX_FOLDERS:
        return
    folders.sort()
    for _mtime, name in folders[: len(folders) - MAX_FOLDERS]:
        if name != keep:
            shutil.rmtree(base / name, ignore_errors=True)


def _warn_once(key: str, message: str) -> None:
    if key in _warned:
        return
    _warned.add(key)
    from runner import logsetup

    logsetup.get_logger("runner.cache").warning("cache_off", message=message)


def reset() -> None:
    """Forget what this process learnt (the environment may point elsewhere now; tests)."""
    with _lock:
        _keys.clear()
    _warned.clear()
    _checked_root_cached.cache_clear()
    _inside_repository.cache_clear()


__all__ = [
    "DIGESTS",
    "PARSED_LOCKFILE",
    "SCHEMA_VALID",
    "Kind",
    "cache_file",
    "folder_for",
    "load",
    "read_sealed",
    "reset",
    "root",
    "store",
    "write_sealed",
]
