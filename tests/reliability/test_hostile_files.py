"""Hostile image files: each is a clear error naming the file, exit 1, never a traceback or a hang.

The loader-level checks of each kind of damage are in ``tests/test_checks.py``; here every
case goes through the command line (``validate``, ``plan``, ``apply``) as a user meets it,
with the manifest written by hand so each message's line and column are known. A file that
vanishes between validation and its upload is driven through a real apply against the
sandbox.
"""

from __future__ import annotations

import contextlib
import io
import os
import time
from pathlib import Path

import anyio
import pytest
from support.apply import SECRET, ledger, sandbox
from support.apply import runner as run_cli
from support.cli import error_text
from support.images import make_bomb_png, make_image, truncate

from runner.cli import main

HANG_GUARD = 10.0  # seconds: a generous bound, only to turn a hang into a failure


def validate(folder: Path, *args: str) -> tuple[int, str]:
    """``runner validate m.yaml`` in-process, from ``folder``; (exit code, stdout + stderr)."""
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--log-format", "json", *args] if args else ["validate", "m.yaml"])
    finally:
        os.chdir(cwd)
    text = out.getvalue() + (error_text(err.getvalue()) if args else err.getvalue())
    assert "Traceback" not in text and "internal error" not in text, text
    return code, text


def manifest(folder: Path, jobs: str) -> Path:
    """``m.yaml`` with a fixed 3-line head, so the first job's ``name`` is on line 4."""
    path = folder / "m.yaml"
    path.write_text("version: 1\napi: {endpoint: sandbox}\njobs:\n" + jobs, encoding="utf-8")
    return path


def test_decompression_bomb_png(tmp_path: Path) -> None:
    """A PNG claiming 40,000x40,000 pixels and one just over the 89.5 MP limit are both refused."""
    make_bomb_png(tmp_path / "bomb.png")
    make_bomb_png(tmp_path / "big.png", width=10_000, height=9_000)
    manifest(tmp_path, "  - name: a\n    images: [bomb.png, big.png]\n")
    started = time.monotonic()
    code, out = validate(tmp_path)
    assert time.monotonic() - started < HANG_GUARD
    assert code == 1
    assert "m.yaml:5:14: jobs[0].images[0]: " in out and "decompression bomb): bomb.png" in out
    assert "m.yaml:5:24: jobs[0].images[1]: image is 10000x9000 pixels" in out and ": big.png" in out


def test_truncated_jpeg(tmp_path: Path) -> None:
    """A JPEG cut in half is 'truncated image', at validate and at plan (which decodes on cache misses)."""
    truncate(make_image(tmp_path / "imgs" / "cut.jpg", size=(64, 64), fmt="JPEG"))
    make_image(tmp_path / "imgs" / "whole.jpg", fmt="JPEG")
    manifest(tmp_path, "  - name: a\n    images: imgs\n")
    code, out = validate(tmp_path)
    assert code == 1
    assert "m.yaml:5:13: jobs[0].images: truncated image: imgs/cut.jpg" in out
    code, out = validate(tmp_path, "plan", "m.yaml")
    assert code == 1
    assert "m.yaml:5:13: jobs[0].images: truncated image: imgs/cut.jpg" in out


def test_symlink_loop(tmp_path: Path) -> None:
    """Two symlinks pointing at each other: 'symlink loop', named as written."""
    os.symlink("b.png", tmp_path / "a.png")
    os.symlink("a.png", tmp_path / "b.png")
    manifest(tmp_path, "  - name: a\n    images: [a.png]\n")
    code, out = validate(tmp_path)
    assert code == 1
    assert "m.yaml:5:14: jobs[0].images[0]: symlink loop: a.png" in out


@pytest.mark.parametrize(
    ("jobs", "expected"),
    [
        ("images: [../outside/secret.png]", "5:14: jobs[0].images[0]: {}: ../outside/secret.png"),
        ("images: ../outside/secret.png", "5:13: jobs[0].images: {}: ../outside/secret.png"),
        ("images: sub/../../outside/secret.png", "5:13: jobs[0].images: {}: sub/../../outside/secret.png"),
        ("images: ../outside/*.png", "5:13: jobs[0].images: {}: ../outside/*.png"),
        ("images: '*/../../outside/*.png'", "5:13: jobs[0].images: {}: */../../outside/*.png"),
        ("images: ..", "5:13: jobs[0].images: {}: .."),
        ("images: [ABS]", "5:14: jobs[0].images[0]: {}: ABS"),
        ("images: ~/secret.png", "5:13: jobs[0].images: {}: ~/secret.png"),
        (
            "option: FluxKontextFinetune\n    prompt: p\n    pairs: [{start: ../outside/secret.png, end: ok/x.png}]",
            "7:21: jobs[0].pairs[0].start: {}: ../outside/secret.png",
        ),
        (
            "option: FluxKontextFinetune\n    prompt: p\n    pairs: {start_dir: ok, end_dir: ../outside}",
            "7:37: jobs[0].pairs.end_dir: {}: ../outside",
        ),
    ],
    ids=["list", "string", "inner-dotdot", "glob", "glob-dotdot", "parent-folder", "absolute", "home", "pair", "pair-dir"],
)
def test_path_escaping_the_manifest_folder(tmp_path: Path, jobs: str, expected: str) -> None:
    """A path that leaves the manifest's folder once ``..`` is normalised is an error at its place."""
    outside = tmp_path / "outside"
    make_image(outside / "secret.png")
    make_image(outside / "x.png")
    folder = tmp_path / "project"
    make_image(folder / "ok" / "x.png")
    (folder / "sub").mkdir()
    absolute = str(outside / "secret.png")
    manifest(folder, "  - name: a\n    " + jobs.replace("ABS", absolute) + "\n")
    code, out = validate(folder)
    assert code == 1
    assert "m.yaml:" + expected.format("path escapes the manifest's folder").replace("ABS", absolute) in out, out
    assert out.count("escapes") == 1


def test_nul_in_a_path(tmp_path: Path) -> None:
    """A NUL character in any path (found by fuzzing: os.stat raised) is an error at its place."""
    make_image(tmp_path / "e" / "x.png")
    manifest(tmp_path, '  - name: a\n    images: ["a\\0.png", "*\\0"]\n  - name: k\n    option: FluxKontextFinetune\n'
                       '    prompt: p\n    pairs: [{start: "s\\0", end: e/x.png}]\n')
    for command in ("validate", "plan"):
        code, out = validate(tmp_path, command, "m.yaml")
        assert code == 1
        assert "m.yaml:5:14: jobs[0].images[0]: path contains a NUL character: 'a\\x00.png'" in out, out
        assert "m.yaml:5:25: jobs[0].images[1]: path contains a NUL character" in out
        assert "m.yaml:9:21: jobs[1].pairs[0].start: path contains a NUL character" in out


def test_paths_inside_allowed_and_symlinks_out_only_with_the_flag(tmp_path: Path) -> None:
    """``sub/../a.png`` stays inside; a symlink inside the folder pointing elsewhere (a shared
    mount) is refused unless ``--allow-outside-links`` (tests/security/test_symlinks.py)."""
    shared = tmp_path / "mount"
    make_image(shared / "s.png")
    folder = tmp_path / "project"
    make_image(folder / "a.png")
    (folder / "sub").mkdir()
    os.symlink(shared, folder / "datasets")
    os.symlink(shared / "s.png", folder / "link.png")
    manifest(folder, "  - name: a\n    images: [sub/../a.png, ./link.png, datasets/s.png, 'datasets/*.png']\n"
                     "  - name: b\n    images: datasets\n")
    code, out = validate(folder)
    assert code == 1
    assert "m.yaml:5:28: jobs[0].images[1]: symlink leaves the manifest's folder: ./link.png -> " in out
    assert "m.yaml:7:13: jobs[1].images: symlink leaves the manifest's folder: datasets -> " in out
    assert "jobs[0].images[0]" not in out
    code, out = validate(folder, "validate", "m.yaml", "--allow-outside-links")
    assert code == 0, out


def test_zero_byte_file(tmp_path: Path) -> None:
    """A 0-byte image is 'empty file', also when found through a folder."""
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "empty.png").write_bytes(b"")
    manifest(tmp_path, "  - name: a\n    images: imgs\n  - name: b\n    images: [imgs/empty.png]\n")
    code, out = validate(tmp_path)
    assert code == 1
    assert "m.yaml:5:13: jobs[0].images: empty file: imgs/empty.png" in out
    assert "m.yaml:7:14: jobs[1].images[0]: empty file: imgs/empty.png" in out


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_does_not_hang(tmp_path: Path) -> None:
    """A FIFO named directly, found in a folder or as a Kontext pair is refused at once, by validate and plan."""
    make_image(tmp_path / "imgs" / "a.png")
    os.mkfifo(tmp_path / "imgs" / "pipe.png")
    make_image(tmp_path / "ends" / "pipe.png")
    manifest(
        tmp_path,
        "  - name: a\n    images: imgs\n  - name: b\n    images: [imgs/pipe.png]\n"
        "  - name: k\n    option: FluxKontextFinetune\n    prompt: p\n"
        "    pairs: [{start: imgs/pipe.png, end: ends/pipe.png}]\n",
    )
    for command in ("validate", "plan"):
        started = time.monotonic()
        result = run_cli(command, "m.yaml", cwd=tmp_path, timeout=HANG_GUARD * 3)
        assert time.monotonic() - started < HANG_GUARD * 3
        assert result.code == 1
        out = result.stdout + result.stderr
        assert "Traceback" not in out
        fifo = "not a regular file (a FIFO, socket or device)"
        assert f"m.yaml:5:13: jobs[0].images: {fifo}: imgs/pipe.png" in out, out
        assert f"m.yaml:7:14: jobs[1].images[0]: {fifo}: imgs/pipe.png" in out
        assert f"m.yaml:11:21: jobs[2].pairs[0].start: {fifo}: imgs/pipe.png" in out


def test_hostile_files_stop_apply_before_anything_is_sent(tmp_path: Path) -> None:
    """apply on a manifest with a bad image exits 1 naming it, and the API sees no POST."""
    with sandbox(tmp_path / "state") as url:
        folder = tmp_path / "project"
        make_image(folder / "good" / "a.png")
        make_bomb_png(folder / "bad" / "bomb.png")
        (folder / "m.yaml").write_text(
            f"version: 1\napi: {{endpoint: '{url}'}}\njobs:\n"
            "  - name: good\n    images: good\n  - name: bad\n    images: bad\n",
            encoding="utf-8",
        )
        result = run_cli("apply", "m.yaml", cwd=folder)
        assert result.code == 1, result.stderr
        assert "m.yaml:7:13: jobs[1].images: " in result.stderr and "bad/bomb.png" in result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        assert ledger(url)["posts"] == 0
        assert not (folder / "m.lock.yaml").exists()


def test_file_vanishing_before_upload_fails_only_its_job(tmp_path: Path) -> None:
    """An image deleted after validation and planning fails its job naming the file (exit 3); others succeed."""
    from runner.api.client import ApiClient
    from runner.api.ratelimit import TokenBucket
    from runner.engine.pipeline import prepare
    from runner.engine.scheduler import Applier, ApplyOptions
    from runner.state.lockfile import read_lockfile
    from runner.state.session import LockSession

    folder = tmp_path / "project"
    for name in ("a", "b", "c"):
        for i in range(2):
            make_image(folder / name / f"{i}.png", color=(ord(name) * 7 % 256, 40 * i, 90))
    with sandbox(tmp_path / "state", train_seconds=0.1) as url:
        path = folder / "m.yaml"
        path.write_text(
            f"version: 1\napi: {{endpoint: '{url}', poll_interval: 100ms, requests_per_second: 100, burst: 20}}\n"
            "jobs:\n" + "".join(f"  - name: {n}\n    lora_prefix: P{n.upper()}\n    images: {n}\n" for n in "abc"),
            encoding="utf-8",
        )
        gone = folder / "b" / "1.png"

        async def apply() -> int:
            with LockSession(folder / "m.lock.yaml") as session:
                prepared = prepare(str(path), None, [], state=session.state)
                gone.unlink()  # validated and fingerprinted; now it disappears
                bucket = TokenBucket(100.0, 20)
                async with ApiClient(url, SECRET, bucket) as client:
                    applier = Applier(prepared.plan, session, client, prepared.manifest.api, ApplyOptions())
                    result = await applier.run()
            return result.exit_code

        started = time.monotonic()
        code = anyio.run(apply)
        assert time.monotonic() - started < 60
        assert code == 3
        entries = read_lockfile(folder / "m.lock.yaml").entries
        assert entries["a"].status == "succeeded" and entries["c"].status == "succeeded"
        assert entries["b"].status == "failed"
        assert entries["b"].error is not None and str(gone) in entries["b"].error["message"]
        assert ledger(url)["trainings"] == 2


def test_all_hostile_files_through_the_real_entry_point(tmp_path: Path) -> None:
    """Every kind at once through ``python -m runner validate``: each file named, exit 1, quickly."""
    make_bomb_png(tmp_path / "bomb.png")
    truncate(make_image(tmp_path / "cut.jpg", size=(64, 64), fmt="JPEG"))
    os.symlink("loop.png", tmp_path / "loop.png")
    (tmp_path / "empty.webp").write_bytes(b"")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.png")
    names = ["bomb.png", "cut.jpg", "loop.png", "empty.webp", "../x.png", "missing.png"]
    names += ["pipe.png"] if hasattr(os, "mkfifo") else []
    manifest(tmp_path, "".join(f"  - name: j{i}\n    images: ['{n}']\n" for i, n in enumerate(names)))
    started = time.monotonic()
    result = run_cli("validate", "m.yaml", cwd=tmp_path, timeout=HANG_GUARD * 3)
    assert time.monotonic() - started < HANG_GUARD * 3
    assert result.code == 1
    assert "Traceback" not in result.stdout + result.stderr
    for i, name in enumerate(names):
        assert f"m.yaml:{5 + 2 * i}:14: jobs[{i}].images[0]: " in result.stdout
        assert f": {name}\n" in result.stdout, name


_FIFO_SWAP = """
import os, sys
from pathlib import Path
import anyio
from support.apply import SECRET, sandbox
from support.images import make_image
from runner.engine.scheduler import Applier, ApplyOptions
from runner.api.client import ApiClient
from runner.state.session import LockSession
from runner.api.ratelimit import TokenBucket
from runner.engine.pipeline import prepare

tmp = Path(sys.argv[1])
folder = tmp / "p"
make_image(folder / "a" / "0.png")
with sandbox(tmp / "state", train_seconds=0.1) as url:
    path = folder / "m.yaml"
    path.write_text(f"version: 1\\napi: {{endpoint: '{url}', poll_interval: 100ms}}\\njobs:\\n  - name: a\\n    images: a\\n")

    async def go():
        with LockSession(folder / "m.lock.yaml") as session:
            prepared = prepare(str(path), None, [], state=session.state)
            img = folder / "a" / "0.png"
            img.unlink()
            os.mkfifo(img)
            async with ApiClient(url, SECRET, TokenBucket(100.0, 20)) as client:
                return (await Applier(prepared.plan, session, client, prepared.manifest.api, ApplyOptions()).run()).exit_code

    print("exit", anyio.run(go))
"""


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_image_swapped_for_a_fifo_before_upload_does_not_hang(tmp_path: Path) -> None:
    """An image replaced by a FIFO after validation fails its job (exit 3) instead of blocking apply forever."""
    import subprocess
    import sys

    tests = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    try:
        result = subprocess.run([sys.executable, "-c", _FIFO_SWAP, str(tmp_path)], env=env,
                                capture_output=True, text=True, timeout=10)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("apply blocked on a FIFO swapped in for an image")
    assert "exit 3" in result.stdout, result.stderr
