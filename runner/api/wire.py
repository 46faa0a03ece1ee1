"""The finetune API's wire format: the form built from a job, and reading every answer.

Everything ``runner`` knows about what the service sends and expects lives here, so that
the first contact with the live service (whose answers are mostly undocumented, DESIGN
section 1) is one edit of one module. The client keeps transport, retries and the rate
limit; the fingerprint, the planner, apply and the checks ask this module how a job is
sent.

Reading never guesses. An answer this module cannot read is a value, ``Unreadable``,
carrying the raw text, and callers keep it and stop following the job; it is never read
as success or failure:

- POST 200 -> ``Submitted``: the trigger word searched for in ``TRIGGER_PLACES`` order,
  then the one string anywhere in the answer that starts with ``<lora_prefix>_``. None
  found is still a ``Submitted`` (the service took the job and its money), with the raw
  answer kept for the lockfile. A trigger word is a plain word (``TRIGGER_WORD_PATTERN``):
  it goes into URL paths, dotenv files and CI logs, so anything else in a trigger-word
  field makes the answer unreadable instead of being searched past.
- Status 200 -> ``Status`` or ``Unreadable``: the status word from ``data.status``,
  ``data.processing_status`` or ``data.state``; a non-empty list of ``{"URL"}`` or strings
  is success with those samples; an empty list, or ``progress_percentage`` below 100, is
  still running.
- Error bodies -> one line of text: ``{"message"}``, FastAPI's ``{"detail": [...]}``,
  ``{"detail": "..."}``, or the start of whatever else came.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from runner.models import KONTEXT, Job, uses_finetune_type, uses_prompt

MAX_ANSWER_BYTES = 8 * 1024 * 1024  # larger answers are unreadable: read no further
KEEP_ANSWER_CHARS = 16 * 1024  # what the lockfile keeps of an answer we could not read
MAX_TRIGGER_WORD = 128
# A letter or digit, then letters, digits, ``_``, ``.`` or ``-``: the sandbox's words
# (``PREFIX_xxxxxx``, its prefixes up to 64 characters) and, as far as anyone knows, the
# live service's. Never a path segment of its own (no ``/``, never ``.`` or ``..``), never an
# option (no leading ``-``), nothing a shell, a dotenv reader or a terminal interprets.
# ``(?!\n)$`` rather than ``$``: Python's ``$`` (and so jsonschema's ``pattern``, which
# searches) also matches before a final newline. The lockfile schema has the same pattern.
TRIGGER_WORD_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}(?!\n)$"  # MAX_TRIGGER_WORD at most
_TRIGGER_WORD = re.compile(TRIGGER_WORD_PATTERN)

SUCCESS_WORDS = frozenset({"success", "succeeded", "completed", "complete", "done", "finished"})
FAILURE_WORDS = frozenset(
    {"fail", "failed", "failure", "error", "errored", "cancel", "canceled", "cancelled"}
)
RUNNING_WORDS = frozenset(
    {"queue_bullet", "processing_bullet", "queued", "queue", "processing", "pending",
     "running", "training", "starting", "started", "in_progress", "submitted", "created"}
)
STATUS_FIELDS = ("status", "processing_status", "state")

# ----- the request ---------------------------------------------------------------------


def sent_finetune_type(job: Job) -> str | None:
    return job.finetune_type if uses_finetune_type(job.option) else None


def sent_prompt(job: Job) -> str | None:
    return (job.prompt or "") if uses_prompt(job.option) else None


def image_count(job: Job) -> int:
    """Files when there are files (the API ignores image_urls then), else URLs."""
    return len(job.images) or len(job.image_urls)


def sends_urls(job: Job) -> bool:
    return bool(job.image_urls) and not job.images


Shape = tuple[str, str | None, int, int]


def shape(job: Job) -> Shape:
    """What decides a training's length at the API, as far as we can tell from outside."""
    return (job.option, sent_finetune_type(job), image_count(job), job.num_iterations)


def canonical_request(
    job: Job, digests: Mapping[str, str], sent: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The parts of a job's request that decide what gets trained, in a stable shape
    (hashed into the fingerprint). ``webhook_url`` only says where to report: left out.

    ``sent``: with ``upload.max_side``, each image as it is sent (``resize.sent_id``: the
    digest, with the setting when downscaled). Only when some image is downscaled does the
    request gain ``max_side`` (and ``jpeg_quality``, when a downscaled image is lossy), so
    a job whose images all fit keeps the fingerprint it had without the setting."""
    canon: dict[str, Any] = {
        "option": job.option,
        "lora_prefix": job.lora_prefix,
        "num_iterations": job.num_iterations,
    }
    prompt = sent_prompt(job)
    if prompt is not None:
        canon["prompt"] = prompt
    finetune_type = sent_finetune_type(job)
    if finetune_type is not None:
        canon["finetune_type"] = finetune_type
    if job.images:
        shown = sent if sent is not None else digests
        canon["images"] = [shown[str(p)] for p in job.images]
        changed = [d for d in canon["images"] if "@" in d]
        if changed:
            canon["max_side"] = job.max_side
            if any(d.endswith(f"q{job.jpeg_quality}") for d in changed):
                canon["jpeg_quality"] = job.jpeg_quality
    else:
        canon["image_urls"] = list(job.image_urls)
    return canon


def form_fields(job: Job) -> list[tuple[str, str]]:
    """The form's text fields in a fixed order; ``image_urls`` repeated, one per URL."""
    fields: list[tuple[str, str]] = [
        ("option", job.option),
        ("lora_prefix", job.lora_prefix),
        ("num_iterations", str(job.num_iterations)),
    ]
    finetune_type = sent_finetune_type(job)
    if finetune_type is not None:
        fields.append(("finetune_type", finetune_type))
    if uses_prompt(job.option) and job.prompt is not None:
        fields.append(("prompt", job.prompt))
    if job.webhook_url:
        fields.append(("webhook_url", job.webhook_url))
    if sends_urls(job):
        fields.extend(("image_urls", url) for url in job.image_urls)
    return fields


@dataclass(frozen=True)
class FilePart:
    """One ``image_files`` part: the file on disk and the name it is sent under."""

    filename: str
    path: Path
    mime: str


_MIME = {".png": "image/png", ".webp": "image/webp", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}


def file_parts(job: Job) -> list[FilePart]:
    """Upload names that are unique within the request, so a server that saves uploads
    by name cannot overwrite one with another: Kontext pairs are named by their place
    (``pair000_start_car1.jpg``, ``pair000_end_car1.jpg``, often the same stem in two
    folders); other jobs keep their names unless two collide, then all get their index."""
    paths = job.images
    if job.option == KONTEXT:
        names = [
            f"pair{i // 2:03d}_{'start' if i % 2 == 0 else 'end'}_{p.name}"
            for i, p in enumerate(paths)
        ]
    else:
        names = [p.name for p in paths]
        if len(set(names)) != len(names):
            names = [f"{i:03d}_{p.name}" for i, p in enumerate(paths)]
    return [
        FilePart(name, path, _MIME.get(path.suffix.lower(), "application/octet-stream"))
        for name, path in zip(names, paths, strict=True)
    ]


# ----- answers -------------------------------------------------------------------------


def answer_text(body: bytes) -> str:
    """What the lockfile and messages keep of an answer: its first 16 KiB, as text."""
    return body[: KEEP_ANSWER_CHARS * 4].decode("utf-8", "replace")[:KEEP_ANSWER_CHARS]


def _json(body: bytes) -> tuple[bool, Any]:
    try:
        return True, json.loads(body)
    except (ValueError, RecursionError):
        return False, None


def is_trigger_word(value: Any) -> bool:
    """Whether ``value`` is a trigger word runner accepts (``TRIGGER_WORD_PATTERN``)."""
    return isinstance(value, str) and _TRIGGER_WORD.search(value) is not None


def _strings(value: Any, depth: int = 0) -> Iterator[str]:
    if depth > 64:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, depth + 1)


@dataclass(frozen=True)
class Submitted:
    """A POST 200: the service accepted the job (and charged for it).

    ``trigger_word`` is None when it could not be found; ``raw`` then goes to the lockfile.
    ``found_at`` says where it was found, so a trace teaches us the live shape.
    """

    trigger_word: str | None
    asset_id: str | None
    app_name: str | None
    raw: str
    found_at: str | None = None


TRIGGER_PLACES = ("data.trigger_word", "data.args.trigger_word", "trigger_word", "body", "data")


def read_submit(body: bytes, lora_prefix: str) -> Submitted:
    """Read a POST /finetune 200; see the module docstring for the search order."""
    raw = answer_text(body)
    ok, doc = _json(body) if len(body) <= MAX_ANSWER_BYTES else (False, None)
    data = doc.get("data") if isinstance(doc, dict) else None
    args = data.get("args") if isinstance(data, dict) else None
    asset_id = data.get("id") if isinstance(data, dict) else None
    app_name = data.get("app_name") if isinstance(data, dict) else None
    candidates: list[tuple[str, Any]] = [
        ("data.trigger_word", data.get("trigger_word") if isinstance(data, dict) else None),
        ("data.args.trigger_word", args.get("trigger_word") if isinstance(args, dict) else None),
        ("trigger_word", doc.get("trigger_word") if isinstance(doc, dict) else None),
        ("body", doc if isinstance(doc, str) else None),
        ("data", data if isinstance(data, str) else None),
    ]
    found: tuple[str, str] | None = None
    odd = False  # a trigger-word field holds something that is not a trigger word
    for place, value in candidates:
        if is_trigger_word(value):
            found = (place, value)
            break
        if place in _NAMED_PLACES and isinstance(value, str) and value:
            # Unreadable, not a reason to look further: a decoy elsewhere in the answer
            # must not be taken for the word the field should have held.
            odd = True
            break
    if found is None and not odd:
        prefix = lora_prefix + "_"
        def plausible(s: str) -> bool:
            # Not an echoed upload name (``SNKR_001.jpg``) nor a phrase: a bare word. One
            # that is not a plain word still counts, so that the answer is then ambiguous.
            return (s.startswith(prefix) and not any(c.isspace() for c in s)
                    and not s.lower().endswith(tuple(_MIME)))

        if ok:
            strings = {s for s in _strings(doc) if plausible(s)}
        else:  # a plain-text answer: one word, and nothing else
            text = raw.strip()
            strings = {text} if plausible(text) else set()
        if len(strings) == 1 and is_trigger_word(word := strings.pop()):
            found = ("the one string starting with the lora_prefix", word)
    return Submitted(
        trigger_word=found[1] if found else None,
        asset_id=str(asset_id) if isinstance(asset_id, str | int) and asset_id != "" else None,
        app_name=app_name if isinstance(app_name, str) else None,
        raw=raw,
        found_at=found[0] if found else None,
    )


# Fields that hold nothing but the trigger word (not "body" or "data", which may be text).
_NAMED_PLACES = frozenset({"data.trigger_word", "data.args.trigger_word", "trigger_word"})


@dataclass(frozen=True)
class Status:
    """A status answer we could read."""

    state: Literal["running", "succeeded", "failed"]
    word: str | None = None
    results: tuple[str, ...] = ()
    thumbnails: tuple[str, ...] = ()
    message: str | None = None
    progress: float | None = None


@dataclass(frozen=True)
class Unreadable:
    """An answer we could not read: never success, never failure. ``raw`` is kept."""

    reason: str
    raw: str
    status: int = 200


def _urls(items: Any) -> tuple[list[str], bool]:
    """URLs from a list of ``{"URL": ...}`` or strings; False if any item is neither."""
    out: list[str] = []
    if not isinstance(items, list):
        return out, items is None
    for item in items:
        url = item
        if isinstance(item, dict):
            url = item.get("URL", item.get("url"))
        if not isinstance(url, str) or not url:
            return out, False
        out.append(url)
    return out, True


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number == number else None  # NaN is not a number we can use


def read_status(body: bytes) -> Status | Unreadable:
    """Read a GET /finetune/{trigger_word} 200; see the module docstring."""
    raw = answer_text(body)
    if len(body) > MAX_ANSWER_BYTES:
        return Unreadable(f"the answer is larger than {MAX_ANSWER_BYTES // 2**20} MiB", raw)
    ok, doc = _json(body)
    if not ok:
        return Unreadable("the answer is not JSON", raw)
    data = doc.get("data", doc) if isinstance(doc, dict) else doc
    if isinstance(data, list):
        if not data:
            return Status("running", None)
        urls, clean = _urls(data)
        if not clean:
            return Unreadable("a list that is not of sample URLs", raw)
        return Status("succeeded", None, tuple(urls))
    if not isinstance(data, dict):
        return Unreadable(f"'data' is a {type(data).__name__}, not an object or a list", raw)
    word_raw = next(
        (data[f] for f in STATUS_FIELDS if isinstance(data.get(f), str) and data[f].strip()), None
    )
    word = word_raw.strip().lower() if word_raw is not None else None
    progress = _number(data.get("progress_percentage", data.get("progress")))
    results, results_ok = _urls(data.get("results"))
    thumbs, _ = _urls(data.get("thumbnails"))
    if word in SUCCESS_WORDS:
        if not results_ok:
            return Unreadable("success, but 'results' is not a list of URLs", raw)
        return Status("succeeded", word_raw, tuple(results), tuple(thumbs), None, progress)
    if word in FAILURE_WORDS:
        message = next(
            (str(data[k]) for k in ("message", "error", "detail", "reason") if data.get(k)),
            f"training ended with status {word_raw}",
        )
        return Status("failed", word_raw, (), (), message[:2000], progress)
    if word in RUNNING_WORDS:
        return Status("running", word_raw, (), (), None, progress)
    if word is not None:
        return Unreadable(f"unknown status word {word_raw!r}", raw)
    if progress is not None and progress < 100:
        return Status("running", None, (), (), None, progress)
    return Unreadable("no status field (status, processing_status or state)", raw)


def error_message(body: bytes, reason: str = "") -> str:
    """One line for the user from an error answer, whatever shape it came in."""
    ok, doc = _json(body[:MAX_ANSWER_BYTES])
    if not ok:
        text = " ".join(answer_text(body[:4096]).split())
        return text[:300] or reason
    if isinstance(doc, dict):
        for key in ("message", "error", "detail"):
            value = doc.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()[:1000]
        detail = doc.get("detail")
        if isinstance(detail, list):
            parts = []
            for item in detail[:5]:
                if isinstance(item, dict):
                    loc = ".".join(str(x) for x in item.get("loc", []) if x != "body")
                    parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
            if parts:
                return "; ".join(parts)
        if isinstance(doc.get("error"), dict):
            inner = doc["error"].get("message")
            if isinstance(inner, str) and inner.strip():
                return inner.strip()[:1000]
    if isinstance(doc, str) and doc.strip():
        return doc.strip()[:300]
    return json.dumps(doc)[:300]


def describe_shape(body: bytes) -> str:
    """A short, value-free sketch of an answer's shape (keys and types), for ``doctor``
    and messages: enough to tell dialects apart, nothing that could be a secret."""
    ok, doc = _json(body[:MAX_ANSWER_BYTES])
    if not ok:
        return "not JSON"

    def sketch(value: Any, depth: int) -> str:
        if isinstance(value, dict):
            if depth >= 2:
                return "{...}"
            inner = ", ".join(f"{k}: {sketch(v, depth + 1)}" for k, v in list(value.items())[:12])
            return "{" + inner + "}"
        if isinstance(value, list):
            return "[]" if not value else f"[{sketch(value[0], depth + 1)}, ...]"
        return type(value).__name__.replace("NoneType", "null")

    return sketch(doc, 0)
