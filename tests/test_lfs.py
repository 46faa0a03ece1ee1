"""Git LFS pointer files where images should be (a checkout without LFS): validate says so."""

from __future__ import annotations

import io
from pathlib import Path

from support.cli import run_runner
from support.images import make_image

from runner.manifest import lfs

# What `git lfs` commits in place of an image (git-lfs docs/spec.md): three lines, < 1024 bytes.
POINTER = (
    "version https://git-lfs.github.com/spec/v1\n"
    "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
    "size 48213\n"
)


def test_validate_names_an_lfs_pointer_at_file_line_col(tmp_path: Path) -> None:
    """`runner validate` (a subprocess) on a manifest whose folder holds one real image and one
    LFS pointer: exit 1, the pointer named at file:line:col with the fix; the real image and a
    plain text file keep their own messages."""
    make_image(tmp_path / "images" / "a.png")
    (tmp_path / "images" / "b.png").write_text(POINTER, encoding="utf-8")
    (tmp_path / "notes.jpg").write_text("just text\n", encoding="utf-8")
    (tmp_path / "m.yaml").write_text(
        "version: 1\njobs:\n  - name: a\n    images: images\n  - name: b\n    images: notes.jpg\n",
        encoding="utf-8",
    )
    result = run_runner("validate", "m.yaml", cwd=tmp_path)
    assert result.code == 1, result.stdout + result.stderr
    assert (
        "m.yaml:4:13: jobs[0].images: a Git LFS pointer, not an image: fetch LFS files "
        "(`git lfs pull`, or `lfs: true` on actions/checkout): images/b.png"
    ) in result.stdout, result.stdout
    assert "m.yaml:6:13: jobs[1].images: not a JPEG, PNG or WebP image: notes.jpg" in result.stdout
    assert "a.png" not in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


def test_pointer_detection_needs_the_version_line_and_a_small_file() -> None:
    """The spec's first line (also with CRLF, and the old hawser URL) is a pointer; the same
    words later in a file, another URL, or a file of 1024 bytes or more are not."""
    def problem(data: bytes) -> str | None:
        return lfs.pointer_problem(io.BytesIO(data), len(data))

    assert problem(POINTER.encode()) == lfs.POINTER_PROBLEM
    assert problem(POINTER.replace("\n", "\r\n").encode()) == lfs.POINTER_PROBLEM
    assert problem(POINTER.replace("git-lfs", "hawser").encode()) == lfs.POINTER_PROBLEM
    assert problem(b"hello\n" + POINTER.encode()) is None
    assert problem(POINTER.replace("spec/v1", "spec/v2").encode()) is None
    assert problem(POINTER.encode() + b"x" * 1024) is None
