"""An apply's exclusive, journaled hold on one lockfile.

``LockSession`` takes the lock (``_OsLock``), reads the lockfile with its journal replayed,
journals each change before returning (``record``), rewrites the lockfile from memory
every few seconds and at the end (``flush``), then empties and removes the journal.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from runner.atomic import UnsafeStateFile, atomic_write_text, fsync_dir, open_state, open_state_dir
from runner.errors import InputError, LockHeldError, RunnerError
from runner.models import LockEntry
from runner.state.files import journal_path, lock_path, unsafe
from runner.state.journal import record_line
from runner.state.lockfile import LockState, cache_key, read_lockfile, remember_document


class LockfileWriteError(RunnerError):
    """The journal or the lockfile could not be written; the previous lockfile is intact."""


class LockSession:
    """Exclusive, journaled access to one lockfile for the length of an apply."""

    def __init__(self, lockfile: Path) -> None:
        self.lockfile = lockfile
        self.journal = journal_path(lockfile)
        self._flock: _OsLock | None = None
        self._journal_fd: int | None = None
        self.state = LockState()
        # The jobs as the lockfile on disk holds them (None: unknown, so write on flush).
        self._written_jobs: dict[str, Any] | None = {}
        self.dirty = False

    def __enter__(self) -> LockSession:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def acquire(self) -> None:
        lp = lock_path(self.lockfile)
        self._flock = _OsLock.take(self.lockfile, lp)
        try:
            self.state = read_lockfile(self.lockfile)
            if os.path.lexists(self.journal):
                # Fold a crashed run's journal into the lockfile before anything else happens
                # (the state read above already has it replayed, so the file is behind).
                self._written_jobs = None
                self.dirty = True
                self.flush()
            else:
                self._written_jobs = self._jobs_document()
        except BaseException:
            self._flock.release()
            raise

    def record(self, name: str, entry: LockEntry | None) -> None:
        """Apply one change in memory, then journal it durably before returning.

        Memory first: if an interrupt lands between the two, the final flush still writes
        the change. The caller sends the request that depends on it only after we return.
        Raises ``LockfileWriteError`` when the journal cannot be written (disk full, ...).
        """
        if entry is None:
            self.state.entries.pop(name, None)
        else:
            self.state.entries[name] = entry
        self.dirty = True
        try:
            self._append(record_line(name, entry))
        except OSError as exc:
            raise LockfileWriteError(
                f"{self.journal}: cannot write the journal: {exc.strerror or exc}"
            ) from exc

    def amend(self, entries: dict[str, LockEntry]) -> None:
        """Changes that can be derived again (such as an inferred ``api``): made in memory and
        written by the next flush, not journaled, since a crash loses nothing that matters."""
        if entries:
            self.state.entries.update(entries)
            self.dirty = True

    def _append(self, data: bytes) -> None:
        if self._journal_fd is None:
            created = not os.path.lexists(self.journal)
            # Never through a symlink (one planted since the read would be refused here).
            self._journal_fd = open_state(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if created:
                fsync_dir(self.journal.parent)
        os.write(self._journal_fd, data)
        os.fsync(self._journal_fd)

    def flush(self) -> bool:
        """Rewrite the lockfile if its content changed, then empty the journal.

        Returns whether the file was written. The serial moves only when content changes,
        so a no-op apply leaves the file byte-identical.
        """
        if not self.dirty:
            return False
        jobs = self._jobs_document()
        # Same content as on disk: nothing to write, and the serial stays.
        changed = jobs != self._written_jobs
        if changed:
            candidate = LockState(self.state.entries, self.state.serial + 1)
            text = candidate.render()
            try:
                atomic_write_text(self.lockfile, text)
            except OSError as exc:
                raise LockfileWriteError(
                    f"{self.lockfile}: cannot write the lockfile: {exc.strerror or exc}. The "
                    f"previous lockfile is intact and {self.journal.name} keeps every change; "
                    "the next runner command replays it"
                ) from exc
            self.state.serial += 1
            self._written_jobs = jobs
            # The next plan finds these bytes already parsed and validated.
            remember_document(self.lockfile, cache_key(text.encode("utf-8")), candidate.to_document())
        try:
            self._truncate_journal()
        except OSError as exc:
            raise LockfileWriteError(f"{self.journal}: cannot empty the journal: {exc.strerror or exc}") from exc
        self.dirty = False
        return changed

    def _jobs_document(self) -> dict[str, Any]:
        return {name: entry.to_dict() for name, entry in self.state.entries.items()}

    def _truncate_journal(self) -> None:
        if self._journal_fd is not None:
            os.ftruncate(self._journal_fd, 0)
            os.fsync(self._journal_fd)
        elif os.path.lexists(self.journal):
            fd = open_state(self.journal, os.O_WRONLY)
            try:
                os.ftruncate(fd, 0)
                os.fsync(fd)
            finally:
                os.close(fd)

    def close(self) -> None:
        """Final write; the journal is removed only once the lockfile holds everything."""
        try:
            self.flush()
            if self._journal_fd is not None:
                os.close(self._journal_fd)
                self._journal_fd = None
            with contextlib.suppress(FileNotFoundError):
                self.journal.unlink()
            fsync_dir(self.lockfile.parent)
        finally:
            if self._journal_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._journal_fd)
                self._journal_fd = None
            if self._flock is not None:
                self._flock.release()
                self._flock = None



class _OsLock:
    """The apply's exclusive lock: ``flock`` on ``.runner/NAME.lock`` (what filelock used,
    so older runners still exclude us), with the folder and the file opened without
    following symlinks: a committed ``.runner -> /elsewhere`` or a lock file linked to
    another file is refused, where filelock's ``O_TRUNC`` open emptied the target."""

    def __init__(self, fd: int | None, fallback: Any = None) -> None:
        self.fd = fd
        self._fallback = fallback

    @classmethod
    def take(cls, lockfile: Path, lp: Path) -> _OsLock:
        try:
            folder = open_state_dir(lp.parent, create=True)
        except UnsafeStateFile as exc:
            raise unsafe(lp.parent, exc, "the folder") from None
        except OSError as exc:
            raise InputError(f"{lockfile}: cannot create {lp.parent}: {exc.strerror or exc}") from exc
        try:
            fd = open_state(lp, os.O_RDWR | os.O_CREAT, 0o644, dir_fd=folder)
        except UnsafeStateFile as exc:
            raise unsafe(lp, exc, "the lock") from None
        except OSError as exc:
            raise InputError(f"{lockfile}: cannot create the lock {lp}: {exc.strerror or exc}") from exc
        finally:
            os.close(folder)
        try:
            import fcntl
        except ImportError:  # Windows: filelock's msvcrt lock on the same path
            os.close(fd)
            return cls._take_filelock(lockfile, lp)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeldError(
                f"{lockfile}: another runner apply holds the lock ({lp}); "
                "wait for it to finish (only one apply may write a lockfile at a time)"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise InputError(f"{lockfile}: cannot lock {lp}: {exc.strerror or exc}") from exc
        return cls(fd)

    @classmethod
    def _take_filelock(cls, lockfile: Path, lp: Path) -> _OsLock:
        from filelock import FileLock, Timeout

        lock = FileLock(str(lp), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise LockHeldError(
                f"{lockfile}: another runner apply holds the lock ({lp}); "
                "wait for it to finish (only one apply may write a lockfile at a time)"
            ) from None
        except OSError as exc:
            raise InputError(f"{lockfile}: cannot create the lock {lp}: {exc.strerror or exc}") from exc
        return cls(None, lock)

    def release(self) -> None:
        if self._fallback is not None:
            self._fallback.release()
            self._fallback = None
        if self.fd is not None:
            fd, self.fd = self.fd, None
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor releases the flock
