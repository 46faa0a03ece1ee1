"""The lockfile: read (replaying a leftover journal), validate, and render.

The lockfile is the only state (DESIGN section 3). Reading it replays the journal
(``runner.state.journal``) over it, in memory; writing it is ``LockSession``'s
(``runner.state.session``), atomically. The parsed-lockfile cache lives in the per-user
cache folder, sealed (``runner.cache``), never beside the lockfile where a pull request
could commit one. The file is opened without following symlinks and must be a regular file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runner import cache as usercache
from runner.atomic import UnsafeStateFile, read_state
from runner.diagnostics import Diagnostic, format_path
from runner.errors import InputError
from runner.models import LockEntry
from runner.state import emitter
from runner.state.files import invalid, journal_path, unsafe
from runner.state.journal import replay_journal

LOCK_VERSION = 1
HEADER = "# Written by runner; do not edit.\n"
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class LockState:
    """The lockfile's content in memory: entries by job name, and the write serial."""

    entries: dict[str, LockEntry] = field(default_factory=dict)
    serial: int = 0

    def to_document(self) -> dict[str, Any]:
        return {
            "version": LOCK_VERSION,
            "serial": self.serial,
            "jobs": {name: self.entries[name].to_dict() for name in sorted(self.entries)},
        }

    def render(self) -> str:
        """The lockfile's text: exactly what ``yaml.dump`` makes of ``to_document()``.

        An apply rewrites the lockfile every few seconds, and yaml.dump takes 3-10 s for
        10,000 entries (blocking the event loop), so entries come from ``runner.state.emitter``'s
        template; an entry with anything the template does not know is dumped by yaml.dump.
        """
        if not self.entries or type(self.serial) is not int:
            return self.render_yaml()
        emitter.learn(self.entries)
        parts = [HEADER, f"version: {LOCK_VERSION}\n", f"serial: {self.serial}\n", "jobs:\n"]
        for name in sorted(self.entries):
            text = emitter.entry_text(name, self.entries[name])
            if text is None:
                one = LockState({name: self.entries[name]}, 0).render_yaml()
                text = one[one.index("\njobs:\n") + len("\njobs:\n") :]
            parts.append(text)
        return "".join(parts)

    def render_yaml(self) -> str:
        body = yaml.dump(
            self.to_document(),
            Dumper=emitter.DUMPER,
            sort_keys=False,
            default_flow_style=False,
            allow_unicode=True,
            width=1000,
        )
        return HEADER + body


def _validate_document(lockfile: Path, doc: Any) -> None:
    from jsonschema import Draft202012Validator

    from runner.shipped_schemas import load_schema

    validator = Draft202012Validator(load_schema("lockfile"))
    errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise InputError(
            [
                Diagnostic(
                    str(lockfile),
                    0,
                    0,
                    format_path(list(e.absolute_path)),
                    f"invalid lockfile: {e.message} (the lockfile was left untouched)",
                )
                for e in errors[:20]
            ]
        )


def parsed_cache_path(lockfile: Path, *, create: bool = False) -> Path | None:
    """Where the parsed, validated content of ``lockfile`` is remembered (see below): in
    the per-user cache folder of the lockfile's folder; None when caches are off."""
    name = usercache.PARSED_LOCKFILE.file.format(name=lockfile.name)
    return usercache.cache_file(lockfile.parent, name, create=create)


def cache_key(raw: bytes) -> str:
    """The lockfile's bytes, and what turned them into a valid document (schema, PyYAML)."""
    from runner.shipped_schemas import load_schema

    h = hashlib.sha256(raw)
    h.update(json.dumps([usercache.PARSED_LOCKFILE.version, yaml.__version__, load_schema("lockfile")],
                        sort_keys=True).encode())
    return h.hexdigest()


def _cached_document(lockfile: Path, key: str) -> Any:
    """The document parsed and validated from these very bytes before, or None.

    Parsing a 10,000-job lockfile (7.5 MB of YAML) and validating it against its schema
    takes about 2 s; a plan that changes nothing pays it on every run. The content hash
    makes the cache exact: any edit, merge or rewrite of the file misses it. The cache file
    is sealed with this user's key and kept outside the repository, so no commit can plant
    one (a document there is trusted as already validated).
    """
    cached = usercache.load(usercache.PARSED_LOCKFILE, parsed_cache_path(lockfile))
    if isinstance(cached, dict) and cached.get("key") == key and isinstance(cached.get("document"), dict):
        return cached["document"]
    return None


def remember_document(lockfile: Path, key: str, doc: Any) -> None:
    """Best effort: a read-only checkout or a full disk only loses the speed-up."""
    record = {"key": key, "document": doc}
    usercache.store(usercache.PARSED_LOCKFILE, parsed_cache_path(lockfile, create=True), record, exact=True)


def read_lockfile(lockfile: Path) -> LockState:
    """Read and validate the lockfile, then replay a leftover journal over it (in memory).

    A lockfile whose exact bytes were read before is taken from ``parsed_cache_path``
    instead of being parsed and validated again.
    """
    state = LockState()
    try:
        raw = read_state(lockfile)
        text = None if raw is None else raw.decode("utf-8")
    except UnsafeStateFile as exc:
        raise unsafe(lockfile, exc, "the lockfile", "replace it with the file itself") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise invalid(lockfile, f"cannot read lockfile: {exc}") from exc
    if raw is not None and text is not None and text.strip():
        key = cache_key(raw)
        doc = _cached_document(lockfile, key)
        if doc is None:
            doc = _parse_and_validate(lockfile, text)
            remember_document(lockfile, key, doc)
        state.serial = int(doc.get("serial", 0))
        state.entries = {
            name: LockEntry.from_dict(raw) for name, raw in (doc.get("jobs") or {}).items()
        }
    replay_journal(journal_path(lockfile), state.entries)
    return state


def _refuse_aliases(lockfile: Path, text: str) -> None:
    """runner never writes anchors; a lockfile with aliases is hand-made, and expanding
    them could cost exponential time and memory (billion laughs). Events are linear."""
    if "&" not in text:  # no anchor, so no alias can resolve: the common, free case
        return
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            mark = event.start_mark
            raise invalid(
                lockfile, "lockfile uses YAML anchors or aliases, which runner never writes",
                line=mark.line + 1 if mark else 0,
            )


def _parse_and_validate(lockfile: Path, text: str) -> Any:
    try:
        _refuse_aliases(lockfile, text)
        doc = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise invalid(
            lockfile, f"lockfile is not valid YAML: {getattr(exc, 'problem', exc)}",
            line=(mark.line + 1) if mark else 0,
        ) from exc
    _validate_document(lockfile, doc)
    return doc


