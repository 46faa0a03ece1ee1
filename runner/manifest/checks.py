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

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner.diagnostics import Diagnostic, Severity, format_path
from runner.manifest.job_files import JobFiles, _Use
from runner.manifest.loader import Document, PathPart
from runner.manifest.values import (
    PLACEHOLDER_MESSAGE,
    clip,
    endpoint_problem,
    is_placeholder_prompt,
    parse_duration,
    url_problem,
    valid_field,
    valid_upload,
)
from runner.models import (
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
_PATH = tuple[PathPart, ...]
_ESCAPES = "path escapes the manifest's folder"
_NUL = "path contains a NUL character"  # no file can have one; os.stat would raise
_ALLOW = " (pass --allow-outside-links to allow it)"




@dataclass
class Checker(JobFiles):
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
        out = {k: v for k, v in defaults.items() if k in INHERITED and valid_field(k, v)}
        upload = valid_upload(defaults.get("upload"))
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
        self.check_option_rules(here, job, merged, inherited_option)

        urls = self.check_urls(here, job.get("image_urls"))
        paths: list[Path] = []
        if kontext:
            paths = self.resolve_pairs(here, job.get("pairs"))
        elif "images" in job:
            paths = self.resolve_images(here, job.get("images"))

        return self.build_job(here, job, defaults, merged, paths, urls)

    def build_job(
        self,
        here: _PATH,
        job: dict[str, Any],
        defaults: dict[str, Any],
        merged: dict[str, Any],
        paths: list[Path],
        urls: list[str],
    ) -> Job | None:
        """The Job as it will be sent, or None when a value it needs is wrong (reported)."""
        option = merged.get("option", "FluxFinetune")
        kontext = option == KONTEXT
        name = job.get("name")
        if not isinstance(name, str) or not all(valid_field(k, merged[k]) for k in merged if k in INHERITED):
            return None
        # ``upload`` merges key by key: a job's jpeg_quality keeps the defaults' max_side.
        upload = {**defaults.get("upload", {}), **valid_upload(job.get("upload"))}
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

    def check_option_rules(
        self, here: _PATH, job: dict[str, Any], merged: dict[str, Any], inherited_option: bool
    ) -> None:
        """What the option (the job's own, or inherited from defaults) allows and needs."""
        option = merged.get("option", "FluxFinetune")
        kontext = option == KONTEXT
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

