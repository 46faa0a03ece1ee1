"""Disk full and a read-only lockfile folder: exit 1, a clear message, the old lockfile intact.

Real filesystems where the machine allows it (a tiny tmpfs; a tmpfs remounted read-only; both
need root, which CI has here), and an in-process fake of the failing write that always runs.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from support.apply import SECRET, ledger, runner, sandbox
from support.manifests import lock_doc, write_manifest

from runner.api.client import ApiClient
from runner.api.ratelimit import TokenBucket
from runner.engine.pipeline import prepare
from runner.engine.scheduler import Applier, ApplyOptions
from runner.state.lockfile import read_lockfile
from runner.state.session import LockSession


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); "
                    "test_journal_write_failure_in_process covers the same path")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(folder: Path) -> None:
    """Write until the filesystem says ENOSPC."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_disk_full_mid_apply_keeps_the_previous_lockfile(tmp_path: Path) -> None:
    """A full disk when the journal must grow: exit 1, message names the file, old lockfile kept."""
    with sandbox(tmp_path / "sb") as url, tmpfs(tmp_path / "small", "256k") as small:
        write_manifest(tmp_path, n_jobs=2, url=url, filename="m.yaml")
        lock = small / "m.lock.yaml"
        assert runner("apply", "m.yaml", "--lockfile", str(lock), cwd=tmp_path).code == 0
        before = lock.read_bytes()
        write_manifest(tmp_path, n_jobs=4, url=url, filename="m.yaml")  # two more jobs to submit
        fill(small)
        result = runner("apply", "m.yaml", "--lockfile", str(lock), cwd=tmp_path)
        assert result.code == 1, result.stderr
        assert "No space left on device" in result.stderr
        assert "Traceback" not in result.stderr
        assert lock.read_bytes() == before
        # First run: a probe and 2 jobs; this run: its probe only, no unrecorded POST.
        assert ledger(url)["posts"] == 3 + 1
        (small / "filler").unlink()
        again = runner("apply", "m.yaml", "--lockfile", str(lock), cwd=tmp_path)
        assert again.code == 0, again.stderr
        assert len(lock_doc(lock)["jobs"]) == 4
        assert ledger(url)["credits_charged"] == 4


def test_read_only_lockfile_folder_is_refused(tmp_path: Path) -> None:
    """A read-only lockfile folder: exit 1 before anything is sent; the lockfile is untouched."""
    with sandbox(tmp_path / "sb") as url, tmpfs(tmp_path / "ro", "1m") as ro:
        write_manifest(tmp_path, n_jobs=1, url=url, filename="m.yaml")
        lock = ro / "m.lock.yaml"
        assert runner("apply", "m.yaml", "--lockfile", str(lock), cwd=tmp_path).code == 0
        write_manifest(tmp_path, n_jobs=2, url=url, filename="m.yaml")
        before = lock.read_bytes()
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
        posts = ledger(url)["posts"]
        result = runner("apply", "m.yaml", "--lockfile", str(lock), cwd=tmp_path)
        assert result.code == 1
        assert "Read-only file system" in result.stderr and "Traceback" not in result.stderr
        assert lock.read_bytes() == before
        assert ledger(url)["posts"] == posts
        assert runner("plan", "m.yaml", "--lockfile", str(lock), cwd=tmp_path).code == 0


def test_journal_write_failure_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the journal's writes failing (ENOSPC), apply stops with exit 1 and sends no POST."""
    with sandbox(tmp_path / "sb") as url:
        manifest = write_manifest(tmp_path, n_jobs=3, url=url, filename="m.yaml")
        first = prepare(str(manifest), None, [])
        real_write = os.write

        def failing_write(fd: int, data: bytes) -> int:
            if b'"job"' in data:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(fd, data)

        monkeypatch.setattr("runner.state.session.os.write", failing_write)
        session = LockSession(first.lockfile)
        session.acquire()
        prepared = prepare(str(manifest), None, [], state=session.state)

        async def main() -> int:
            async with ApiClient(url, SECRET, TokenBucket(None)) as client:
                result = await Applier(prepared.plan, session, client, prepared.manifest.api,
                                       ApplyOptions()).run()
                return result.exit_code

        assert anyio.run(main) == 1
        posts = ledger(url)["posts"]
        assert posts == 1  # only the free idempotency probe
        monkeypatch.undo()
        session.close()
    assert read_lockfile(first.lockfile).entries == {} or all(
        e.status == "submitting" for e in read_lockfile(first.lockfile).entries.values()
    )
