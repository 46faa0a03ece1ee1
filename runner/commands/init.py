"""``runner init DIR... [-o MANIFEST] [--force]``: scaffold a valid manifest from folders of images.

The fastest way from "a folder of pictures" to a reviewed plan. Each DIR is either a job
itself (it holds images, or ``start/`` and ``end/`` folders) or a collection whose direct
sub-folders are the jobs, so both ``runner init datasets/sneaker`` and ``runner init
datasets`` do what one expects. A folder with ``start/`` and ``end/`` becomes a
FluxKontextFinetune job paired by file stem; any other folder of images a FluxFinetune job.

Job names and lora_prefixes are derived from folder names (``Red Sneaker`` -> name
``red-sneaker``, prefix ``RED_SNEAKER``) and made unique. The file is validated with the
same loader as ``runner validate`` before it is put in place, and an existing file is
never overwritten without ``--force``: a scaffold must not destroy a reviewed manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from runner.errors import InputError, UsageError
from runner.logsetup import clean
from runner.manifest.values import OLD_PLACEHOLDER, PLACEHOLDER_MARK, PLACEHOLDER_MESSAGE

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})
PREFIX_MAX = 32  # the schema's lora_prefix: [A-Za-z0-9][A-Za-z0-9_]{0,31}
NAME_MAX = 100
SKIPPED_SHOWN = 5  # per job; then "and N more"
# A placeholder ``runner validate`` refuses (values.is_placeholder_prompt) until it is edited.
KONTEXT_PROMPT = f"{PLACEHOLDER_MARK} {OLD_PLACEHOLDER}"
SUGGESTED_MAX_SIDE = 1536  # upload.max_side init writes when it finds larger images


@dataclass(frozen=True)
class Found:
    """A folder that becomes one job."""

    folder: Path
    kontext: bool
    # What the job will not read: sub-folders ("more/") and files that are not images.
    skipped: tuple[str, ...] = ()


def run(args: argparse.Namespace) -> int:
    out = Path(args.output)
    if out.exists() and not args.force:
        raise UsageError(f"{out} already exists; pass --force to overwrite it")
    if out.suffix not in (".yaml", ".yml"):
        raise UsageError(f"{out}: a manifest's name must end in .yaml or .yml")
    found = discover([Path(d) for d in args.dirs])
    large = largest_side(found) > SUGGESTED_MAX_SIDE
    text = render_manifest(found, out, max_side=SUGGESTED_MAX_SIDE if large else None)
    _write_checked(out, text)
    kontext = sum(f.kontext for f in found)
    print(f"wrote {out} ({len(found)} job{'s' if len(found) != 1 else ''})", file=sys.stderr)
    base = Path(os.path.abspath(out)).parent
    for item, name in zip(found, job_names(found), strict=True):
        if item.skipped:
            where = _relative(item.folder, base)
            shown = ", ".join(clean(f"{where}/{s}") for s in item.skipped[:SKIPPED_SHOWN])
            more = len(item.skipped) - SKIPPED_SHOWN
            shown += f" and {more} more" if more > 0 else ""
            print(f"note: {clean(name)}: skipped {shown}", file=sys.stderr)
    if kontext:
        print(
            f"note: edit the prompt of the {kontext} FluxKontextFinetune job(s) before applying "
            f"(the {PLACEHOLDER_MARK} placeholder fails validate until then)",
            file=sys.stderr,
        )
    if large:
        print(
            f"note: some images are larger than {SUGGESTED_MAX_SIDE} px: upload.max_side "
            f"{SUGGESTED_MAX_SIDE} sends them downscaled (trainers work at about 1 megapixel)",
            file=sys.stderr,
        )
    print(f"next: runner validate {out} && runner plan {out}", file=sys.stderr)
    return 0


def largest_side(found: list[Found]) -> int:
    """The longest image side in the jobs' folders, from each header (no pixels decoded)."""
    from runner.manifest.resize import read_info

    longest = 0
    for item in found:
        folders = [item.folder / "start", item.folder / "end"] if item.kontext else [item.folder]
        for folder in folders:
            try:
                paths = sorted(p for p in folder.iterdir() if _is_image(p))
            except OSError:
                continue
            for path in paths:
                try:
                    longest = max(longest, read_info(path).longer)
                except OSError:
                    continue  # validate reports it at its place
    return longest


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.is_file()


def _has_images(folder: Path) -> bool:
    try:
        return any(_is_image(p) for p in folder.iterdir())
    except OSError:
        return False


def _is_kontext(folder: Path) -> bool:
    return _has_images(folder / "start") and _has_images(folder / "end")


def _skipped(folder: Path, keep: frozenset[str] = frozenset()) -> list[str]:
    """What a job reading ``folder`` leaves out, relative to it: sub-folders (not read:
    folders are not recursive) and files that are not images; hidden ones not mentioned."""
    out: list[str] = []
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return out
    for entry in entries:
        if entry.name.startswith(".") or entry.name in keep:
            continue
        if entry.is_dir():
            out.append(f"{entry.name}/ (sub-folders are not read)")
        elif not _is_image(entry):
            out.append(f"{entry.name} (not an image)")
    return out


def _as_job(folder: Path) -> Found | None:
    if _is_kontext(folder):
        skipped = _skipped(folder, frozenset({"start", "end"}))
        for side in ("start", "end"):
            skipped += [f"{side}/{s}" for s in _skipped(folder / side)]
        return Found(folder, kontext=True, skipped=tuple(skipped))
    if _has_images(folder):
        return Found(folder, kontext=False, skipped=tuple(_skipped(folder)))
    return None


def discover(dirs: list[Path]) -> list[Found]:
    """The job folders under ``dirs``, in the order given, each collection's sorted by name."""
    found: list[Found] = []
    seen: set[Path] = set()
    for folder in dirs:
        if not folder.is_dir():
            raise UsageError(f"{folder}: not a folder")
        job = _as_job(folder)
        candidates = (
            [job]
            if job
            else [
                _as_job(sub)
                for sub in sorted(folder.iterdir())
                if sub.is_dir() and not sub.name.startswith(".")
            ]
        )
        jobs = [c for c in candidates if c is not None]
        if not jobs:
            raise UsageError(
                f"{folder}: no images (.jpg .jpeg .png .webp) in it or its direct sub-folders, "
                "and no start/ and end/ folders"
            )
        for j in jobs:
            key = j.folder.resolve()
            if key not in seen:
                seen.add(key)
                found.append(j)
    return found


def job_name(folder_name: str) -> str:
    """A schema-valid job name: lowercase, [a-z0-9._-], starting with a letter or digit."""
    name = re.sub(r"[^a-z0-9._-]+", "-", folder_name.lower()).strip("-._")
    return (name or "job")[:NAME_MAX].rstrip("-._") or "job"


def lora_prefix(folder_name: str) -> str:
    """A schema-valid prefix: uppercase letters, digits and underscores, at most 32."""
    prefix = re.sub(r"[^A-Z0-9]+", "_", folder_name.upper()).strip("_")
    return (prefix or "LORA")[:PREFIX_MAX].rstrip("_") or "LORA"


def _unique(value: str, taken: set[str], limit: int, sep: str) -> str:
    candidate, n = value, 2
    while candidate in taken:
        suffix = f"{sep}{n}"
        candidate = value[: limit - len(suffix)] + suffix
        n += 1
    taken.add(candidate)
    return candidate


def _quote(value: str) -> str:
    """A YAML scalar that round-trips (JSON strings are valid YAML)."""
    import json

    plain = re.fullmatch(r"[A-Za-z0-9_./-]+", value) and not re.fullmatch(
        r"(?i)(y|n|yes|no|on|off|true|false|null|~|[-+.0-9eE_]+)", value
    )
    return value if plain else json.dumps(value, ensure_ascii=False)


def job_names(found: list[Found]) -> list[str]:
    """The job names render_manifest gives ``found``, in order."""
    names: set[str] = set()
    return [_unique(job_name(item.folder.resolve().name), names, NAME_MAX, "-") for item in found]


def render_manifest(found: list[Found], out: Path, *, max_side: int | None = None) -> str:
    """The manifest text: commented so a newcomer can read what each part means.

    ``max_side``: the folders hold images larger than that, so ``upload.max_side`` is set."""
    base = Path(os.path.abspath(out)).parent
    prefixes: set[str] = set()
    lines = [
        "# Scaffolded by `runner init`; edit freely, then: runner validate / plan / apply.",
        "# Editor completion: `runner schema manifest > manifest.schema.json` and start this",
        "# file with  # yaml-language-server: $schema=manifest.schema.json",
        "version: 1",
        "",
        "api:",
        "  endpoint: sandbox          # the embedded local API; https://api.vimmerse.net for real",
        "  api_key_env: VIMMERSE_API_KEY",
        "  poll_interval: 10s          # how often to ask about a running training",
        f"  max_submissions: {max(10, len(found))}        # budget guard: apply refuses plans starting more trainings",
        "",
        "defaults:",
        "  option: FluxFinetune",
        "  finetune_type: Auto",
        "  num_iterations: 0          # 0 = let the service choose",
    ]
    if max_side is not None:
        lines += [
            "  upload:",
            f"    max_side: {max_side}           # larger photos are sent downscaled (trainers work at ~1 MP)",
        ]
    lines += [
        "",
        "jobs:",
    ]
    for item, name in zip(found, job_names(found), strict=True):
        rel = _relative(item.folder, base)
        prefix = _unique(lora_prefix(item.folder.resolve().name), prefixes, PREFIX_MAX, "_")
        lines.append(f"  - name: {_quote(name)}")
        lines.append(f"    lora_prefix: {prefix}")
        if item.kontext:
            lines.append("    option: FluxKontextFinetune")
            lines.append(f"    prompt: {_quote(KONTEXT_PROMPT)}  # validate fails until you write the edit")
            lines.append("    pairs:                   # start/X pairs with end/X (same name, any extension)")
            lines.append(f"      start_dir: {_quote(rel + '/start')}")
            lines.append(f"      end_dir: {_quote(rel + '/end')}")
        else:
            lines.append(f"    images: {_quote(rel)}")
    return "\n".join(lines) + "\n"


def _relative(folder: Path, base: Path) -> str:
    absolute = Path(os.path.abspath(folder))
    try:
        rel = absolute.relative_to(base)
    except ValueError:
        raise UsageError(
            f"{folder} is outside the manifest's folder {base}; image paths must stay inside "
            "it, so write the manifest higher up (-o)"
        ) from None
    return rel.as_posix() or "."


def _write_checked(out: Path, text: str) -> None:
    """Validate the text where it will live (paths are relative to it), then move it in place."""
    from runner.manifest.read import load_manifest

    folder = Path(os.path.abspath(out)).parent
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder for {out}")
    fd, tmp_name = tempfile.mkstemp(prefix=".runner-init.", suffix=".yaml", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        manifest, diags = load_manifest(tmp, environ={})
        # The placeholder prompt is meant to fail validate until edited, not to stop init.
        errors = [d for d in diags if d.severity == "error" and d.message != PLACEHOLDER_MESSAGE]
        if errors or (manifest is None and not any(d.severity == "error" for d in diags)):
            # Folder contents the scaffold cannot express (e.g. a start/ without its end/):
            # say so at the file the user will edit, and write nothing.
            raise InputError([dataclasses.replace(d, file=f"{out} (not written)") for d in errors])
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
