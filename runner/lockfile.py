"""The lockfile: read (replaying a leftover journal), validate, and write atomically.

Layout: ``dir/name.lock.yaml`` (the reviewed, committed state), ``dir/name.lock.journal``
(write-ahead JSON lines, fsynced, present only while an apply runs or after a crash) and
``dir/.runner/name.lock.yaml.lock`` (the exclusive lock held for a whole apply).

Every state change is appended to the journal before the request that depends on it is sent;
the lockfile is rewritten from memory every few seconds and at the end, after which the
journal is emptied. A crash therefore loses at most the change in flight, and every reader
replays the journal over the lockfile first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import yaml

from runner.atomic import atomic_write_text, fsync_dir
from runner.diagnostics import Diagnostic, format_path
from runner.errors import InputError, LockHeldError, RunnerError

Status = Literal["pending", "submitting", "uncertain", "training", "succeeded", "failed"]
LOCK_VERSION = 1
PARSED_CACHE_VERSION = 1
HEADER = "# Written by runner; do not edit.\n"
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
    # The variable the key for this entry is read from (runner.trust): a change is shown and
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

        An apply rewrites the lockfile every few seconds, and yaml.dump takes about 3 s for
        10,000 entries (blocking the event loop), so entries are assembled from a template
        with each string scalar rendered once by yaml.dump itself (``_Scalars``); an entry
        with anything the template does not know is dumped by yaml.dump as before.
        """
        if not self.entries or type(self.serial) is not int:
            return self.render_yaml()
        _SCALARS.learn(_entry_strings(self.entries))
        parts = [HEADER, f"version: {LOCK_VERSION}\n", f"serial: {self.serial}\n", "jobs:\n"]
        for name in sorted(self.entries):
            text = _render_entry(name, self.entries[name])
            if text is None:
                one = LockState({name: self.entries[name]}, 0).render_yaml()
                text = one[one.index("\njobs:\n") + len("\njobs:\n") :]
            parts.append(text)
        return "".join(parts)

    def render_yaml(self) -> str:
        body = yaml.dump(
            self.to_document(),
            Dumper=_Dumper,
            sort_keys=False,
            default_flow_style=False,
            allow_unicode=True,
            width=1000,
        )
        return HEADER + body


_Dumper: type[yaml.SafeDumper] = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
_LINE_BREAKS = ("\n", "\r", "\x85", "\u2028", "\u2029")
_SIMPLE_MAX = 500  # far below width=1000: such a scalar is never folded, at any indent here


class _Scalars:
    """String -> its text as a YAML block value, as yaml.dump writes it (None: not simple).

    Unseen strings are rendered together, as one yaml.dump of a list (one ``- text`` line
    each: no line breaks, at most ``_SIMPLE_MAX`` characters); a block sequence item and
    a block mapping value get the same style and quoting. Remembered for the process, so
    an apply's later rewrites render only its new trigger words and timestamps.
    """

    def __init__(self) -> None:
        self.known: dict[str, str | None] = {}

    def learn(self, values: Iterable[str]) -> None:
        todo = [v for v in dict.fromkeys(values) if v not in self.known]
        if not todo:
            return
        if len(self.known) > 500_000:
            self.known.clear()
        simple = [v for v in todo if len(v) <= _SIMPLE_MAX and not any(b in v for b in _LINE_BREAKS)]
        if simple:
            text = yaml.dump(simple, Dumper=_Dumper, default_flow_style=False, allow_unicode=True, width=1000)
            lines = text.split("\n")
            if len(lines) == len(simple) + 1 and all(line.startswith("- ") for line in lines[:-1]):
                self.known.update(zip(simple, (line[2:] for line in lines), strict=False))
        for v in todo:
            self.known.setdefault(v, None)

    def get(self, value: str) -> str | None:
        if value not in self.known:
            self.learn([value])
        return self.known[value]


_SCALARS = _Scalars()


def _entry_strings(entries: dict[str, LockEntry]) -> Iterator[str]:
    for name, e in entries.items():
        yield name
        for value in (e.fingerprint, e.status, e.asset_id, e.trigger_word, e.option,
                      e.finetune_type, e.submitted_at, e.finished_at, e.idempotency_key, e.api,
                      e.api_key_env, e.answer, *e.results):
            if type(value) is str:
                yield value
        for mapping in (e.error, e.inputs):
            if type(mapping) is dict:
                for pair in mapping.items():
                    yield from (x for x in pair if type(x) is str)


def _scalar(value: object) -> str | None:
    if value is None:
        return "null"
    if type(value) is int:
        return str(value)
    if type(value) is str:
        return _SCALARS.get(value)
    return None  # bool, float, anything else: yaml.dump decides


def _key(value: object) -> str | None:
    # A key over 128 characters is not a "simple key" for the emitter; stay well below.
    return _SCALARS.get(value) if type(value) is str and len(value) <= 100 else None


def _render_entry(name: str, entry: LockEntry) -> str | None:
    """One entry's lines under ``jobs:``, or None when yaml.dump must decide."""
    key = _key(name)
    if key is None:
        return None
    out = [f"  {key}:\n"]
    for field_name in ENTRY_KEYS:
        value = getattr(entry, field_name)
        if field_name == "results":
            if not value:
                out.append("    results: []\n")
                continue
            out.append("    results:\n")
            for item in value:
                text = _scalar(item) if type(item) is str else None
                if text is None:
                    return None
                out.append(f"    - {text}\n")
        elif type(value) is dict:
            if not value:
                out.append(f"    {field_name}: {{}}\n")
                continue
            out.append(f"    {field_name}:\n")
            for k, v in value.items():
                k_text, v_text = _key(k), _scalar(v)
                if k_text is None or v_text is None:
                    return None
                out.append(f"      {k_text}: {v_text}\n")
        else:
            text = _scalar(value)
            if text is None:
                return None
            out.append(f"    {field_name}: {text}\n")
    return "".join(out)
_Loader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def journal_path(lockfile: Path) -> Path:
    name = lockfile.name
    stem = name[: -len(".yaml")] if name.endswith(".yaml") else name
    return lockfile.with_name(stem + ".journal")


def lock_path(lockfile: Path) -> Path:
    return lockfile.parent / ".runner" / (lockfile.name + ".lock")


def _invalid(lockfile: Path, message: str, path: str = "", line: int = 0) -> InputError:
    return InputError(
        [Diagnostic(str(lockfile), line, 0, path, message + " (the lockfile was left untouched)")]
    )


def _validate_document(lockfile: Path, doc: Any) -> None:
    from jsonschema import Draft202012Validator

    from runner.schemafiles import load_schema

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


def parsed_cache_path(lockfile: Path) -> Path:
    """Where the parsed, validated content of ``lockfile`` is remembered (see below)."""
    return lock_path(lockfile).with_name(lockfile.name + ".parsed.json")


def _cache_key(raw: bytes) -> str:
    """The lockfile's bytes, and what turned them into a valid document (schema, PyYAML)."""
    from runner.schemafiles import load_schema

    h = hashlib.sha256(raw)
    h.update(json.dumps([PARSED_CACHE_VERSION, yaml.__version__, load_schema("lockfile")],
                        sort_keys=True).encode())
    return h.hexdigest()


def _cached_document(lockfile: Path, key: str) -> Any:
    """The document parsed and validated from these very bytes before, or None.

    Parsing a 10,000-job lockfile (7.5 MB of YAML) and validating it against its schema
    takes about 2 s; a plan that changes nothing pays it on every run. The content hash
    makes the cache exact: any edit, merge or rewrite of the file misses it.
    """
    try:
        cached = json.loads(parsed_cache_path(lockfile).read_bytes())
    except (OSError, ValueError):
        return None
    if isinstance(cached, dict) and cached.get("key") == key and isinstance(cached.get("document"), dict):
        return cached["document"]
    return None


def _remember_document(lockfile: Path, key: str, doc: Any) -> None:
    """Best effort: a read-only checkout or a full disk only loses the speed-up."""
    try:
        text = json.dumps({"key": key, "document": doc}, separators=(",", ":"), ensure_ascii=False)
        if json.loads(text)["document"] != doc:  # not plain JSON (e.g. non-string keys)
            return
        path = parsed_cache_path(lockfile)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, text, fsync=False)
    except (OSError, TypeError, ValueError):
        pass


def read_lockfile(lockfile: Path) -> LockState:
    """Read and validate the lockfile, then replay a leftover journal over it (in memory).

    A lockfile whose exact bytes were read before is taken from ``parsed_cache_path``
    instead of being parsed and validated again.
    """
    state = LockState()
    try:
        raw = lockfile.read_bytes()
        text = raw.decode("utf-8")
    except FileNotFoundError:
        text = None
    except (OSError, UnicodeDecodeError) as exc:
        raise _invalid(lockfile, f"cannot read lockfile: {exc}") from exc
    if text is not None and text.strip():
        key = _cache_key(raw)
        doc = _cached_document(lockfile, key)
        if doc is None:
            doc = _parse_and_validate(lockfile, text)
            _remember_document(lockfile, key, doc)
        state.serial = int(doc.get("serial", 0))
        state.entries = {
            name: LockEntry.from_dict(raw) for name, raw in (doc.get("jobs") or {}).items()
        }
    replay_journal(journal_path(lockfile), state)
    return state


def _refuse_aliases(lockfile: Path, text: str) -> None:
    """runner never writes anchors; a lockfile with aliases is hand-made, and expanding
    them could cost exponential time and memory (billion laughs). Events are linear."""
    if "&" not in text:  # no anchor, so no alias can resolve: the common, free case
        return
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            mark = event.start_mark
            raise _invalid(
                lockfile, "lockfile uses YAML anchors or aliases, which runner never writes",
                line=mark.line + 1 if mark else 0,
            )


def _parse_and_validate(lockfile: Path, text: str) -> Any:
    try:
        _refuse_aliases(lockfile, text)
        doc = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise _invalid(
            lockfile, f"lockfile is not valid YAML: {getattr(exc, 'problem', exc)}",
            line=(mark.line + 1) if mark else 0,
        ) from exc
    _validate_document(lockfile, doc)
    return doc


def replay_journal(path: Path, state: LockState) -> int:
    """Apply journal records over ``state``; returns how many were applied.

    Only the last line can be torn (it was being written when the process died): it is the
    change in flight and is dropped. A damaged line before it means the file was tampered
    with, which is an error rather than a guess.
    """
    try:
        raw_lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise _invalid(path, f"cannot read journal: {exc}") from exc
    lines = [ln for ln in raw_lines]
    applied = 0
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            name = record["job"]
            raw = record["entry"]
            entry = None if raw is None else LockEntry.from_dict(raw)
        except (ValueError, KeyError, TypeError) as exc:
            is_last = all(not rest.strip() for rest in lines[index + 1 :])
            if is_last:
                break
            raise _invalid(path, f"journal line {index + 1} is damaged: {exc}", line=index + 1) from exc
        if entry is None:
            state.entries.pop(name, None)
        else:
            state.entries[name] = entry
        applied += 1
    return applied


class LockfileWriteError(RunnerError):
    """The journal or the lockfile could not be written; the previous lockfile is intact."""


class LockSession:
    """Exclusive, journaled access to one lockfile for the length of an apply."""

    def __init__(self, lockfile: Path) -> None:
        self.lockfile = lockfile
        self.journal = journal_path(lockfile)
        self._flock: Any = None
        self._journal_fd: int | None = None
        self.state = LockState()
        # The jobs as the lockfile on disk holds them (None: unknown, so write on flush).
        self._written_jobs: dict[str, Any] | None = {}
        self.dirty = False

    def __enter__(self) -> LockSession:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def acquire(self) -> None:
        from filelock import FileLock, Timeout

        lp = lock_path(self.lockfile)
        try:
            lp.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{self.lockfile}: cannot create {lp.parent}: {exc.strerror}") from exc
        self._flock = FileLock(str(lp), timeout=0)
        try:
            self._flock.acquire()
        except Timeout:
            raise LockHeldError(
                f"{self.lockfile}: another runner apply holds the lock ({lp}); "
                "wait for it to finish (only one apply may write a lockfile at a time)"
            ) from None
        except OSError as exc:  # after Timeout, which is a TimeoutError (an OSError)
            raise InputError(f"{self.lockfile}: cannot create the lock {lp}: {exc.strerror or exc}") from exc
        try:
            self.state = read_lockfile(self.lockfile)
            if self.journal.exists():
                # Fold a crashed run's journal into the lockfile before anything else happens
                # (the state read above already has it replayed, so the file is behind).
                self._written_jobs = None
                self.dirty = True
                self.flush()
            else:
                self._written_jobs = self._jobs_document()
        except BaseException:
            self._flock.release()
            raise

    def record(self, name: str, entry: LockEntry | None) -> None:
        """Apply one change in memory, then journal it durably before returning.

        Memory first: if an interrupt lands between the two, the final flush still writes
        the change. The caller sends the request that depends on it only after we return.
        Raises ``LockfileWriteError`` when the journal cannot be written (disk full, ...).
        """
        if entry is None:
            self.state.entries.pop(name, None)
        else:
            self.state.entries[name] = entry
        self.dirty = True
        line = json.dumps(
            {"job": name, "entry": None if entry is None else entry.to_dict()},
            separators=(",", ":"),
            ensure_ascii=False,
        )
        try:
            self._append(line.encode("utf-8") + b"\n")
        except OSError as exc:
            raise LockfileWriteError(
                f"{self.journal}: cannot write the journal: {exc.strerror or exc}"
            ) from exc

    def amend(self, entries: dict[str, LockEntry]) -> None:
        """Changes that can be derived again (such as an inferred ``api``): made in memory and
        written by the next flush, not journaled, since a crash loses nothing that matters."""
        if entries:
            self.state.entries.update(entries)
            self.dirty = True

    def _append(self, data: bytes) -> None:
        if self._journal_fd is None:
            created = not self.journal.exists()
            self._journal_fd = os.open(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            if created:
                fsync_dir(self.journal.parent)
        os.write(self._journal_fd, data)
        os.fsync(self._journal_fd)

    def flush(self) -> bool:
        """Rewrite the lockfile if its content changed, then empty the journal.

        Returns whether the file was written. The serial moves only when content changes,
        so a no-op apply leaves the file byte-identical.
        """
        if not self.dirty:
            return False
        jobs = self._jobs_document()
        # Same content as on disk: nothing to write, and the serial stays.
        changed = jobs != self._written_jobs
        if changed:
            candidate = LockState(self.state.entries, self.state.serial + 1)
            text = candidate.render()
            try:
                atomic_write_text(self.lockfile, text)
            except OSError as exc:
                raise LockfileWriteError(
                    f"{self.lockfile}: cannot write the lockfile: {exc.strerror or exc}. The "
                    f"previous lockfile is intact and {self.journal.name} keeps every change; "
                    "the next runner command replays it"
                ) from exc
            self.state.serial += 1
            self._written_jobs = jobs
            # The next plan finds these bytes already parsed and validated.
            _remember_document(self.lockfile, _cache_key(text.encode("utf-8")), candidate.to_document())
        try:
            self._truncate_journal()
        except OSError as exc:
            raise LockfileWriteError(f"{self.journal}: cannot empty the journal: {exc.strerror or exc}") from exc
        self.dirty = False
        return changed

    def _jobs_document(self) -> dict[str, Any]:
        return {name: entry.to_dict() for name, entry in self.state.entries.items()}

    def _truncate_journal(self) -> None:
        if self._journal_fd is not None:
            os.ftruncate(self._journal_fd, 0)
            os.fsync(self._journal_fd)
        elif self.journal.exists():
            with self.journal.open("r+b") as fh:
                fh.truncate(0)
                os.fsync(fh.fileno())

    def close(self) -> None:
        """Final write; the journal is removed only once the lockfile holds everything."""
        try:
            self.flush()
            if self._journal_fd is not None:
                os.close(self._journal_fd)
                self._journal_fd = None
            with contextlib.suppress(FileNotFoundError):
                self.journal.unlink()
            fsync_dir(self.lockfile.parent)
        finally:
            if self._journal_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._journal_fd)
                self._journal_fd = None
            if self._flock is not None:
                self._flock.release()
                self._flock = None

