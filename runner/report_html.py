"""The results gallery behind ``runner report``: lockfile entries -> cards -> one HTML file.

The file must open anywhere, forever: attached to a CI run, mailed, opened offline years
later. So it is self-contained: every sample is resized with Pillow and embedded as a
``data:`` URI, the style and script are inline, and a Content-Security-Policy meta tag
(``default-src 'none'``, images only from ``data:``, the inline style and script allowed by
their hashes) makes the browser refuse any request the page might try.

A lockfile arrives in pull requests, so its sample URLs are untrusted: fetching what it says
would let anyone make CI send GETs to any port of the runner's machine or its network.
Where a sample may come from (``FetchPolicy``), for the API the manifest targets:

- the embedded sandbox (``api.endpoint: sandbox``): only its state folder beside the
  manifest (``.runner/sandbox``), for URLs of its file route
  (``http://127.0.0.1:PORT/_sandbox/files/<id>/<name>``, whose port died with the apply):
  the rendered file if it is there, else rendered in memory from its database. Never HTTP.
- a loopback endpoint (``runner sandbox serve``): HTTP to exactly that origin (scheme, host,
  port), and the state folder as above.
- an https endpoint: https only, to the API's own origin or a sibling host under its parent
  domain (``api.vimmerse.net`` -> ``dev-media.vimmerse.net``; default port, an IP address is
  never a sibling, and a parent that looks like a public suffix such as ``co.uk`` is not
  taken), plus the hosts of ``--allow-host``. Never loopback, never plain http.

Everything else is refused without a request. Bounds: the whole fetching has a deadline
(``--timeout``) and each sample its own (``--image-timeout``), measured in wall time (a
server dripping one byte a second is cut off, and a stuck worker is abandoned, never
waited for); downloads stop at ``MAX_DOWNLOAD`` bytes; images with more than
``MAX_PIXELS`` pixels are refused after reading their header, before decoding, and only a
few decode at once; state files are opened with no symlink at any step, as regular files
only, up to a size cap (``runner.sandbox.files``), and the database read-only. A refused
or failed sample becomes a card saying why ("not from the API's origin", "too large",
"timed out").

``fill_samples`` does the I/O; ``render_html`` is a pure function of the cards.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import ipaddress
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from runner.endpoint import SANDBOX, api_identity, is_loopback_identity, sandbox_state_dir
from runner.lockfile import LockEntry

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
NOT_FROM_ORIGIN = "not from the API's origin"
SANDBOX_FILE = re.compile(
    r"^http://(?:127\.0\.0\.1|localhost|\[::1\]):\d+/_sandbox/files/([A-Za-z0-9]+)/([A-Za-z0-9_]+\.png)$"
)
# Two-label suffixes under which unrelated parties register names (co.uk, com.au, ...): a
# parent domain that looks like one is not a "site", so its hosts are not siblings. An
# approximation of the Public Suffix List that errs towards refusing; --allow-host widens.
_SHARED_SECOND_LEVEL = frozenset(
    ("ac", "co", "com", "edu", "gob", "gov", "gv", "go", "int", "ltd", "me", "mil", "ne", "net",
     "nic", "nom", "or", "org", "plc", "sch")
)


@dataclass
class Sample:
    """One result image as the page shows it: a data URI, or why there is none."""

    url: str
    data_uri: str | None = None
    width: int = 0
    height: int = 0
    source: str = ""  # "http", "sandbox state", or "" when unavailable
    problem: str = ""


@dataclass
class Card:
    manifest: str
    name: str
    status: str
    trigger_word: str | None = None
    option: str | None = None
    finetune_type: str | None = None
    images: int | None = None
    finished_at: str | None = None
    error: dict[str, Any] | None = None
    samples: list[Sample] = field(default_factory=list)


@dataclass
class Section:
    """One manifest's cards, or the error that kept it from being read."""

    manifest: str
    cards: list[Card] = field(default_factory=list)
    error: str | None = None


class TooLarge(ValueError):
    """An image refused for its size, before it was decoded."""


# -- where samples may come from -------------------------------------------------------------


def normalize_allowed_host(value: str) -> str:
    """``--allow-host`` value -> ``host`` or ``*.domain`` (lower case); ValueError if it is
    not a bare host name."""
    text = value.strip().lower().rstrip(".")
    wildcard = text.startswith("*.")
    name = text[2:] if wildcard else text
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*", name):
        raise ValueError(
            f"--allow-host takes a host name such as cdn.example.com or *.example.com, not {value!r}"
        )
    return ("*." if wildcard else "") + name


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def site_of(host: str) -> str | None:
    """The domain whose hosts count as siblings of the API's ``host``: its parent domain
    (``api.vimmerse.net`` -> ``vimmerse.net``), or the host itself when the parent would be
    a public suffix or a top-level domain; None for an IP address."""
    host = host.lower().rstrip(".")
    if not host or _is_ip(host):
        return None
    labels = host.split(".")
    if len(labels) < 2:
        return None
    parent = labels[1:]
    if len(parent) < 2:
        return host
    if len(parent) == 2 and len(parent[1]) == 2 and parent[0] in _SHARED_SECOND_LEVEL:
        return host
    return ".".join(parent)


@dataclass(frozen=True)
class FetchPolicy:
    """Where one manifest's samples may be read from (module docstring)."""

    api: str  # runner.endpoint.api_identity of the endpoint the manifest targets
    allow_hosts: tuple[str, ...] = ()  # normalize_allowed_host values

    @property
    def local(self) -> bool:
        """The sandbox, or a loopback endpoint: its state folder may be read."""
        return is_loopback_identity(self.api)

    def reads_state(self, url: str) -> bool:
        return self.local and SANDBOX_FILE.match(url) is not None

    def _allowed(self, host: str) -> bool:
        for allowed in self.allow_hosts:
            if allowed.startswith("*."):
                if host.endswith(allowed[1:]):
                    return True
            elif host == allowed:
                return True
        return False

    def http_refusal(self, url: str) -> str | None:
        """None when ``url`` may be requested; else why not, without any request."""
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            return "not a valid URL"
        host = (parts.hostname or "").lower()
        if parts.scheme not in ("http", "https") or not host:
            return "not an http(s) URL"
        if "@" in parts.netloc:
            return NOT_FROM_ORIGIN + " (a URL with user info)"
        if self.api != SANDBOX and api_identity(url) == self.api:
            return None
        if parts.scheme != "https" or port not in (None, 443):
            return NOT_FROM_ORIGIN
        host = host.rstrip(".")
        if self._allowed(host):
            return None
        if self.local:
            return NOT_FROM_ORIGIN
        api_host = (urlsplit(self.api).hostname or "").lower()
        site = site_of(api_host)
        if site and not _is_ip(host) and (host == site or host.endswith("." + site)):
            return None
        return NOT_FROM_ORIGIN


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


# -- collecting ------------------------------------------------------------------------------


def cards_for(manifest: str, names: Iterable[str], entries: dict[str, LockEntry]) -> list[Card]:
    cards = []
    for name in sorted(names):
        entry = entries.get(name)
        if entry is None:
            cards.append(Card(manifest, name, "absent"))
            continue
        cards.append(
            Card(
                manifest,
                name,
                entry.status,
                entry.trigger_word,
                entry.option,
                entry.finetune_type,
                entry.images,
                entry.finished_at,
                entry.error,
                [Sample(str(url)) for url in entry.results],
            )
        )
    return cards


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


# -- rendering -------------------------------------------------------------------------------

STYLE = """
:root { color-scheme: light dark; --bg: #f6f7f9; --card: #fff; --fg: #1d2330; --muted: #5d6778;
  --line: #dde1e8; --ok: #1a7f37; --bad: #c62828; --warn: #a86500; --run: #0b62a4; }
@media (prefers-color-scheme: dark) { :root { --bg: #14171c; --card: #1d2129; --fg: #e7eaf0;
  --muted: #9aa3b2; --line: #2c323d; --ok: #4cc36b; --bad: #ff6b6b; --warn: #f0b340; --run: #5fb0ff; } }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  background: var(--bg); color: var(--fg); }
header { padding: 20px 28px 8px; }
h1 { margin: 0 0 4px; font-size: 22px; }
.meta { color: var(--muted); font-size: 13px; }
.toolbar { display: flex; gap: 10px; align-items: center; padding: 8px 28px 0; flex-wrap: wrap; }
.toolbar input { padding: 6px 10px; border: 1px solid var(--line); border-radius: 6px;
  background: var(--card); color: var(--fg); min-width: 240px; }
section { padding: 8px 28px 24px; }
h2 { font-size: 17px; margin: 18px 0 4px; font-family: ui-monospace, SFMono-Regular, Menlo, monospace; }
.counts { color: var(--muted); font-size: 13px; margin-bottom: 12px; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(300px, 1fr)); gap: 16px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 10px; padding: 14px;
  display: flex; flex-direction: column; gap: 8px; }
.card.st-failed { border-color: var(--bad); }
.card h3 { margin: 0; font-size: 16px; word-break: break-all; display: flex; gap: 8px;
  justify-content: space-between; align-items: baseline; }
.badge { font-size: 12px; font-weight: 600; padding: 1px 8px; border-radius: 999px;
  border: 1px solid currentColor; white-space: nowrap; }
.badge.succeeded { color: var(--ok); } .badge.failed { color: var(--bad); }
.badge.uncertain, .badge.submitting { color: var(--warn); }
.badge.training, .badge.pending { color: var(--run); } .badge.absent { color: var(--muted); }
.tw { display: flex; gap: 6px; align-items: center; }
.tw code { font: 14px ui-monospace, SFMono-Regular, Menlo, monospace; background: var(--bg);
  padding: 2px 6px; border-radius: 4px; word-break: break-all; }
button { font: inherit; font-size: 12px; padding: 2px 10px; border-radius: 6px; cursor: pointer;
  border: 1px solid var(--line); background: var(--bg); color: var(--fg); }
dl { display: grid; grid-template-columns: auto 1fr; gap: 2px 10px; margin: 0; font-size: 13px; }
dt { color: var(--muted); } dd { margin: 0; }
.error { color: var(--bad); font-size: 13px; margin: 0; white-space: pre-wrap; word-break: break-word; }
.samples { display: grid; grid-template-columns: repeat(2, 1fr); gap: 8px; }
.samples img { width: 100%; height: 150px; object-fit: contain; border-radius: 6px; cursor: zoom-in;
  background: var(--bg); display: block; }
.placeholder { height: 150px; border: 1px dashed var(--line); border-radius: 6px; display: flex;
  flex-direction: column; align-items: center; justify-content: center; text-align: center;
  color: var(--muted); font-size: 12px; padding: 8px; }
.placeholder strong { font-size: 13px; }
.hidden { display: none; }
dialog { border: 0; padding: 0; background: transparent; max-width: 96vw; max-height: 96vh; }
dialog::backdrop { background: rgba(0, 0, 0, 0.8); }
dialog img { max-width: 94vw; max-height: 88vh; display: block; }
dialog p { color: #fff; margin: 6px 0 0; font-size: 13px; word-break: break-all; }
footer { color: var(--muted); font-size: 12px; padding: 0 28px 28px; }
"""

SCRIPT = """
(function () {
  function copy(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text);
    }
    var area = document.createElement('textarea');
    area.value = text;
    document.body.appendChild(area);
    area.select();
    try { document.execCommand('copy'); } finally { area.remove(); }
    return Promise.resolve();
  }
  var viewer = document.getElementById('viewer');
  document.addEventListener('click', function (event) {
    var button = event.target.closest('button.copy');
    if (button) {
      copy(button.getAttribute('data-copy')).then(function () {
        button.textContent = 'Copied';
        setTimeout(function () { button.textContent = 'Copy'; }, 1500);
      }, function () { button.textContent = 'Select it'; });
      return;
    }
    var image = event.target.closest('img.sample');
    if (image && viewer.showModal) {
      document.getElementById('viewer-img').src = image.src;
      document.getElementById('viewer-caption').textContent = image.alt;
      viewer.showModal();
      return;
    }
    if (event.target === viewer || event.target.closest('#viewer')) { viewer.close(); }
  });
  var filter = document.getElementById('filter');
  filter.addEventListener('input', function () {
    var needle = filter.value.trim().toLowerCase();
    document.querySelectorAll('.card').forEach(function (card) {
      var hay = card.getAttribute('data-search');
      card.classList.toggle('hidden', needle !== '' && hay.indexOf(needle) < 0);
    });
  });
})();
"""


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


CSP = (
    "default-src 'none'; img-src data:; "
    f"style-src {_csp_hash(STYLE)}; script-src {_csp_hash(SCRIPT)}; "
    "base-uri 'none'; form-action 'none'"
)


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _counts(cards: list[Card]) -> str:
    counts: dict[str, int] = {}
    for card in cards:
        counts[card.status] = counts.get(card.status, 0) + 1
    jobs = f"{len(cards)} job{'s' if len(cards) != 1 else ''}"
    return jobs + (": " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) if counts else "")


def _sample_html(card: Card, index: int, sample: Sample) -> str:
    caption = f"{card.name} sample {index + 1}"
    if sample.data_uri:
        return (
            f'<img class="sample" src="{sample.data_uri}" width="{sample.width}" '
            f'height="{sample.height}" alt="{_e(caption)}" title="{_e(sample.url)}">'
        )
    return (
        f'<div class="placeholder" role="img" aria-label="{_e(caption)}: image unavailable">'
        f"<strong>image unavailable</strong><span>{_e(sample.problem)}</span></div>"
    )


def _card_html(card: Card) -> str:
    parts = [
        f'<article class="card st-{_e(card.status)}" data-job="{_e(card.name)}" '
        f'data-status="{_e(card.status)}" '
        f'data-search="{_e((card.name + " " + (card.trigger_word or "") + " " + card.status).lower())}">',
        f'<h3><span class="name">{_e(card.name)}</span>'
        f'<span class="badge {_e(card.status)}">{_e(card.status)}</span></h3>',
    ]
    if card.trigger_word:
        parts.append(
            f'<div class="tw"><code class="trigger">{_e(card.trigger_word)}</code>'
            f'<button type="button" class="copy" data-copy="{_e(card.trigger_word)}" '
            f'aria-label="Copy the trigger word {_e(card.trigger_word)}">Copy</button></div>'
        )
    rows = [
        ("option", card.option),
        ("type", card.finetune_type),
        ("images", card.images),
        ("finished", card.finished_at),
    ]
    shown = [(k, v) for k, v in rows if v not in (None, "")]
    if card.status == "absent":
        shown = [("state", "not applied yet")]
    if shown:
        parts.append("<dl>" + "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in shown) + "</dl>")
    if card.error:
        status = card.error.get("status")
        message = str(card.error.get("message") or "failed")
        prefix = f"{status}: " if status else ""
        parts.append(f'<p class="error">{_e(prefix + message)}</p>')
    if card.samples:
        parts.append(
            '<div class="samples">'
            + "".join(_sample_html(card, i, s) for i, s in enumerate(card.samples))
            + "</div>"
        )
    parts.append("</article>")
    return "".join(parts)


def render_html(sections: list[Section], *, generated_at: str, version: str) -> str:
    """The whole page; a pure function of the cards, so tests need no browser for most checks."""
    all_cards = [c for s in sections for c in s.cards]
    body: list[str] = []
    for section in sections:
        body.append(f'<section data-manifest="{_e(section.manifest)}">')
        body.append(f"<h2>{_e(section.manifest)}</h2>")
        if section.error:
            body.append(f'<p class="error">could not read this manifest: {_e(section.error)}</p>')
        else:
            body.append(f'<div class="counts">{_e(_counts(section.cards))}</div>')
            body.append('<div class="grid">' + "".join(_card_html(c) for c in section.cards) + "</div>")
        body.append("</section>")
    manifests = len(sections)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="runner {_e(version)}">
<title>runner report</title>
<style>{STYLE}</style>
</head>
<body>
<header>
<h1>runner report</h1>
<div class="meta">{manifests} manifest{"s" if manifests != 1 else ""} · {_e(_counts(all_cards))} · generated {_e(generated_at)}</div>
</header>
<div class="toolbar"><input id="filter" type="search" placeholder="Filter by job, trigger word or status" aria-label="Filter cards"></div>
{"".join(body)}
<footer>Self-contained: images are embedded; this page makes no network request.</footer>
<dialog id="viewer" aria-label="Sample"><img id="viewer-img" alt=""><p id="viewer-caption"></p></dialog>
<script>{SCRIPT}</script>
</body>
</html>
"""


def write_report(path: Path, text: str) -> None:
    from runner.atomic import atomic_write_text

    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        os.makedirs(folder, exist_ok=True)
    atomic_write_text(path, text, fsync=False)
    # mkstemp creates 0600; a report is meant to be shared (CI artifact, web server).
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
