"""Fingerprints: the canonical request of a job, hashed, plus the stat cache of image digests.

A fingerprint changes exactly when the request the API would receive changes in a way that
matters for the trained model: option, finetune_type (not for Kontext, where the API ignores
it), lora_prefix, num_iterations, prompt (Kontext only, likewise) and the ordered image
digests (or the URLs). ``webhook_url`` only says where to report, so it is left out.

Image digests are cached by (path, size, mtime_ns, inode), like git's index: a no-op plan
stats files but reads no image bytes. So are the sizes and formats of the images of jobs
with ``upload.max_side`` (read from the header once), which say whether an image is sent
downscaled: the fingerprint records such an image as its digest plus the setting
(``resize.sent_id``), and the request gains ``max_side`` (and ``jpeg_quality`` when a
downscaled image is lossy). A job none of whose images is downscaled has the fingerprint
it had before ``max_side`` existed, so old lock entries stay ``noop``. The cache file is sealed with this user's key and
lives in the per-user cache folder (``runner.cache``), out of a pull request's reach: a
committed file could otherwise claim any digest for a changed image.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from runner import cache as usercache
from runner.api.wire import canonical_request
from runner.manifest.images import open_regular
from runner.manifest.resize import Setting, read_info, sent_id
from runner.models import Fingerprinted, ImageInfo, Job

_CHUNK = 1 << 20
SMALL_FILE = 1 << 16  # files up to this size are read whole, once, for the check and the hash

# ``check(path, content)`` refuses a file by raising; ``content`` is the whole file when it is
# small (checked from memory), None when it is large (the check reads what it needs).
Check = Callable[[Path, bytes | None], None]
# Stat results taken moments ago (by validation), by path text.
Stats = Mapping[str, os.stat_result]

_buffers = threading.local()


def hash_file(path: Path, check: Check | None = None) -> str:
    """sha256 of a file's bytes, after ``check`` accepted it; one open, one read when small.

    Small files (most of a 100,000-file plan) cost per file, not per byte: one open and one
    read serve both the image check and the hash (a second open, fstat, seek and read for
    the check cost more than hashing 100 bytes). Opened non-blocking and fstat'ed, so a file
    swapped for a FIFO since validation is refused instead of hanging. hashlib releases the
    GIL on large buffers, so threads hash big files in parallel; each thread reuses one 1 MB
    buffer (a fresh one per file cost more than hashing a small image).
    """
    with open_regular(path, buffering=0) as fh:
        head = fh.read(SMALL_FILE + 1)
        while len(head) <= SMALL_FILE and (more := fh.read(SMALL_FILE + 1 - len(head))):
            head += more
        if len(head) <= SMALL_FILE:
            if check is not None:
                check(path, head)
            return hashlib.sha256(head).hexdigest()
        if check is not None:
            check(path, None)
        h = hashlib.sha256(head)
        buf = getattr(_buffers, "buf", None)
        if buf is None:
            buf = _buffers.buf = bytearray(_CHUNK)
        view = memoryview(buf)
        raw = cast(io.RawIOBase, fh)  # unbuffered: a FileIO
        while n := raw.readinto(buf):
            h.update(view[:n])
        return h.hexdigest()


@dataclass(frozen=True)
class StatKey:
    size: int
    mtime_ns: int
    inode: int

    @classmethod
    def of(cls, st: os.stat_result) -> StatKey:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino)


class DigestCache:
    """Path -> (stat key, digest). Only files that hashed (and passed checks) get an entry."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, list[Any]] = {}
        self._dirty = False
        self.hits = 0
        self.misses = 0
        files = usercache.load(usercache.DIGESTS, path)
        if isinstance(files, dict):  # else missing, foreign or damaged: only costs a re-hash
            self._entries = files

    def _current(self, path: str, st: os.stat_result) -> list[Any] | None:
        """The entry of ``path`` when the file is as it was when hashed (size, mtime, inode)."""
        entry = self._entries.get(path)
        if entry and entry[0] == st.st_size and entry[1] == st.st_mtime_ns and entry[2] == st.st_ino:
            return entry
        return None

    def lookup(self, path: str, st: os.stat_result) -> str | None:
        """The digest of ``path`` (run once per file: takes text and a stat result as they are)."""
        entry = self._current(path, st)
        if entry is None:
            self.misses += 1
            return None
        self.hits += 1
        return str(entry[3])

    def put(self, path: Path, key: StatKey, digest: str) -> None:
        self._entries[str(path)] = [key.size, key.mtime_ns, key.inode, digest]
        self._dirty = True

    def info(self, path: str, st: os.stat_result) -> ImageInfo | None:
        """The image's header facts, cached with its digest (same stat key), or None."""
        entry = self._current(path, st)
        return ImageInfo.from_list(entry[4]) if entry is not None and len(entry) == 5 else None

    def put_info(self, path: str, st: os.stat_result, info: ImageInfo) -> None:
        """Remember ``info`` beside the digest (only when the digest entry is current)."""
        entry = self._current(path, st)
        if entry is not None:
            self._entries[path] = [*entry[:4], info.to_list()]
            self._dirty = True

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        usercache.store(usercache.DIGESTS, self.path, self._entries)
        self._dirty = False


def digest_files(
    paths: Iterable[Path],
    cache: DigestCache,
    *,
    threads: int = 2,
    check: Check | None = None,
    stats: Stats | None = None,
) -> dict[str, str]:
    """Digest every distinct path, reading only files whose stat changed since last time.

    Returns digests by ``str(path)``: text keys hash in C, where a Path's ``__hash__`` is a
    Python call, and a 10,000-job plan looks up 100,000 files several times.
    ``check`` runs on each file about to be hashed (used to check the image decodes before
    it is trusted into the cache); it raises to refuse the file. ``stats`` holds stat
    results taken moments ago by validation, by ``str(path)``; others are stat'ed here.
    """
    result: dict[str, str] = {}
    todo: list[tuple[Path, StatKey]] = []
    known = stats or {}
    for text, path in {str(p): p for p in paths}.items():
        st = known.get(text)
        if st is None:
            st = os.stat(text)
        digest = cache.lookup(text, st)
        if digest is None:
            todo.append((path, StatKey.of(st)))
        else:
            result[text] = digest

    def work(batch: list[tuple[Path, StatKey]]) -> list[str]:
        out = []
        for path, _key in batch:
            out.append(hash_file(path, check))
        return out

    if todo:
        # Threads only for large files, where hashing releases the GIL. A small file's work
        # is Python (open, read, the image check), so a second thread only fights for the
        # GIL: 20,000 files of 100 bytes took 0.25 s on 2 threads, 0.15 s on one.
        small: list[tuple[Path, StatKey]] = []
        large: list[tuple[Path, StatKey]] = []
        for item in todo:
            (small if item[1].size <= SMALL_FILE else large).append(item)
        todo = small + large  # the order the digests come back in
        digests = work(small)
        if len(large) <= 1 or threads <= 1:
            digests += work(large)
        else:
            # A few batches per thread, not one future per file. 8 batches for 2 threads.
            size = max(1, -(-len(large) // (threads * 4)))
            batches = [large[i : i + size] for i in range(0, len(large), size)]
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="digest") as pool:
                digests += [d for done in pool.map(work, batches) for d in done]
        for (path, key), digest in zip(todo, digests, strict=True):
            cache.put(path, key, digest)
            result[str(path)] = digest
    return result


def sha256_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def inputs_summary(canon: dict[str, Any]) -> dict[str, Any]:
    """What the lockfile keeps of the request so a later plan can say *why* it changed.

    ``images`` digests the originals (a downscaled image's ``@setting`` dropped), so a new
    ``max_side`` shows as ``max_side``, not also as changed images.
    """
    summary = {k: v for k, v in canon.items() if k not in ("images", "image_urls")}
    if "images" in canon:
        summary["images"] = sha256_json([d.split("@", 1)[0] for d in canon["images"]])
    else:
        summary["images"] = sha256_json(canon.get("image_urls", []))
    return summary


def upload_setting(job: Job) -> Setting | None:
    return Setting(job.max_side, job.jpeg_quality) if job.max_side and job.images else None


def image_infos(
    jobs: Iterable[Job], cache: DigestCache, stats: Stats | None = None
) -> dict[str, ImageInfo]:
    """Header facts of every image of the jobs with ``max_side``: cached by stat, else read
    from the header (no pixels). Call after ``digest_files``, which made the entries."""
    out: dict[str, ImageInfo] = {}
    known = stats or {}
    for job in jobs:
        if upload_setting(job) is None:
            continue
        for path in job.images:
            text = str(path)
            if text in out:
                continue
            st = known.get(text) or os.stat(text)
            info = cache.info(text, st)
            if info is None:
                info = read_info(path)
                cache.put_info(text, st, info)
            out[text] = info
    return out


def fingerprint_jobs(
    jobs: Iterable[Job], cache: DigestCache, *, check: Check | None = None, stats: Stats | None = None
) -> list[Fingerprinted]:
    """Every job with the fingerprint of its request (``check``, ``stats``: as ``digest_files``)."""
    jobs = list(jobs)
    digests = digest_files((p for job in jobs for p in job.images), cache, check=check, stats=stats)
    infos = image_infos(jobs, cache, stats)
    out = []
    for job in jobs:
        setting = upload_setting(job)
        resize: dict[str, tuple[str, ImageInfo]] = {}
        sent: dict[str, str] | None = None
        if setting is not None:
            sent = {}
            for path in job.images:
                text = str(path)
                sent[text] = sent_id(digests[text], infos[text], setting)
                if sent[text] != digests[text]:
                    resize[text] = (digests[text], infos[text])
        canon = canonical_request(job, digests, sent)
        out.append(Fingerprinted(job, sha256_json(canon), inputs_summary(canon), resize))
    return out
