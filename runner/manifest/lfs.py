"""Git LFS pointer files: what a checkout without LFS leaves where an image should be.

A repository that keeps its images in Git LFS holds small text files in their place until
the LFS objects are fetched (``git lfs pull``; ``lfs: true`` on GitHub's actions/checkout).
To an image decoder such a file is just "not an image", which sends the user looking at
the file instead of at the checkout. This module recognises the pointer so validate can
name the cause and the fix. The format is git-lfs's specification (docs/spec.md there):
the file is under 1024 bytes and its first line is the ``version`` key with the spec URL
(``hawser`` is the pre-release name some old pointers still carry).
"""

from __future__ import annotations

from typing import IO

# Pointer files are smaller than this, by the specification.
MAX_POINTER_BYTES = 1024
_VERSION_LINES = (
    b"version https://git-lfs.github.com/spec/v1",
    b"version https://hawser.github.com/spec/v1",
)

POINTER_PROBLEM = (
    "a Git LFS pointer, not an image: fetch LFS files (`git lfs pull`, or `lfs: true` on "
    "actions/checkout)"
)


def is_pointer(head: bytes) -> bool:
    """Whether ``head`` (a file's first bytes, or all of a small file) is an LFS pointer."""
    first = head.split(b"\n", 1)[0].rstrip(b"\r")
    return first in _VERSION_LINES


def pointer_problem(fh: IO[bytes], size: int) -> str | None:
    """The validate message for an open file that is an LFS pointer; None otherwise.

    Reads at most the first line's worth of bytes from the start; the position is left
    wherever the read ends (callers have already given up decoding the file).
    """
    if size >= MAX_POINTER_BYTES:
        return None
    try:
        fh.seek(0)
        head = fh.read(64)
    except OSError:
        return None
    return POINTER_PROBLEM if is_pointer(head) else None
