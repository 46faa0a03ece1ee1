"""``runner output MANIFEST [NAME] [--format text|json|env]``: trigger words for downstream use.

Like ``terraform output``, it reads only the state (the lockfile, journal replayed), not
the inputs: a deploy job that checked out the manifest and lockfile but not the training
images can still ask for a trigger word. Only succeeded jobs have one to give.

- ``runner output m.yaml red-sneaker`` prints the word alone, for ``$(...)`` in scripts;
  a job that is missing or not succeeded is an error (exit 1), never an empty string
  that a script would happily pass on.
- ``--format json``: a ``{"name": "TRIGGER_WORD"}`` object of succeeded jobs (sorted).
- ``--format env``: ``NAME=WORD`` lines for a dotenv file, the job name upper-cased with
  every character outside ``[A-Z0-9_]`` replaced by ``_`` (``red-sneaker`` ->
  ``RED_SNEAKER``), since ``-`` and ``.`` are not valid in variable names.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from runner.errors import InputError, UsageError
from runner.lockfile import LockEntry, read_lockfile
from runner.models import Manifest


def run(args: argparse.Namespace) -> int:
    lockfile = _lockfile(args.manifest, args.lockfile)
    entries = read_lockfile(lockfile).entries
    if args.name is not None:
        entry = entries.get(args.name)
        if entry is None:
            raise InputError(f"{lockfile}: no job named {args.name!r} (has it been applied?)")
        if entry.status != "succeeded" or not entry.trigger_word:
            raise InputError(
                f"{lockfile}: job {args.name!r} is {entry.status}, so it has no trigger word yet"
            )
        words = {args.name: entry.trigger_word}
    else:
        words = succeeded_words(entries)
    sys.stdout.write(render(words, args.format, single=args.name is not None))
    return 0


def _lockfile(manifest: str, flag: str | None) -> Path:
    """The lockfile named by ``--lockfile`` or beside the manifest; the manifest is not parsed."""
    path = Path(flag) if flag else Manifest(path=Path(os.path.abspath(manifest))).default_lockfile()
    if not flag and not Path(manifest).exists():
        raise InputError(f"{manifest}: no such manifest")
    if not path.exists():
        raise InputError(f"{path}: no lockfile yet; run `runner apply {manifest}` first")
    return path


def succeeded_words(entries: dict[str, LockEntry]) -> dict[str, str]:
    return {
        name: entry.trigger_word
        for name, entry in sorted(entries.items())
        if entry.status == "succeeded" and entry.trigger_word
    }


def env_name(job: str) -> str:
    name = re.sub(r"[^A-Z0-9_]", "_", job.upper())
    return "_" + name if name[:1].isdigit() else name


def render(words: dict[str, str], fmt: str, *, single: bool = False) -> str:
    if fmt == "json":
        return json.dumps(words, indent=2, ensure_ascii=False) + "\n"
    if fmt == "env":
        lines: list[str] = []
        seen: dict[str, str] = {}
        for job, word in words.items():
            var = env_name(job)
            if var in seen:
                raise UsageError(
                    f"jobs {seen[var]!r} and {job!r} both become {var} in --format env; rename one"
                )
            seen[var] = job
            lines.append(f"{var}={_env_value(word)}")
        return "".join(line + "\n" for line in lines)
    if single:
        return next(iter(words.values())) + "\n"
    width = max((len(n) for n in words), default=0)
    return "".join(f"{name.ljust(width)}  {word}\n" for name, word in words.items())


def _env_value(word: str) -> str:
    """Trigger words are plain ([A-Za-z0-9_.-]); anything else is single-quoted for dotenv."""
    if re.fullmatch(r"[A-Za-z0-9_.:/-]*", word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"
