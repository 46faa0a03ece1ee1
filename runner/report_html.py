"""The results gallery behind ``runner report``: lockfile entries -> cards -> one HTML file.

The file must open anywhere, forever: attached to a CI run, mailed, opened offline years
later. So it is self-contained: every sample is resized with Pillow and embedded as a
``data:`` URI, the style and script are inline, and a Content-Security-Policy meta tag
(``default-src 'none'``, images only from ``data:``, the inline style and script allowed by
their hashes) makes the browser refuse any request the page might try.

Where a sample comes from, in order:

1. Over HTTP, when the URL is https or http to a loopback address (never plain http
   elsewhere), with a short timeout; a host that refuses once is not asked again.
2. For the embedded sandbox's URLs (``http://127.0.0.1:PORT/_sandbox/files/<id>/<name>``,
   whose port died with the apply that used it), from the sandbox's state folder beside
   the manifest (``.runner/sandbox``): the rendered file if it is there, else rendered by
   the sandbox's own ``render_output`` from its database.
3. Otherwise a placeholder card says the image is unavailable and why.

``build_cards`` does the I/O; ``render_html`` is a pure function of the cards.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import os
import re
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from runner.endpoint import is_loopback, sandbox_state_dir
from runner.lockfile import LockEntry

FETCH_TIMEOUT = 3.0  # seconds; a gallery must not hang on a dead host
CONNECT_TIMEOUT = 1.0
MAX_DOWNLOAD = 32 * 1024 * 1024  # bytes; larger answers are not images we want to embed
DEFAULT_IMAGE_SIZE = 512  # longest side of an embedded sample, in pixels
FETCH_WORKERS = 8
SANDBOX_FILE = re.compile(
    r"^http://(?:127\.0\.0\.1|localhost|\[::1\]):\d+/_sandbox/files/([A-Za-z0-9]+)/([A-Za-z0-9_]+\.png)$"
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


# -- fetching ------------------------------------------------------------------------------


def may_fetch(url: str) -> bool:
    """https anywhere, http only to this machine: a report never sends cleartext requests out."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return bool(parts.hostname)
    return parts.scheme == "http" and bool(parts.hostname) and is_loopback(parts.hostname or "")


class Fetcher:
    """Gets sample bytes over HTTP or from a sandbox state folder; thread-safe."""

    def __init__(self, timeout: float = FETCH_TIMEOUT) -> None:
        import httpx

        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout)),
            follow_redirects=False,
            trust_env=False,  # a proxy from the environment must not see loopback URLs
        )
        self._dead_hosts: set[str] = set()
        self._lock = threading.Lock()
        self._stores: dict[Path, Any] = {}

    def close(self) -> None:
        self._client.close()
        with self._lock:
            for store in self._stores.values():
                store.close()
            self._stores.clear()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def http(self, url: str) -> tuple[bytes | None, str]:
        import httpx

        if not may_fetch(url):
            return None, "not fetched: plain http to another machine"
        host = urlsplit(url).netloc
        with self._lock:
            if host in self._dead_hosts:
                return None, f"{host} is not reachable"
        try:
            with self._client.stream("GET", url) as response:
                if response.status_code != 200:
                    return None, f"HTTP {response.status_code}"
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > MAX_DOWNLOAD:
                        return None, "larger than 32 MB"
                    chunks.append(chunk)
                return b"".join(chunks), ""
        except (httpx.ConnectError, httpx.ConnectTimeout):
            with self._lock:
                self._dead_hosts.add(host)
            return None, f"{host} is not reachable"
        except httpx.HTTPError as exc:
            return None, f"download failed ({type(exc).__name__})"

    def sandbox_file(self, url: str, state_dir: Path) -> bytes | None:
        """The file the embedded sandbox served at ``url``, read from its state folder."""
        match = SANDBOX_FILE.match(url)
        if not match or not state_dir.is_dir():
            return None
        asset_id, name = match.groups()
        rendered = state_dir / "outputs" / asset_id / name
        try:
            return rendered.read_bytes()
        except OSError:
            pass
        return self._render(state_dir, asset_id, name)

    def _render(self, state_dir: Path, asset_id: str, name: str) -> bytes | None:
        """Not downloaded during the apply: render it the way the sandbox would have."""
        database = state_dir / "sandbox.sqlite3"
        if not database.exists():
            return None
        from runner.sandbox import training
        from runner.sandbox.store import Store

        if name not in training.OUTPUT_NAMES:
            return None
        try:
            with self._lock:
                store = self._stores.get(state_dir)
                if store is None:
                    store = self._stores[state_dir] = Store(database)
            asset = store.get_asset_by_id(asset_id)
            if asset is None or asset.status != training.SUCCESS:
                return None
            return training.render_output(asset, name, state_dir).read_bytes()
        except Exception:  # a damaged or foreign state folder only costs the image
            return None


def embed(data: bytes, max_side: int) -> tuple[str, int, int]:
    """A resized copy as a ``data:`` URI (JPEG, or PNG when the image has transparency)."""
    from PIL import Image, ImageOps

    with Image.open(io.BytesIO(data)) as opened:
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


def load_sample(url: str, state_dir: Path, fetcher: Fetcher, max_side: int) -> Sample:
    sample = Sample(url)
    data, problem = fetcher.http(url)
    source = "http"
    if data is None:
        data = fetcher.sandbox_file(url, state_dir)
        source = "sandbox state"
    if data is None:
        sample.problem = problem or "not reachable"
        return sample
    try:
        sample.data_uri, sample.width, sample.height = embed(data, max_side)
    except Exception as exc:  # not an image, truncated, a bomb: the card says so
        sample.problem = f"not a readable image ({type(exc).__name__})"
        return sample
    sample.source = source
    return sample


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
                [Sample(url) for url in entry.results],
            )
        )
    return cards


def fill_samples(
    sections: list[Section],
    folders: dict[str, Path],
    max_side: int = DEFAULT_IMAGE_SIZE,
    fetcher_factory: Callable[[], Fetcher] = Fetcher,
) -> None:
    """Download or read every sample, a few at a time, in place."""
    jobs: list[tuple[Card, int, Path]] = []
    for section in sections:
        state_dir = sandbox_state_dir(folders[section.manifest])
        for card in section.cards:
            for i in range(len(card.samples)):
                jobs.append((card, i, state_dir))
    if not jobs:
        return
    with fetcher_factory() as fetcher, ThreadPoolExecutor(FETCH_WORKERS) as pool:
        loaded = pool.map(
            lambda job: load_sample(job[0].samples[job[1]].url, job[2], fetcher, max_side), jobs
        )
        for (card, i, _state), sample in zip(jobs, loaded, strict=True):
            card.samples[i] = sample


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
