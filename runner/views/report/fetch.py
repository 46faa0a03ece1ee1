"""Where the report's samples may come from, and getting them: URL -> bytes -> ``data:`` URI.

Where samples may come from is ``runner.views.report.policy``'s rule. Bounds: the whole fetching
has a deadline (``--timeout``) and each sample its own (``--image-timeout``), measured in wall time (a
server dripping one byte a second is cut off, and a stuck worker is abandoned, never
waited for); downloads stop at ``MAX_DOWNLOAD`` bytes; images with more than
``MAX_PIXELS`` pixels are refused after reading their header, before decoding, and only a
few decode at once; state files are opened with no symlink at any step, as regular files
only, up to a size cap (``runner.sandbox.files``), and the database read-only. A refused
or failed sample becomes a card saying why ("not from the API's origin", "too large",
"timed out").

``fill_samples`` does all the I/O of a report; ``runner.views.report.page`` then renders the
cards without any.
"""

from __future__ import annotations

import base64
import io
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from runner.api.endpoint import SANDBOX, sandbox_state_dir
from runner.views.report.cards import Card, Sample, Section
from runner.views.report.policy import NOT_FROM_ORIGIN, SANDBOX_FILE, FetchPolicy

DEFAULT_TIMEOUT = 120.0  # seconds, for all the fetching of one report together
DEFAULT_IMAGE_TIMEOUT = 20.0  # seconds, for one sample
CONNECT_TIMEOUT = 3.0
GIVE_UP_GRACE = 1.0  # after a sample's own deadline, before its worker is abandoned
MAX_DOWNLOAD = 20 * 1024 * 1024  # bytes, per sample; also the cap of a state file
MAX_DATABASE = 512 * 1024 * 1024  # bytes: the sandbox database a report may read
MAX_PIXELS = 24_000_000  # checked before decoding: 72 MB as RGB, never gigabytes
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")  # what a sample can be; never EPS or the like
DEFAULT_IMAGE_SIZE = 512  # longest side of an embedded sample, in pixels
FETCH_WORKERS = 6
DECODE_SLOTS = 2  # images decoded at once: bounds memory

class TooLarge(ValueError):
    """An image refused for its size, before it was decoded."""


# -- fetching ------------------------------------------------------------------------------


class Fetcher:
    """Gets sample bytes over HTTP or from a sandbox state folder, within its deadlines;
    thread-safe. ``deadline`` is a ``time.monotonic()`` value."""

    def __init__(
        self,
        deadline: float | None = None,
        image_timeout: float = DEFAULT_IMAGE_TIMEOUT,
        max_bytes: int = MAX_DOWNLOAD,
    ) -> None:
        import httpx

        self.deadline = time.monotonic() + DEFAULT_TIMEOUT if deadline is None else deadline
        self.image_timeout = image_timeout
        self.max_bytes = max_bytes
        self._client = httpx.Client(
            timeout=httpx.Timeout(image_timeout, connect=min(CONNECT_TIMEOUT, image_timeout)),
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment must not see these URLs
            # Bytes as sent (iter_raw), so the byte cap counts what arrives: no gzip bomb.
            headers={"Accept-Encoding": "identity"},
        )
        self._dead_hosts: set[str] = set()
        self._lock = threading.Lock()
        self._stores: dict[Path, Any] = {}
        self.cancelled = threading.Event()
        self.decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)

    def close(self) -> None:
        self.cancelled.set()
        self._client.close()
        with self._lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def give_up(self) -> bool:
        return self.cancelled.is_set() or time.monotonic() >= self.deadline

    def http(self, url: str, policy: FetchPolicy) -> tuple[bytes | None, str]:
        import httpx

        refusal = policy.http_refusal(url)
        if refusal:
            return None, refusal
        host = urlsplit(url).netloc
        with self._lock:
            if host in self._dead_hosts:
                return None, f"{host} is not reachable"
        until = min(self.deadline, time.monotonic() + self.image_timeout)
        left = until - time.monotonic()
        if left <= 0 or self.cancelled.is_set():
            return None, "timed out (the report's deadline passed)"
        timeout = httpx.Timeout(left, connect=min(CONNECT_TIMEOUT, left))
        try:
            with self._client.stream("GET", url, timeout=timeout) as response:
                if response.status_code != 200:
                    return None, f"HTTP {response.status_code}"
                length = response.headers.get("content-length", "")
                if length.isdigit() and int(length) > self.max_bytes:
                    return None, f"too large (more than {self.max_bytes / 1e6:.0f} MB)"
                chunks: list[bytes] = []
                size = 0
                # In memory already only when a transport handed over bytes (tests' mocks).
                stream: Iterable[bytes] = (
                    [response.content] if response.is_stream_consumed else response.iter_raw()
                )
                for chunk in stream:
                    size += len(chunk)
                    if size > self.max_bytes:
                        return None, f"too large (more than {self.max_bytes / 1e6:.0f} MB)"
                    chunks.append(chunk)
                    if time.monotonic() > until or self.cancelled.is_set():
                        if until >= self.deadline or self.cancelled.is_set():
                            return None, "timed out (the report's deadline passed)"
                        return None, f"timed out (still downloading after {self.image_timeout:g} s)"
                return b"".join(chunks), ""
        except httpx.ConnectTimeout:
            with self._lock:
                self._dead_hosts.add(host)
            return None, f"timed out connecting to {host}"
        except httpx.TimeoutException:
            return None, "timed out"
        except httpx.ConnectError:
            with self._lock:
                self._dead_hosts.add(host)
            return None, f"{host} is not reachable"
        except (httpx.HTTPError, httpx.StreamError) as exc:
            return None, f"download failed ({type(exc).__name__})"

    def sandbox_file(self, url: str, folder: Path) -> tuple[bytes | None, str]:
        """The file the sandbox served at ``url``, from the state folder beside the manifest
        in ``folder``: the rendered file if there, else rendered from the database."""
        from runner.sandbox.files import Refused, read_beneath

        match = SANDBOX_FILE.match(url)
        if not match:
            return None, NOT_FROM_ORIGIN
        asset_id, name = match.groups()
        root, prefix = _state_root(folder)
        try:
            return read_beneath(root, (*prefix, "outputs", asset_id, name), self.max_bytes), ""
        except FileNotFoundError:
            pass
        except Refused as exc:
            return None, f"sandbox file refused: {exc.reason}"
        except OSError as exc:
            return None, f"sandbox file unreadable ({exc.strerror or exc})"
        return self._render(root, prefix, asset_id, name)

    def _render(
        self, root: Path, prefix: tuple[str, ...], asset_id: str, name: str
    ) -> tuple[bytes | None, str]:
        """Not downloaded during the apply: render it the way the sandbox would have, in
        memory (a report writes nothing but itself)."""
        from runner.sandbox import training
        from runner.sandbox.files import Refused, open_beneath
        from runner.sandbox.store import Store

        gone = "not in the sandbox's state folder"
        if name not in training.OUTPUT_NAMES:
            return None, gone
        database = (*prefix, "sandbox.sqlite3")
        try:
            with open_beneath(root, database, MAX_DATABASE):
                pass  # a regular file, reached without a symlink, not too large
        except FileNotFoundError:
            return None, gone
        except Refused as exc:
            return None, f"sandbox database refused: {exc.reason}"
        except OSError as exc:
            return None, f"sandbox database unreadable ({exc.strerror or exc})"
        state_dir = root.joinpath(*prefix)
        try:
            with self._lock:
                store = self._stores.get(state_dir)
                if store is None:
                    store = self._stores[state_dir] = Store.read_only(
                        root.joinpath(*database), give_up=self.give_up
                    )
            asset = store.get_asset_by_id(asset_id)
            if asset is None:
                return None, gone
            succeeded = asset.status == training.SUCCESS or (
                asset.status not in training.FINAL
                and training.phase_at(asset, time.time()) == training.SUCCESS
            )
            if not succeeded:
                return None, f"the sandbox's training is {asset.status}"
            with self.decode_slots:
                return training.render_png(asset, name, state_dir), ""
        except Exception as exc:  # a damaged or foreign state folder only costs the image
            if self.give_up():
                return None, "timed out (the report's deadline passed)"
            return None, f"sandbox state unreadable ({type(exc).__name__})"


def _state_root(folder: Path) -> tuple[Path, tuple[str, ...]]:
    """(a trusted folder, the components below it to walk without following symlinks)."""
    state_dir = sandbox_state_dir(folder)
    try:
        return folder, state_dir.relative_to(folder).parts
    except ValueError:  # kept elsewhere (a per-user folder): trusted as it is
        return state_dir, ()


def _quiet_bomb_warning() -> None:
    """Pillow warns on stderr about images we refuse ourselves (MAX_PIXELS is lower than its
    limit): a stray line that would break ``--log-format json``. A process-wide filter
    (``warnings.catch_warnings`` is not thread-safe), set again each time because test
    runners reset filters; adding the same filter twice keeps one."""
    import warnings

    from PIL import Image

    warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def embed(data: bytes, max_side: int) -> tuple[str, int, int]:
    """A resized copy as a ``data:`` URI (JPEG, or PNG when the image has transparency).

    Raises ``TooLarge`` for an image of more than ``MAX_PIXELS``, read from its header
    before any pixel is decoded (a 13000x13000 PNG of a few hundred KB would take GBs)."""
    from PIL import Image, ImageOps

    _quiet_bomb_warning()
    try:
        opened = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
    except Image.DecompressionBombError as exc:  # Pillow's own cap, far above ours
        raise TooLarge(f"too large ({exc})") from None
    with opened:
        width, height = opened.size
        if width * height > MAX_PIXELS:
            raise TooLarge(
                f"too large ({width}x{height} pixels; at most {MAX_PIXELS / 1e6:g} megapixels)"
            )
        opened.draft("RGB", (max_side, max_side))  # JPEG: decode at reduced size, cheaply
        image = ImageOps.exif_transpose(opened)
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        transparent = image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
        out = io.BytesIO()
        if transparent:
            image.convert("RGBA").save(out, format="PNG", optimize=True)
            mime = "image/png"
        else:
            image.convert("RGB").save(out, format="JPEG", quality=82, optimize=True)
            mime = "image/jpeg"
        width, height = image.size
    return f"data:{mime};base64,{base64.b64encode(out.getvalue()).decode('ascii')}", width, height


def load_sample(
    url: str, folder: Path, fetcher: Fetcher, max_side: int, policy: FetchPolicy
) -> Sample:
    """One sample of a manifest in ``folder``, by ``policy``; never raises."""
    try:
        return _load_sample(url, folder, fetcher, max_side, policy)
    except Exception as exc:  # a bug or an odd answer costs one image, not the report
        return Sample(url, problem=f"failed ({type(exc).__name__})")


def _load_sample(
    url: str, folder: Path, fetcher: Fetcher, max_side: int, policy: FetchPolicy
) -> Sample:
    sample = Sample(url)
    refusal = policy.http_refusal(url)
    data: bytes | None = None
    problem = refusal or ""
    source = "http"
    if refusal is None:
        data, problem = fetcher.http(url, policy)
    if data is None and policy.reads_state(url):
        data, problem = fetcher.sandbox_file(url, folder)
        source = "sandbox state"
    if data is None:
        sample.problem = problem or "not reachable"
        return sample
    try:
        with fetcher.decode_slots:
            sample.data_uri, sample.width, sample.height = embed(data, max_side)
    except TooLarge as exc:
        sample.problem = str(exc)
        return sample
    except Exception as exc:  # not an image, truncated, a bomb: the card says so
        sample.problem = f"not a readable image ({type(exc).__name__})"
        return sample
    sample.source = source
    return sample


class _Workers:
    """Runs ``work(i)`` for i in range(count) on a few daemon threads, within deadlines.

    The caller's thread only waits (in short slices, so SIGTERM's KeyboardInterrupt gets
    through at once). A task still running ``per_task`` seconds after it started, or when
    ``deadline`` passes, is given up: its sample says it timed out, its thread is abandoned
    (daemon: it never holds up the exit) and replaced, so one stuck server cannot starve
    the others.
    """

    def __init__(
        self,
        count: int,
        work: Callable[[int], Sample],
        placeholder: Callable[[int, str], Sample],
        workers: int,
        deadline: float,
        per_task: float,
    ) -> None:
        self._count = count
        self._work = work
        self._placeholder = placeholder
        self._workers = max(1, min(workers, count))
        self._deadline = deadline
        self._per_task = per_task
        self._cond = threading.Condition()
        self._next = 0
        self._running: dict[int, float] = {}  # task -> when it is given up
        self._results: dict[int, Sample] = {}
        self._stop = False
        self._threads: list[threading.Thread] = []

    def _start(self) -> None:
        thread = threading.Thread(target=self._loop, name="report-fetch", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stop or self._next >= self._count:
                    return
                index = self._next
                self._next += 1
                self._running[index] = min(self._deadline, time.monotonic() + self._per_task)
            try:
                sample = self._work(index)
            except BaseException as exc:  # work never raises; if it does, only this sample
                sample = self._placeholder(index, f"failed ({type(exc).__name__})")
            with self._cond:
                if self._running.pop(index, None) is None:
                    return  # given up and replaced meanwhile: this thread is surplus
                self._results[index] = sample
                self._cond.notify_all()

    def run(self) -> dict[int, Sample]:
        with self._cond:
            for _ in range(self._workers):
                self._start()
            try:
                while len(self._results) < self._count:
                    now = time.monotonic()
                    if now >= self._deadline:
                        break
                    for index, until in list(self._running.items()):
                        if now >= until:
                            del self._running[index]
                            self._results[index] = self._placeholder(
                                index, f"timed out (more than {self._per_task - GIVE_UP_GRACE:g} s)"
                            )
                            self._start()
                    self._cond.wait(0.1)
            finally:
                self._stop = True
        for index in range(self._count):
            if index not in self._results:
                self._results[index] = self._placeholder(
                    index, "timed out (the report's deadline passed)"
                )
        return self._results

    def idle(self) -> bool:
        """No thread is still working (so shared clients may be closed)."""
        return not any(t.is_alive() for t in self._threads)


def fill_samples(
    sections: list[Section],
    folders: dict[str, Path],
    max_side: int = DEFAULT_IMAGE_SIZE,
    fetcher_factory: Callable[..., Fetcher] = Fetcher,
    *,
    policies: dict[str, FetchPolicy] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    image_timeout: float = DEFAULT_IMAGE_TIMEOUT,
) -> None:
    """Download or read every sample, a few at a time, in place, within ``timeout`` seconds
    in all and ``image_timeout`` each; a manifest without a policy gets the sandbox's."""
    jobs: list[tuple[Card, int, Path, FetchPolicy]] = []
    for section in sections:
        policy = (policies or {}).get(section.manifest) or FetchPolicy(SANDBOX)
        for card in section.cards:
            for i in range(len(card.samples)):
                jobs.append((card, i, folders[section.manifest], policy))
    if not jobs:
        return
    deadline = time.monotonic() + timeout
    fetcher = fetcher_factory(deadline=deadline, image_timeout=image_timeout)

    def work(index: int) -> Sample:
        card, i, folder, policy = jobs[index]
        if fetcher.give_up():
            return placeholder(index, "timed out (the report's deadline passed)")
        return load_sample(card.samples[i].url, folder, fetcher, max_side, policy)

    def placeholder(index: int, problem: str) -> Sample:
        card, i, _folder, _policy = jobs[index]
        return Sample(card.samples[i].url, problem=problem)

    workers = _Workers(
        len(jobs), work, placeholder, FETCH_WORKERS, deadline, image_timeout + GIVE_UP_GRACE
    )
    try:
        results = workers.run()
    finally:
        fetcher.cancelled.set()
        if workers.idle():
            fetcher.close()
    for index, (card, i, _folder, _policy) in enumerate(jobs):
        card.samples[i] = results[index]
