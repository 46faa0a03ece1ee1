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

A trigger word is a plain word (``wire.TRIGGER_WORD_PATTERN``; the lockfile schema refuses
any other). Should one get past it anyway, the forms that scripts consume (the single word,
``--format env``, which ``$GITHUB_ENV`` reads line by line) refuse it (exit 1), naming the
job, rather than pass on a newline that would add a ``BASH_ENV=`` line; JSON escapes it as
JSON does, and the table shows it escaped.

A trigger word exists only on the API that made it (DESIGN section 4). So output also
reads one value of the manifest, ``api.endpoint`` (``RUNNER_ENDPOINT`` overrides it; no
images, no validation, no key, no request), and refuses (exit 1) an entry made against
another API: the named job's, or, for the all-jobs forms, any succeeded one's, so a sandbox
trigger word is never shipped as a real one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

from runner.api.endpoint import SANDBOX, accepts, made_at, target_identity
from runner.api.wire import is_trigger_word
from runner.errors import InputError, UsageError
from runner.logsetup import clean, guard, json_safe, safe
from runner.models import ApiSettings, LockEntry, Manifest
from runner.state.lockfile import read_lockfile


def run(args: argparse.Namespace) -> int:
    lockfile = _lockfile(args.manifest, args.lockfile)
    target = manifest_target(args.manifest, os.environ)
    where = f"{target} ({'RUNNER_ENDPOINT' if os.environ.get('RUNNER_ENDPOINT') else 'api.endpoint'})"
    entries = read_lockfile(lockfile).entries
    if args.name is not None:
        entry = entries.get(args.name)
        if entry is None:
            raise InputError(f"{lockfile}: no job named {args.name!r} (has it been applied?)")
        made = made_at(entry, target)
        if not accepts(target, made):
            raise InputError(
                f"{lockfile}: job {args.name!r} was made by {made}, but {args.manifest} now targets "
                f"{where}, where its trigger word does not exist. Run `runner apply {args.manifest}` "
                f"to train it against {target} (`runner plan` shows it as create, reason endpoint)"
            )
        if entry.status != "succeeded" or not entry.trigger_word:
            raise InputError(
                f"{lockfile}: job {args.name!r} is {entry.status}, so it has no trigger word yet"
            )
        words = {args.name: entry.trigger_word}
    else:
        refuse_made_elsewhere(entries, target, lockfile, args.manifest, where)
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


def manifest_target(manifest: str, environ: Mapping[str, str]) -> str:
    """The identity of the API ``manifest`` targets: ``RUNNER_ENDPOINT``, else its
    ``api.endpoint`` (default ``sandbox``), read from the YAML alone: the manifest is not
    validated and its images are not needed."""
    path = Path(os.path.abspath(manifest))
    # With RUNNER_ENDPOINT set the manifest's own value is never used, so not read.
    endpoint = SANDBOX if environ.get("RUNNER_ENDPOINT") else _endpoint_in(Path(manifest))
    return target_identity(Manifest(path=path, api=ApiSettings(endpoint=endpoint)), None, environ)


def _endpoint_in(manifest: Path) -> str:
    from runner.manifest.loader import YamlError, load_file

    where = "api.endpoint"
    try:
        doc = load_file(manifest)
    except YamlError as exc:
        raise InputError(
            f"{manifest}: cannot read {where} to know which API the lockfile must come from: "
            f"{exc.message} (or set RUNNER_ENDPOINT)"
        ) from None
    for problem in doc.problems:
        if problem.path[:2] in ((), ("api",), ("api", "endpoint")):
            raise InputError(f"{manifest}:{problem.line}:{problem.col}: {where}: {problem.message}")
    data = doc.data if isinstance(doc.data, dict) else {}
    api = data.get("api")
    if api is None:
        return ApiSettings().endpoint
    if not isinstance(api, dict):
        raise InputError(f"{manifest}: api: must be a mapping (see `runner validate {manifest}`)")
    endpoint = api.get("endpoint", ApiSettings().endpoint)
    if not isinstance(endpoint, str):
        raise InputError(f"{manifest}: {where}: must be a string (see `runner validate {manifest}`)")
    return endpoint


def refuse_made_elsewhere(
    entries: dict[str, LockEntry], target: str, lockfile: Path, manifest: str, where: str | None = None
) -> None:
    """Refuse the all-jobs forms when any succeeded entry was made against another API.

    ``where``: the target as the message names it (default: ``target``)."""
    elsewhere = {
        name: made_at(entry, target)
        for name, entry in sorted(entries.items())
        if entry.status == "succeeded" and entry.trigger_word and not accepts(target, made_at(entry, target))
    }
    if not elsewhere:
        return
    shown = ", ".join(f"{name!r} (made by {made})" for name, made in list(elsewhere.items())[:5])
    more = f" and {len(elsewhere) - 5} more" if len(elsewhere) > 5 else ""
    raise InputError(
        f"{lockfile}: {len(elsewhere)} succeeded job(s) were made against another API than "
        f"{manifest} now targets, {where or target}: {shown}{more}. Their trigger words do not exist "
        f"there, so none are output. `runner status {manifest}` shows them; run "
        f"`runner apply {manifest}` to train them against {target}"
    )


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
        return json_safe(json.dumps(words, indent=2, ensure_ascii=False)) + "\n"
    if fmt == "env":
        lines: list[str] = []
        seen: dict[str, str] = {}
        for job, word in words.items():
            var = env_name(job)
            if var in seen:
                raise UsageError(
                    safe(f"jobs {seen[var]!r} and {job!r} both become {var} in --format env; rename one")
                )
            seen[var] = job
            lines.append(f"{var}={_plain(job, word, '--format env')}")
        return "".join(line + "\n" for line in lines)
    if single:
        job, word = next(iter(words.items()))
        return _plain(job, word, "the single-word form") + "\n"
    width = max((len(clean(n)) for n in words), default=0)
    return guard("".join(f"{clean(name).ljust(width)}  {clean(word)}\n" for name, word in words.items()))


def _plain(job: str, word: str, where: str) -> str:
    """``word`` as it is, if it is a plain trigger word; else an error naming the job."""
    if is_trigger_word(word):
        return word
    raise InputError(
        safe(
            f"job {job!r}: its trigger word {word!r} is not a plain word (a letter or digit, "
            f"then letters, digits, '_', '.' or '-'), so {where} does not print it: a script "
            "or dotenv reader could take part of it for a command or another variable. "
            "Check the lockfile: runner never writes such a word"
        )
    )
