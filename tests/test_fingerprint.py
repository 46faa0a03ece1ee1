"""Image digests: one read serves the check and the hash, the stat cache, threads for big files."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest
from support.images import make_image

from runner.state.fingerprint import SMALL_FILE, DigestCache, digest_files, hash_file


def test_small_file_is_checked_from_the_bytes_it_is_hashed_from(tmp_path: Path) -> None:
    """A small image reaches the check as its whole content; the digest is plain sha256."""
    path = make_image(tmp_path / "a.png", (8, 8), (1, 2, 3))
    seen: list[bytes | None] = []
    digest = hash_file(path, lambda _p, content: seen.append(content))
    assert seen == [path.read_bytes()]
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()


def test_large_file_is_checked_by_path_and_hashed_whole(tmp_path: Path) -> None:
    """Past SMALL_FILE the check gets None (it reads what it needs) and every byte is hashed."""
    path = tmp_path / "big.png"
    data = os.urandom(3 * SMALL_FILE + 17)
    path.write_bytes(data)
    seen: list[bytes | None] = []
    assert hash_file(path, lambda _p, content: seen.append(content)) == hashlib.sha256(data).hexdigest()
    assert seen == [None]


def test_a_refusing_check_stops_the_hash_and_the_cache(tmp_path: Path) -> None:
    """A file the check refuses gets no digest and no cache entry."""
    path = make_image(tmp_path / "a.png", (8, 8), (1, 2, 3))

    def refuse(_path: Path, _content: bytes | None) -> None:
        raise ValueError("refused")

    cache = DigestCache(tmp_path / "digests.json")
    with pytest.raises(ValueError, match="refused"):
        digest_files([path], cache, check=refuse)
    cache.save()
    assert not (tmp_path / "digests.json").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """A file swapped for a FIFO since validation is an OSError at once, not a hang."""
    fifo = tmp_path / "a.png"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            hash_file(fifo)
        except OSError as exc:
            outcome.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "hash_file blocked on a FIFO"
    assert outcome and "not a regular file" in str(outcome[0])


def test_mixed_sizes_keep_their_order_and_hit_the_cache_next_time(tmp_path: Path) -> None:
    """Small files hash in this thread and large ones in the pool; results stay by path and
    a second pass reads nothing."""
    paths = []
    for i in range(6):
        path = tmp_path / f"{i}.png"
        path.write_bytes(os.urandom(SMALL_FILE * 2 if i % 2 else 50))
        paths.append(path)
    cache = DigestCache(tmp_path / "digests.json")
    digests = digest_files(paths, cache, threads=2)
    assert digests == {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    cache.save()
    again = DigestCache(tmp_path / "digests.json")
    assert digest_files(paths, again, threads=2) == digests
    assert (again.hits, again.misses) == (6, 0)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_the_in_memory_check_agrees_with_the_file_check(tmp_path: Path, fmt: str) -> None:
    """Whole, truncated and garbled small images get the same verdict from bytes as from disk."""
    from runner.manifest.images import check_content, check_file

    whole = make_image(tmp_path / f"whole.{fmt.lower()}", (40, 30), (9, 99, 199), fmt)
    data = whole.read_bytes()
    variants = {"whole": data, "truncated": data[: len(data) // 2], "garbled": b"\0" * 16 + data[16:]}
    verdicts = {}
    for name, content in variants.items():
        path = tmp_path / f"{name}.{fmt.lower()}"
        path.write_bytes(content)
        verdicts[name] = (check_content(content), check_file(path))
        assert verdicts[name][0] == verdicts[name][1], (name, verdicts[name])
    assert verdicts["whole"] == (None, None)
    assert verdicts["truncated"][0] and verdicts["garbled"][0]


def test_a_folder_swapped_in_is_refused_without_leaking_a_descriptor(tmp_path: Path) -> None:
    """A path that became a folder since validation is an OSError naming it; no fd stays open."""
    folder = tmp_path / "a.png"
    folder.mkdir()
    before = len(os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else None
    for _ in range(5):
        with pytest.raises(OSError, match="not a regular file"):
            hash_file(folder)
    if before is not None:
        assert len(os.listdir("/proc/self/fd")) == before


@pytest.mark.parametrize("size", [SMALL_FILE - 1, SMALL_FILE, SMALL_FILE + 1])
def test_sizes_around_the_small_file_limit(tmp_path: Path, size: int) -> None:
    """Up to SMALL_FILE bytes the check gets the content, past it None; the digest is exact."""
    path = tmp_path / "edge.png"
    data = os.urandom(size)
    path.write_bytes(data)
    seen: list[bytes | None] = []
    assert hash_file(path, lambda _p, content: seen.append(content)) == hashlib.sha256(data).hexdigest()
    assert seen == ([data] if size <= SMALL_FILE else [None])
