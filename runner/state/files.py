"""Where the state files are, and how refusing one is worded.

Layout: ``dir/name.lock.yaml`` (the reviewed, committed state), ``dir/name.lock.journal``
(write-ahead JSON lines, present only while an apply runs or after a crash) and
``dir/.runner/name.lock.yaml.lock`` (the exclusive lock held for a whole apply). Each is
opened without following symlinks (``runner.atomic``); a refusal names the file and says
that nothing was read or written.
"""

from __future__ import annotations

from pathlib import Path

from runner.diagnostics import Diagnostic
from runner.errors import InputError


def journal_path(lockfile: Path) -> Path:
    name = lockfile.name
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    return lockfile.with_name(stem + ".journal")


def lock_path(lockfile: Path) -> Path:
    return lockfile.parent / ".runner" / (lockfile.name + ".lock")


def invalid(lockfile: Path, message: str, path: str = "", line: int = 0) -> InputError:
    return InputError(
        [Diagnostic(str(lockfile), line, 0, path, message + " (the lockfile was left untouched)")]
    )


def unsafe(path: Path, exc: OSError, what: str, fix: str = "remove it") -> InputError:
    """A state file that is a symlink (or not a regular file): refused, never followed."""
    return InputError(
        [Diagnostic(str(path), 0, 0, "", f"{what} {exc.strerror}: refused, since runner never "
                    f"reads or writes its own state through a symlink (nothing was); {fix} and "
                    "run again")]
    )
