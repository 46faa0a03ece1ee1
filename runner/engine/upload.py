"""What a job's request carries: its downscaled parts, made ahead in threads, and its size.

``api.max_upload_mb`` is checked before anything is sent (``upload_problems``): validate
checks every job, plan and apply the jobs they would submit (a no-op plan reads no image
bytes). The size is exact, never an estimate that could refuse a job that fits: the
originals' sizes from ``stat``, a downscaled image's from the resize cache (a sidecar and
a ``stat``); an image not downscaled yet is downscaled then, into the cache, which apply
later sends from. The multipart framing is counted as httpx writes it.

At apply (``Preparer``), a job's images are downscaled in worker threads before it takes
an upload slot, so resizing one job overlaps uploading another; the threads are at most
``max_uploads`` (one decoded image each: memory stays flat), and go to jobs in the order
they started, so the first jobs are ready first instead of all of them at the end.
"""

from __future__ import annotations

import heapq
import itertools
import os
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio

from runner.api import wire
from runner.diagnostics import Diagnostic
from runner.manifest.resize import ResizeCache, Resized, Setting
from runner.models import Fingerprinted, ImageInfo, Job, Manifest

MB = 1024 * 1024  # api.max_upload_mb counts as the sandbox's --max-upload-mb does
SUGGESTED_MAX_SIDE = 1536
# httpx's multipart: a 32-character boundary, CRLFs and one header block per part.
_BOUNDARY = 32


def part_overhead(name: str, filename: str | None, content_type: str | None) -> int:
    """Bytes httpx writes around one part's content (boundary line, headers, CRLFs)."""
    header = f'Content-Disposition: form-data; name="{name}"'
    if filename is not None:
        header += f'; filename="{filename}"'
    size = 2 + _BOUNDARY + 2 + len(header.encode()) + 2
    if content_type:
        size += len(f"Content-Type: {content_type}".encode()) + 2
    return size + 2 + 2  # the blank line, and the CRLF after the content


def request_bytes(job: Job, sizes: Mapping[str, int]) -> int:
    """The POST body's size when each image is sent as ``sizes[path]`` bytes."""
    total = 2 + _BOUNDARY + 2 + 2  # the closing boundary line
    for name, value in wire.form_fields(job):
        total += part_overhead(name, None, None) + len(value.encode())
    for part in wire.file_parts(job):
        total += part_overhead("image_files", part.filename, part.mime) + sizes[str(part.path)]
    return total


def setting_of(job: Job) -> Setting | None:
    return Setting(job.max_side, job.jpeg_quality) if job.max_side else None


def sent_sizes(
    fps: Sequence[Fingerprinted], cache: ResizeCache, *, threads: int = 2
) -> dict[str, dict[str, int]]:
    """Each job's image sizes as sent, by job name then path text: ``stat`` for originals,
    the cache for downscaled images (made now, in threads, where missing)."""
    out: dict[str, dict[str, int]] = {}
    todo: list[tuple[str, str, str, ImageInfo, Setting]] = []
    for fp in fps:
        sizes = out[fp.job.name] = {}
        setting = setting_of(fp.job)
        for path in fp.job.images:
            text = str(path)
            if text in fp.resize and setting is not None:
                digest, info = fp.resize[text]
                todo.append((fp.job.name, text, digest, info, setting))
            else:
                sizes[text] = os.stat(text).st_size

    def one(item: tuple[str, str, str, ImageInfo, Setting]) -> int:
        _name, text, digest, info, setting = item
        return cache.get(Path(text), digest, info, setting).size

    if todo:
        with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="resize") as pool:
            for item, size in zip(todo, pool.map(one, todo), strict=True):
                out[item[0]][item[1]] = size
    return out


def upload_problems(
    manifest: Manifest, display: str, fps: Iterable[Fingerprinted], cache: ResizeCache
) -> list[Diagnostic]:
    """One error per job whose request would exceed ``api.max_upload_mb`` (none unset)."""
    limit_mb = manifest.api.max_upload_mb
    if limit_mb is None:
        return []
    limit = int(limit_mb * MB)
    checked = [fp for fp in fps if fp.job.images]
    sizes = sent_sizes(checked, cache, threads=max(1, manifest.api.max_uploads))
    out = []
    for fp in checked:
        size = request_bytes(fp.job, sizes[fp.job.name])
        if size > limit:
            out.append(_too_large(display, fp, size, limit_mb))
    return out


def _too_large(display: str, fp: Fingerprinted, size: int, limit_mb: float) -> Diagnostic:
    job = fp.job
    count = len(job.images)
    if job.max_side:
        why = f" even with upload.max_side {job.max_side}"
        fix = "lower upload.max_side, or split the job's images over several jobs"
    else:
        why = ""
        fix = (
            f"set upload.max_side (e.g. {SUGGESTED_MAX_SIDE}, in defaults or the job) to send "
            "downscaled images, or split the job's images over several jobs"
        )
    message = (
        f"job {job.name!r} would upload {size / MB:.1f} MB ({count} image{'s' if count != 1 else ''}), "
        f"more than api.max_upload_mb ({limit_mb:g} MB) allows{why}; {fix}"
    )
    return Diagnostic(display, job.line, job.col, job.path, message)


# -- at apply: downscaled ahead, in threads ----------------------------------------------------


class PriorityLimiter:
    """``tokens`` at once, handed to the waiter with the lowest priority first (ties: in
    arrival order), so the job that started first gets its images done first."""

    def __init__(self, tokens: int) -> None:
        self._free = max(1, tokens)
        self._waiting: list[tuple[int, int, anyio.Event]] = []
        self._order = itertools.count()

    async def acquire(self, priority: int) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        event = anyio.Event()
        entry = (priority, next(self._order), event)
        heapq.heappush(self._waiting, entry)
        try:
            await event.wait()
        except BaseException:
            if entry in self._waiting:
                self._waiting.remove(entry)
                heapq.heapify(self._waiting)
            elif event.is_set():
                self.release()  # handed a token as we were cancelled: pass it on
            raise

    def release(self) -> None:
        if self._waiting:
            _p, _n, event = heapq.heappop(self._waiting)
            event.set()  # the token goes straight to it
        else:
            self._free += 1


class Preparer:
    """Makes the downscaled parts of the jobs apply submits (``Fingerprinted.resize``)."""

    def __init__(self, cache: ResizeCache, threads: int) -> None:
        self.cache = cache
        self.limiter = PriorityLimiter(threads)
        self.threads = anyio.CapacityLimiter(max(1, threads))
        self._started = itertools.count()

    async def parts(self, fp: Fingerprinted) -> dict[Path, Resized]:
        """Original path -> its downscaled copy, for every image of the job sent downscaled.

        Raises OSError when an image cannot be read or downscaled (the job fails).
        """
        setting = setting_of(fp.job)
        if not fp.resize or setting is None:
            return {}
        priority = next(self._started)
        out: dict[Path, Resized] = {}
        for path in fp.job.images:
            found = fp.resize.get(str(path))
            if found is None or path in out:
                continue
            digest, info = found
            await self.limiter.acquire(priority)
            try:
                out[path] = await anyio.to_thread.run_sync(
                    self.cache.get, path, digest, info, setting, limiter=self.threads
                )
            finally:
                self.limiter.release()
        return out

    async def remake(self, fp: Fingerprinted, path: Path) -> Resized:
        """Downscale one image again (its cached copy failed the check before upload)."""
        setting = setting_of(fp.job)
        assert setting is not None
        digest, info = fp.resize[str(path)]
        return await anyio.to_thread.run_sync(
            self.cache.refresh, path, digest, info, setting, limiter=self.threads
        )


def too_large_hint(job: Job, resized: Mapping[Path, Resized]) -> str:
    """What a 413 adds to the server's words: the request's size and the fix."""
    try:
        sizes = {str(p): resized[p].size if p in resized else os.stat(p).st_size for p in job.images}
        size = f"the request was {request_bytes(job, sizes) / MB:.1f} MB, more than the API accepts"
    except OSError:
        size = "the request is larger than the API accepts"
    if job.max_side:
        fix = f"lower upload.max_side (now {job.max_side}) or split the job's images over several jobs"
    else:
        fix = (
            f"set upload.max_side (e.g. {SUGGESTED_MAX_SIDE}) to send downscaled images, or split "
            "the job's images over several jobs"
        )
    return f"{size}: {fix}; set api.max_upload_mb to the API's limit so validate and plan catch it before anything is sent"


def validate_uploads(manifest: Manifest, display: str) -> list[Diagnostic]:
    """``runner validate``'s size check of every job (see the module docstring).

    Only the images of jobs with ``max_side`` are hashed (to key the resize cache); other
    jobs' sizes are their files' ``stat``.
    """
    if manifest.api.max_upload_mb is None:
        return []
    from runner import cache as usercache
    from runner.state.fingerprint import DigestCache, fingerprint_jobs

    resizing = [job for job in manifest.jobs if job.max_side and job.images]
    plain = [Fingerprinted(job, "", {}) for job in manifest.jobs if not (job.max_side and job.images)]
    digests = DigestCache(usercache.cache_file(manifest.folder, usercache.DIGESTS.file))
    fps = fingerprint_jobs(resizing, digests) if resizing else []
    cache = ResizeCache.for_manifest(manifest.folder)
    try:
        return upload_problems(manifest, display, [*plain, *fps], cache)
    finally:
        cache.close()
        digests.save()
