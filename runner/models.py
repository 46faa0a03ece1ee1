"""The values that flow through runner: manifest -> validate -> plan -> apply -> lockfile.

The manifest loader produces ``Manifest`` of ``Job``; fingerprinting makes ``Fingerprinted``
(with the ``ImageInfo`` of downscaled images); the planner compares those with ``LockEntry``
and returns a ``Plan``; apply turns plan items into lock entries and reports an
``ApplyResult`` of ``Outcome``. They live here, in the base, so the pure planner and the views
import values, never the I/O modules that read and write them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from runner.diagnostics import Diagnostic
from runner.errors import EXIT_CREDIT, EXIT_INCOMPLETE, EXIT_INPUT, EXIT_INTERRUPTED, EXIT_OK

OPTIONS = ("FluxFinetune", "FluxProFinetune", "FluxKontextFinetune")
FINETUNE_TYPES = ("Auto", "Character", "Product", "Style")
KONTEXT = "FluxKontextFinetune"


def uses_finetune_type(option: str) -> bool:
    """Kontext ignores finetune_type (the API's own words), so it is neither sent nor
    part of the fingerprint: changing it must not retrain anything."""
    return option != KONTEXT


def uses_prompt(option: str) -> bool:
    """The prompt is read only for Kontext; for other options it is ignored, likewise."""
    return option == KONTEXT


@dataclass(frozen=True)
class ApiSettings:
    endpoint: str = "sandbox"
    api_key_env: str = "VIMMERSE_API_KEY"
    requests_per_second: float = 2.0
    burst: int = 4
    max_in_flight: int = 8
    max_uploads: int = 2
    poll_interval: float = 10.0  # seconds
    job_timeout: float = 7200.0  # seconds
    max_submissions: int | None = None
    # The service's request size limit in MB (MiB, as the sandbox's --max-upload-mb
    # counts): validate, plan and apply refuse a job whose request would be larger.
    max_upload_mb: float | None = None


@dataclass(frozen=True)
class Job:
    """One fully resolved finetune request, as it will be sent.

    ``images`` are absolute paths in upload order; for Kontext they alternate start, end.
    ``line`` is the job's line in the manifest, for messages.

    ``webhook_url`` is the value sent, ``${NAME}`` already expanded (None when a variable it
    uses is not set: apply refuses to run then). ``webhook_source`` is the text the manifest
    wrote when it expanded a variable: what every message and view shows, as the value is
    a secret (DESIGN section 3); None when nothing was expanded.
    """

    name: str
    option: str = "FluxFinetune"
    finetune_type: str = "Auto"
    lora_prefix: str = "MYLORA"
    num_iterations: int = 0
    prompt: str | None = None
    images: tuple[Path, ...] = ()
    image_urls: tuple[str, ...] = ()
    webhook_url: str | None = None
    webhook_source: str | None = None
    line: int = 0
    # Where the job is in the manifest (for messages found after loading): its column and
    # key path (``jobs[3]``).
    col: int = 0
    path: str = ""
    # ``upload.max_side``: images whose longer side is larger are downscaled before upload
    # (``runner.manifest.resize``); None sends every image as it is. ``jpeg_quality`` is the
    # quality those downscaled JPEG and WebP images are written at.
    max_side: int | None = None
    jpeg_quality: int = 95

    @property
    def is_kontext(self) -> bool:
        return self.option == KONTEXT


@dataclass(frozen=True)
class Manifest:
    path: Path  # absolute
    api: ApiSettings = field(default_factory=ApiSettings)
    jobs: tuple[Job, ...] = ()
    # The top-level ``variables``: the only environment variables ``${NAME}`` may expand.
    variables: tuple[str, ...] = ()
    # One error per place that uses a declared variable which is not set: validate and
    # plan only warn (they never need the value), apply refuses to send anything.
    unset: tuple[Diagnostic, ...] = ()

    @property
    def folder(self) -> Path:
        return self.path.parent

    def default_lockfile(self) -> Path:
        """``dir/name.yaml`` -> ``dir/name.lock.yaml``."""
        stem = self.path.name
        for suffix in (".yaml", ".yml"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        return self.path.with_name(f"{stem}.lock.yaml")


Status = Literal["pending", "submitting", "uncertain", "training", "succeeded", "failed"]
# Key order in the file: what a reviewer looks at first comes first.
ENTRY_KEYS = (
    "fingerprint",
    "status",
    "asset_id",
    "trigger_word",
    "option",
    "finetune_type",
    "images",
    "results",
    "submitted_at",
    "finished_at",
    "error",
    "api",
    "api_key_env",
    "answer",
    "attempt",
    "idempotency_key",
    "inputs",
)


@dataclass(frozen=True)
class LockEntry:
    fingerprint: str
    status: Status
    asset_id: str | None = None
    trigger_word: str | None = None
    option: str | None = None
    finetune_type: str | None = None
    images: int = 0
    results: tuple[str, ...] = ()
    submitted_at: str | None = None
    finished_at: str | None = None
    error: dict[str, Any] | None = None
    # Where the entry was made: "sandbox" or an endpoint's origin (DESIGN section 4).
    api: str | None = None
    # The variable the key for this entry is read from (runner.engine.trust): a change is shown and
    # needs approval. None in lockfiles written before it existed (read as the default).
    api_key_env: str | None = None
    # The raw text of an answer runner could not read (first 16 KiB), kept for the user.
    answer: str | None = None
    attempt: int = 0
    idempotency_key: str | None = None
    inputs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        # Not dataclasses.asdict: its recursive deep copy cost more than everything else a
        # journal record does (every state change, and every entry at every flush).
        raw = {k: getattr(self, k) for k in ENTRY_KEYS}
        raw["results"] = list(self.results)
        raw["inputs"] = _copy_json(self.inputs)
        if self.error is not None:
            raw["error"] = _copy_json(self.error)
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> LockEntry:
        data = {k: raw[k] for k in ENTRY_KEYS if k in raw}
        data["results"] = tuple(data.get("results") or ())
        data["inputs"] = dict(data.get("inputs") or {})
        return cls(**data)

    def evolve(self, **changes: Any) -> LockEntry:
        return replace(self, **changes)


def _copy_json(value: Any) -> Any:
    """A copy of JSON-shaped data, so a document never shares a dict with an entry."""
    if isinstance(value, dict):
        return {k: _copy_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_copy_json(v) for v in value]
    return value


def utcnow() -> str:
    """Now, as the lockfile writes a moment (``submitted_at``, ``finished_at``): UTC, to the second."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class ImageInfo:
    """An image's stored size (before orientation) and format, from its header."""

    width: int
    height: int
    fmt: str

    @property
    def longer(self) -> int:
        return max(self.width, self.height)

    def to_list(self) -> list[Any]:
        return [self.width, self.height, self.fmt]

    @classmethod
    def from_list(cls, value: Any) -> ImageInfo | None:
        if (
            isinstance(value, list) and len(value) == 3 and all(isinstance(v, int) for v in value[:2])
            and isinstance(value[2], str)
        ):
            return cls(value[0], value[1], value[2])
        return None


@dataclass(frozen=True)
class Fingerprinted:
    """A job with the fingerprint of the request it makes (``runner.state.fingerprint``)."""

    job: Job
    fingerprint: str
    inputs: dict[str, Any]
    # The images sent downscaled (``upload.max_side``): path text -> (digest, header facts).
    resize: dict[str, tuple[str, ImageInfo]] = field(default_factory=dict)


@dataclass
class Outcome:
    """What apply did with one job: a failed job is a value, not an exception."""

    name: str
    action: str
    status: str  # the lock status at the end, or "skipped"
    trigger_word: str | None = None
    message: str | None = None


@dataclass
class ApplyResult:
    """A whole apply; ``exit_code`` is the one place its outcome becomes an exit code."""

    outcomes: list[Outcome] = field(default_factory=list)
    credit_exhausted: bool = False
    interrupted: bool = False
    fatal: str | None = None
    pruned: list[str] = field(default_factory=list)
    # At the end: targeted jobs the service may still be training (paid; they keep running).
    on_service: list[str] = field(default_factory=list)
    # A POST was accepted, or its answer lost: from here on a training may have been paid for.
    sent: bool = False

    @property
    def changed(self) -> bool:
        """Whether this run did anything beyond confirming jobs already done."""
        return bool(self.pruned or self.on_service) or any(o.action != "noop" for o in self.outcomes)

    @property
    def started(self) -> bool:
        """Whether this run may have started a training (a POST accepted or its answer lost)."""
        return self.sent or any(o.action != "noop" and o.status != "skipped" for o in self.outcomes)

    @property
    def exit_code(self) -> int:
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.fatal:
            # Exit 1 promises nothing was submitted (DESIGN section 2); once a training was
            # started, a run stopped by a refused key or an unwritable lockfile is unfinished.
            return EXIT_INCOMPLETE if self.started else EXIT_INPUT
        if self.credit_exhausted:
            return EXIT_CREDIT
        if any(o.status != "succeeded" for o in self.outcomes):
            return EXIT_INCOMPLETE
        return EXIT_OK
