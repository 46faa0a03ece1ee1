"""Semantic checks: what JSON Schema cannot say about a manifest, and resolving its jobs.

The schema checks each job on its own; these checks need the whole file, the environment
or the disk: unique names, rules that depend on ``defaults`` (a job may inherit
``option: FluxKontextFinetune``), the endpoint's host, images that must exist and decode,
Kontext pairs matched by stem. They run on data the schema may have rejected, so every
access checks the type first and quietly skips what the schema already reported: the user
sees each problem once.

``Checker.run`` returns the resolved jobs (absolute image paths in upload order); the
caller discards them when any error was found.
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from runner.diagnostics import Diagnostic, Severity, format_path
from runner.manifest import images as imagefiles
from runner.manifest.loader import Document, PathPart
from runner.models import (
    FINETUNE_TYPES,
    KONTEXT,
    OPTIONS,
    ApiSettings,
    Job,
    uses_finetune_type,
    uses_prompt,
)

if TYPE_CHECKING:
    from runner.manifest.read import Template

INHERITED = ("option", "finetune_type", "num_iterations", "lora_prefix", "prompt", "webhook_url")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_PATH = tuple[PathPart, ...]
_ESCAPES = "path escapes the manifest's folder"
_NUL = "path contains a NUL character"  # no file can have one; os.stat would raise
_ALLOW = " (pass --allow-outside-links to allow it)"
MIN_MAX_SIDE = 256  # upload.max_side's minimum in the schema
# ``runner init`` writes a Kontext prompt starting with this: an error until edited.
PLACEHOLDER_MARK = "TODO:"
# What ``runner init`` wrote before it marked the placeholder: still a placeholder.
OLD_PLACEHOLDER = "describe the edit that turns each start image into its end image"
PLACEHOLDER_MESSAGE = "placeholder prompt from runner init: write the edit these pairs teach (e.g. 'turn the car red')"


def is_placeholder_prompt(prompt: str) -> bool:
    text = prompt.strip()
    return text.upper().startswith(PLACEHOLDER_MARK) or text == OLD_PLACEHOLDER


def parse_duration(value: object) -> float | None:
    """``10s``, ``500ms``, ``5m``, ``2h``, ``1h30m`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value >= 0 else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or re.sub(r"\s+", "", _DURATION_PART.sub("", text)):
        return None
    return sum(float(n) * _DURATION_UNITS[unit] for n, unit in parts)


def endpoint_problem(endpoint: str) -> str | None:
    """``sandbox``, any https:// URL, or http:// to loopback only (a key must not go in clear)."""
    if endpoint == "sandbox":
        return None
    try:
        parts = urlsplit(endpoint)
        host = parts.hostname
        _ = parts.port
    except ValueError as exc:
        return f"invalid URL ({exc})"
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        return 'must be "sandbox", an https:// URL, or an http:// URL to this machine'
    if scheme == "https":
        return None
    if host == "localhost" or host.endswith(".localhost"):
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return "http:// is only allowed to this machine (127.0.0.1, localhost, [::1]); use https://"


def url_problem(url: str) -> str | None:
    """None for a well-formed http(s) URL with a host."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port
    except ValueError as exc:
        return f"invalid URL ({exc})"
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not host:
        return "URL has no host"
    return None


@dataclass
class _Use:
    """One place image files are used (an ``images`` entry, a pair's half), for placing
    their problems; one per entry, not per file, as a folder may hold thousands."""

    paths: list[Path]
    where: _PATH
    shown: str | None  # None: name it relative to the manifest, computed only if reported


@dataclass
class Checker:
    """Runs the semantic checks on one manifest's data and collects Diagnostics."""

    file: str
    folder: Path
    doc: Document
    check_images: bool = True
    # Filled with the stat of every file that passed its check, for fingerprinting to reuse.
    stats: dict[str, os.stat_result] | None = None
    # ``webhook_url`` values that held ``${`` (manifest.Template), by path: the data keeps
    # their source text; the URL check looks at the value and names only the source.
    templates: dict[_PATH, Template] = field(default_factory=dict)
    diagnostics: list[Diagnostic] = field(default_factory=list)
    _uses: list[_Use] = field(default_factory=list)

    def report(
        self, path: _PATH, message: str, *, severity: Severity = "error", at_key: bool = False
    ) -> None:
        line, col = self.doc.position(path, key=at_key)
        self.diagnostics.append(
            Diagnostic(self.file, line, col, format_path(list(path)), clip(message), severity)
        )

    # -- the whole document --------------------------------------------------------------

    def run(self, data: Any) -> tuple[ApiSettings, list[Job]]:
        if not isinstance(data, dict):
            return ApiSettings(), []
        api = self.check_api(data.get("api"))
        defaults = self.valid_defaults(data.get("defaults"))
        jobs_data = data.get("jobs")
        jobs: list[Job] = []
        if isinstance(jobs_data, list):
            self.check_names(jobs_data)
            self.check_prefixes(jobs_data, defaults)
            for index, job in enumerate(jobs_data):
                if isinstance(job, dict):
                    resolved = self.check_job(index, job, defaults)
                    if resolved is not None:
                        jobs.append(resolved)
        self.check_files()
        return api, jobs

    def check_api(self, api: object) -> ApiSettings:
        if not isinstance(api, dict):
            return ApiSettings()
        values: dict[str, Any] = {}
        endpoint = api.get("endpoint")
        if isinstance(endpoint, str):
            problem = endpoint_problem(endpoint)
            if problem and endpoint.lower().startswith(("http://", "https://")):
                self.report(("api", "endpoint"), problem)
            values["endpoint"] = endpoint
        for key in ("poll_interval", "job_timeout"):
            if key in api:
                seconds = parse_duration(api[key])
                if seconds is not None:
                    values[key] = seconds
        for key, kind in (
            ("api_key_env", str),
            ("requests_per_second", (int, float)),
            ("burst", int),
            ("max_in_flight", int),
            ("max_uploads", int),
            ("max_submissions", int),
            ("max_upload_mb", (int, float)),
        ):
            value = api.get(key)
            if isinstance(value, kind) and not isinstance(value, bool):
                values[key] = float(value) if key in ("requests_per_second", "max_upload_mb") else value
        if not (values.get("max_upload_mb", 1) > 0):
            del values["max_upload_mb"]  # the schema reports it
        return ApiSettings(**values)

    def valid_defaults(self, defaults: object) -> dict[str, Any]:
        """The defaults whose type is right (the schema reports the others)."""
        if not isinstance(defaults, dict):
            return {}
        out = {k: v for k, v in defaults.items() if k in INHERITED and _valid_field(k, v)}
        upload = _valid_upload(defaults.get("upload"))
        if upload:
            out["upload"] = upload
        if isinstance(out.get("webhook_url"), str):
            self.check_webhook(("defaults", "webhook_url"), out["webhook_url"])
        return out

    def check_webhook(self, where: _PATH, text: str) -> None:
        template = self.templates.get(where)
        if template is None:
            problem = url_problem(text)
            # a scheme problem is the schema's to report; the rest (bad host, port) is ours
            if problem and text.lower().startswith(("http://", "https://")):
                self.report(where, problem)
            return
        if template.value is None:
            return  # a variable is not set: a warning here, an error for apply
        problem = url_problem(template.value)
        if problem and template.secret:
            # The value is a secret: name the source, never the value or a piece of it.
            self.report(where, f"{template.source} does not expand to an http(s) URL with a host (its value is not shown)")
        elif problem:
            self.report(where, problem)

    def check_names(self, jobs: list[Any]) -> None:
        first: dict[str, int] = {}
        for index, job in enumerate(jobs):
            name = job.get("name") if isinstance(job, dict) else None
            if not isinstance(name, str):
                continue
            if name in first:
                line, _ = self.doc.position(("jobs", first[name], "name"))
                self.report(
                    ("jobs", index, "name"), f"duplicate job name {name!r} (first used at line {line})"
                )
            else:
                first[name] = index

    def check_prefixes(self, jobs: list[Any], defaults: dict[str, Any]) -> None:
        """Two jobs with the same lora_prefix: a warning (an error under --strict), at the
        second job's lora_prefix (or the job, when it inherits the defaults' prefix)."""
        first: dict[str, tuple[int, str]] = {}
        inherited = defaults.get("lora_prefix")
        for index, job in enumerate(jobs):
            if not isinstance(job, dict):
                continue
            own = "lora_prefix" in job
            prefix = job.get("lora_prefix") if own else inherited
            if not isinstance(prefix, str):
                continue
            name = job.get("name") if isinstance(job.get("name"), str) else f"jobs[{index}]"
            if prefix in first:
                other_index, other = first[prefix]
                line, _ = self.doc.position(("jobs", other_index))
                came = "" if own else " (from defaults)"
                self.report(
                    ("jobs", index, "lora_prefix") if own else ("jobs", index),
                    f"lora_prefix {prefix!r}{came} is also job {other!r}'s (line {line}): "
                    "their trigger words will be hard to tell apart; give each job its own",
                    severity="warning",
                )
            else:
                first[prefix] = (index, str(name))

    # -- one job ----------------------------------------------------------------------------

    def check_job(self, index: int, job: dict[str, Any], defaults: dict[str, Any]) -> Job | None:
        here: _PATH = ("jobs", index)
        merged = {**defaults, **{k: v for k, v in job.items() if k in INHERITED}}
        option = merged.get("option", "FluxFinetune")
        kontext = option == KONTEXT
        inherited_option = "option" not in job and "option" in defaults
        if option not in OPTIONS:
            # The schema reports the option; still check the files so one run shows all.
            if isinstance(job.get("pairs"), list | dict):
                self.resolve_pairs(here, job.get("pairs"))
            elif "images" in job:
                self.resolve_images(here, job.get("images"))
            return None
        if inherited_option and kontext:
            # The schema's Kontext rules see only the job's own option; these see defaults too.
            for key in ("images", "image_urls"):
                if key in job:
                    self.report(
                        (*here, key),
                        "not allowed for FluxKontextFinetune jobs (option from defaults); use pairs",
                        at_key=True,
                    )
            if "pairs" not in job:
                self.report(
                    here, "missing required key 'pairs' (option FluxKontextFinetune comes from defaults)"
                )
            if not isinstance(merged.get("prompt"), str):
                self.report(
                    here, "missing required key 'prompt' (option FluxKontextFinetune comes from defaults)"
                )
        if "option" not in job and not kontext and "pairs" in job:
            self.report(
                (*here, "pairs"),
                "pairs are only for FluxKontextFinetune jobs; set option: FluxKontextFinetune",
                at_key=True,
            )
        if not uses_finetune_type(option) and "finetune_type" in job:
            self.report(
                (*here, "finetune_type"),
                "finetune_type is ignored for FluxKontextFinetune jobs",
                severity="warning",
                at_key=True,
            )
        if not uses_prompt(option) and "prompt" in job and option in OPTIONS:
            self.report(
                (*here, "prompt"),
                f"prompt is only used by FluxKontextFinetune jobs; ignored for {option}",
                severity="warning",
                at_key=True,
            )
        prompt = merged.get("prompt")
        if kontext and isinstance(prompt, str) and is_placeholder_prompt(prompt):
            where: _PATH = (*here, "prompt") if "prompt" in job else ("defaults", "prompt")
            if not any(d.message == PLACEHOLDER_MESSAGE and d.path == format_path(list(where)) for d in self.diagnostics):
                self.report(where, PLACEHOLDER_MESSAGE)
        if not kontext and not any(k in job for k in ("images", "image_urls", "pairs")):
            self.report(here, "no training images: set images, image_urls or pairs")
        if isinstance(job.get("webhook_url"), str):
            self.check_webhook((*here, "webhook_url"), job["webhook_url"])

        urls = self.check_urls(here, job.get("image_urls"))
        paths: list[Path] = []
        if kontext:
            paths = self.resolve_pairs(here, job.get("pairs"))
        elif "images" in job:
            paths = self.resolve_images(here, job.get("images"))

        name = job.get("name")
        if not isinstance(name, str) or not all(_valid_field(k, merged[k]) for k in merged if k in INHERITED):
            return None
        # ``upload`` merges key by key: a job's jpeg_quality keeps the defaults' max_side.
        upload = {**defaults.get("upload", {}), **_valid_upload(job.get("upload"))}
        line, col = self.doc.position(here)
        hook = self.templates.get((*here, "webhook_url") if "webhook_url" in job else ("defaults", "webhook_url"))
        webhook_url = merged.get("webhook_url") if hook is None else hook.value
        return Job(
            name=name,
            option=option,
            finetune_type=merged.get("finetune_type", "Auto"),
            lora_prefix=merged.get("lora_prefix", "MYLORA"),
            num_iterations=merged.get("num_iterations", 0),
            prompt=merged.get("prompt") if kontext else None,
            images=tuple(paths),
            image_urls=tuple(urls),
            webhook_url=webhook_url,
            webhook_source=hook.source if hook is not None and hook.secret else None,
            line=line,
            col=col,
            path=format_path(list(here)),
            max_side=upload.get("max_side"),
            jpeg_quality=upload.get("jpeg_quality", Job.jpeg_quality),
        )

    def check_urls(self, here: _PATH, urls: object) -> list[str]:
        if not isinstance(urls, list):
            return []
        out: list[str] = []
        for i, url in enumerate(urls):
            if not isinstance(url, str):
                continue
            problem = url_problem(url)
            # a scheme problem is the schema's to report; the rest (bad host, port) is ours
            if problem and url.lower().startswith(("http://", "https://")):
                self.report((*here, "image_urls", i), problem)
            out.append(url)
        return out

    def resolve_images(self, here: _PATH, spec: object) -> list[Path]:
        entries: list[tuple[_PATH, str]]
        if isinstance(spec, str):
            entries = [((*here, "images"), spec)]
        elif isinstance(spec, list):
            entries = [((*here, "images", i), s) for i, s in enumerate(spec) if isinstance(s, str)]
        else:
            return []
        paths: list[Path] = []
        for where, text in entries:
            if not text:
                continue
            if "\x00" in text:
                self.report(where, f"{_NUL}: {text!r}")
                continue
            absolute = imagefiles.absolute(self.folder, text)
            if not self.inside(absolute):
                self.report(where, f"{_ESCAPES}: {text}")
                continue
            resolved = imagefiles.resolve(
                self.folder, text, path=absolute, stats=self.stats, contain=self._contain
            )
            if resolved.outside is not None:
                self.report_leaves(where, text, resolved.outside)
                continue
            if resolved.error:
                self.report(where, f"{resolved.error}: {text}")
                continue
            # A folder's files and a single file are inside once ``absolute`` is; only a
            # glob's matches can leave (a ``..`` after a wildcard).
            if imagefiles.is_glob(text) and not all(self.inside(p) for p in resolved.paths):
                self.report(where, f"{_ESCAPES}: {text}")
                continue
            single = len(resolved.paths) == 1 and resolved.paths[0] == absolute
            self._uses.append(_Use(resolved.paths, where, text if single else None))
            paths.extend(resolved.paths)
        # Text, not Path: a Path hashes in Python, its (normalised) text in C.
        if len(set(map(str, paths))) == len(paths):
            return paths
        seen: set[Path] = set()
        for path in paths:
            if path in seen:
                self.report(
                    (*here, "images"),
                    f"image listed more than once: {self.shown(path)}",
                    severity="warning",
                    at_key=True,
                )
            seen.add(path)
        return paths

    def resolve_pairs(self, here: _PATH, pairs: object) -> list[Path]:
        """Kontext pairs in upload order: start, end, start, end..."""
        where: _PATH = (*here, "pairs")
        out: list[Path] = []
        if isinstance(pairs, list):
            for i, pair in enumerate(pairs):
                if not isinstance(pair, dict):
                    continue
                start, end = pair.get("start"), pair.get("end")
                if not (isinstance(start, str) and start and isinstance(end, str) and end):
                    continue  # the schema says which half is missing
                for key, text in (("start", start), ("end", end)):
                    path = imagefiles.absolute(self.folder, text)
                    if self.escapes((*where, i, key), text):
                        pass
                    elif not imagefiles.is_supported(path):
                        self.report(
                            (*where, i, key),
                            f"unsupported file type (use {imagefiles.SUPPORTED_TEXT}): {text}",
                        )
                    else:
                        self._uses.append(_Use([path], (*where, i, key), text))
                    out.append(path)
            return out
        if isinstance(pairs, dict):
            start_dir, end_dir = pairs.get("start_dir"), pairs.get("end_dir")
            if not (isinstance(start_dir, str) and start_dir and isinstance(end_dir, str) and end_dir):
                return []
            starts = self._stems((*where, "start_dir"), start_dir)
            ends = self._stems((*where, "end_dir"), end_dir)
            if starts is None or ends is None:
                return []
            for stem in sorted(set(starts) - set(ends)):
                self.report(
                    (*where, "end_dir"),
                    f"no end image for start {self.shown(starts[stem])} "
                    f"(expected {stem}.* in {end_dir})",
                )
            for stem in sorted(set(ends) - set(starts)):
                self.report(
                    (*where, "start_dir"),
                    f"no start image for end {self.shown(ends[stem])} "
                    f"(expected {stem}.* in {start_dir})",
                )
            for stem in sorted(set(starts) & set(ends)):
                for key, path in (("start_dir", starts[stem]), ("end_dir", ends[stem])):
                    self._uses.append(_Use([path], (*where, key), None))
                out.extend((starts[stem], ends[stem]))
        return out

    def _stems(self, where: _PATH, folder_text: str) -> dict[str, Path] | None:
        if self.escapes(where, folder_text):
            return None
        folder = imagefiles.absolute(self.folder, folder_text)
        if self._contain is not None:
            leads = self._contain.leaves(str(folder), os.path.islink(folder))
            if leads is not None:
                self.report_leaves(where, folder_text, leads)
                return None
        if not os.path.isdir(folder):
            reason = "not a folder" if os.path.lexists(folder) else "folder not found"
            self.report(where, f"{reason}: {folder_text}")
            return None
        listed = imagefiles.list_folder(folder)
        if listed.error:
            self.report(where, f"{listed.error}: {folder_text}")
            return None
        stems: dict[str, Path] = {}
        for path in listed.paths:
            stem = path.stem
            if stem in stems:
                self.report(
                    where, f"two images share the stem {stem!r}: {stems[stem].name}, {path.name}"
                )
                continue
            stems[stem] = path
        return stems

    # -- files ---------------------------------------------------------------------------

    def inside(self, path: Path) -> bool:
        """Is ``path`` (absolute, normalised) the manifest's folder or below it?"""
        text, root = str(path), str(self.folder)
        return text == root or text.startswith(self._root_prefix)

    @functools.cached_property
    def _root_prefix(self) -> str:
        return str(self.folder).rstrip(os.sep) + os.sep

    @functools.cached_property
    def _contain(self) -> imagefiles.Containment | None:
        """Symlinks leaving the folder are refused unless ``--allow-outside-links``."""
        return imagefiles.containment(self.folder)

    def report_leaves(self, where: _PATH, shown: str, target: str) -> None:
        self.report(where, f"{imagefiles.LEAVES}: {shown} -> {target}{_ALLOW}")

    def escapes(self, where: _PATH, text: str) -> bool:
        """Report a path that leaves the manifest's folder once ``..`` (or ``~``, or an
        absolute path) is taken into account, lexically. A reviewed manifest must not be
        able to upload files from elsewhere on the machine running it. A symlink inside
        the folder that points out of it is refused too, where the files are resolved
        (``imagefiles.Containment``), unless the command runs with
        ``--allow-outside-links`` (shared dataset mounts).
        A NUL character, which no file name can hold, is reported here too."""
        if "\x00" in text:
            self.report(where, f"{_NUL}: {text!r}")
            return True
        if self.inside(imagefiles.absolute(self.folder, text)):
            return False
        self.report(where, f"{_ESCAPES}: {text}")
        return True

    def check_files(self) -> None:
        """Check every used file once (threaded), then report at each place it is used."""
        if not self._uses:
            return
        outside: dict[Path, str] = {}
        problems = imagefiles.find_problems(
            (p for u in self._uses for p in u.paths),
            decode=self.check_images,
            stats=self.stats,
            contain=self._contain,
            outside=outside,
        )
        if not problems and not outside:
            return
        for use in self._uses:
            for path in use.paths:
                problem = problems.get(path)
                if problem:
                    self.report(use.where, f"{problem}: {use.shown or self.shown(path)}")
                elif path in outside:
                    self.report_leaves(use.where, use.shown or self.shown(path), outside[path])

    def shown(self, path: Path) -> str:
        """How to name a file found through a folder or glob: relative to the manifest."""
        try:
            rel = os.path.relpath(path, self.folder)
        except ValueError:
            return str(path)
        return str(path) if rel.startswith("..") else rel


def clip(message: str, limit: int = 400) -> str:
    """Keep a message that quotes a huge value (a 4 MB path) readable: its head and tail."""
    if len(message) <= limit:
        return message
    cut = len(message) - (limit - 100)
    return f"{message[: limit - 200]}...[{cut} characters]...{message[-100:]}"


def _valid_upload(upload: object) -> dict[str, Any]:
    """The ``upload`` keys whose value is right (the schema reports the others); an explicit
    ``max_side: null`` is kept, so a job can turn off a default's downscaling."""
    if not isinstance(upload, dict):
        return {}
    out: dict[str, Any] = {}
    side = upload.get("max_side")
    if "max_side" in upload and (side is None or (_is_int(side) and int(side) >= MIN_MAX_SIDE)):
        out["max_side"] = side
    quality = upload.get("jpeg_quality")
    if isinstance(quality, int) and not isinstance(quality, bool) and 1 <= quality <= 100:
        out["jpeg_quality"] = quality
    return out


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _valid_field(key: str, value: object) -> bool:
    """Is an inherited field's value of the right kind to build a Job (schema-checked)?"""
    if key == "option":
        return value in OPTIONS
    if key == "finetune_type":
        return value in FINETUNE_TYPES
    if key == "num_iterations":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if key == "lora_prefix":
        return isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_]{0,31}", value) is not None
    if key in ("prompt", "webhook_url"):
        return isinstance(value, str) and bool(value)
    return False
