"""The results gallery's page: cards -> one self-contained HTML file, with no I/O but its own.

The file must open anywhere, forever: attached to a CI run, mailed, opened offline years
later. So it is self-contained: every sample is embedded as a ``data:`` URI (see
``runner.views.report.fetch``), the style and script are inline, and a Content-Security-Policy
meta tag (``default-src 'none'``, images only from ``data:``, the inline style and script
allowed by their hashes) makes the browser refuse any request the page might try.

Every value on the page comes from a lockfile or a server, so it is untrusted: the page is
a Jinja template with autoescaping on, and only the style and script (package data, pinned
by their hashes) are inserted unescaped.
"""

from __future__ import annotations

import base64
import hashlib
import os
from datetime import datetime
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from runner.views.report.cards import Card, Sample, Section
from runner.views.report.policy import NOT_FROM_ORIGIN

_TEMPLATES = files("runner.views.report") / "templates"
STYLE = (_TEMPLATES / "report.css").read_text(encoding="utf-8")
SCRIPT = (_TEMPLATES / "report.js").read_text(encoding="utf-8")
PROMPT_SHOWN = 400  # characters of a Kontext prompt on a card; the whole one in the tooltip


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


CSP = (
    "default-src 'none'; img-src data:; "
    f"style-src {_csp_hash(STYLE)}; script-src {_csp_hash(SCRIPT)}; "
    "base-uri 'none'; form-action 'none'"
)


def counts(cards: list[Card]) -> str:
    by_status: dict[str, int] = {}
    for card in cards:
        by_status[card.status] = by_status.get(card.status, 0) + 1
    jobs = f"{len(cards)} job{'s' if len(cards) != 1 else ''}"
    return jobs + (": " + ", ".join(f"{n} {s}" for s, n in sorted(by_status.items())) if by_status else "")


def facts(card: Card) -> list[tuple[str, Any]]:
    """The request values a card lists, in the order a user reads them."""
    prompt = card.prompt
    if prompt and len(prompt) > PROMPT_SHOWN:
        prompt = prompt[: PROMPT_SHOWN - 1] + "…"
    rows = [
        ("option", card.option),
        ("type", card.finetune_type),
        ("lora_prefix", card.lora_prefix),
        ("iterations", "default" if card.num_iterations == 0 else card.num_iterations),
        ("images", card.images),
        ("prompt", prompt),
    ]
    return [(k, v) for k, v in rows if v not in (None, "")]


def search_text(card: Card) -> str:
    words = (card.name, card.trigger_word or "", card.lora_prefix or "", card.status)
    return " ".join(words).lower()


def unusable(status: str) -> str:
    if status == "failed":
        return "not usable: the training failed"
    return f"not ready: {status}"


def error_text(error: dict[str, Any]) -> str:
    status = error.get("status")
    message = str(error.get("message") or "failed")
    return (f"{status}: " if status else "") + message


def when(iso: str) -> Any:
    """A ``<time>`` element: readable UTC text, turned into the reader's local time by the
    page's script, the ISO value in the tooltip. Not a time: the text as it is (escaped)."""
    from markupsafe import Markup, escape

    try:
        parsed = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except (TypeError, ValueError):
        return iso
    text = f"{parsed.day} {parsed:%b %Y, %H:%M}" + (" UTC" if parsed.tzinfo else "")
    value = escape(iso)
    return Markup(f'<time datetime="{value}" title="{value}">{escape(text)}</time>')


def explain(problem: str) -> tuple[str, str]:
    """A missing sample's reason as a person reads it: (headline, what it means or what to do)."""
    p = problem or "not reachable"
    if p.startswith(NOT_FROM_ORIGIN) or p in ("not a valid URL", "not an http(s) URL"):
        return ("Not downloaded", "Its URL is not on the API's host, so runner did not request it "
                "(a lockfile's URLs are untrusted). Trust another host with --allow-host HOST.")
    if p.startswith("timed out"):
        return ("Download too slow", f"The server did not send it in time ({p}). Try again, "
                "or allow more with --image-timeout / --timeout.")
    if p.endswith("is not reachable") or p == "not reachable":
        return ("Server not reachable", f"{p[0].upper()}{p[1:]}: it may be down, or this machine "
                "may have no network. Try again later.")
    if p.startswith("HTTP "):
        code = p.split()[1]
        hint = "The sample may have expired or been deleted." if code in ("403", "404", "410") else "Try again later."
        return ("Download refused", f"The server answered {p}. {hint}")
    if p.startswith("too large"):
        return ("Too large to embed", f"The sample is {p[len('too large'):].strip(' ()') or 'too large'}.")
    if p == "not in the sandbox's state folder":
        return ("No longer in the sandbox", "The local sandbox that made it no longer has it "
                "(its .runner/sandbox folder was cleaned). Apply again to retrain.")
    if p.startswith("the sandbox's training is"):
        return ("Not finished in the sandbox", f"{p[0].upper()}{p[1:]}.")
    if p.startswith("not a readable image"):
        return ("Not an image", "The download is not an image runner can read (PNG, JPEG, WebP or GIF).")
    return ("Image unavailable", f"{p[0].upper()}{p[1:]}.")


def original(sample: Sample) -> str | None:
    """Where the viewer may link to the full-size original: only a URL the report itself was
    allowed to download from (never a dead sandbox port, never a refused host)."""
    return sample.url if sample.source == "http" else None


@cache
def _template() -> Any:
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(
        loader=PackageLoader("runner.views.report", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        counts=counts, facts=facts, search_text=search_text, unusable=unusable,
        error_text=error_text, when=when, explain=explain, original=original,
    )
    return env.get_template("report.html.j2")


def render_html(sections: list[Section], *, generated_at: str, version: str) -> str:
    """The whole page; a pure function of the cards, so tests need no browser for most checks."""
    return str(
        _template().render(
            sections=sections,
            all_cards=[c for s in sections for c in s.cards],
            generated_at=generated_at,
            version=version,
            csp=CSP,
            style=STYLE,
            script=SCRIPT,
        )
    )


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
