"""The lockfile: read (replaying a leftover journal), validate, and write atomically.

Layout: ``dir/name.lock.yaml`` (the reviewed, committed state), ``dir/name.lock.journal``
(write-ahead JSON lines, fsynced, present only while an apply runs or after a crash) and
``dir/.runner/name.lock.yaml.lock`` (the exclusive lock held for a whole apply).

Every state change is appended to the journal before the request that depends on it is sent;
the lockfile is rewritten from memory every few seconds and at the end, after which the
journal is emptied. A crash therefore loses at most the change in flight, and every reader
replays the journal over the lockfile first.

The lockfile is the only state (DESIGN section 3): the parsed-lockfile cache lives in the
per-user cache folder, sealed (``runner.cache``), never beside the lockfile where a pull
request could commit one. The lockfile, the journal, ``.runner`` and the lock are opened
without following symlinks and must be regular files (folders: a real folder); a journal
record is checked against the lockfile schema's entry, like the lockfile's own entries.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from runner import cache as usercache
from runner.atomic import (
    UnsafeStateFile,
    atomic_write_text,
    fsync_dir,
    open_state,
    open_state_dir,
    read_state,
)
from runner.diagnostics import Diagnostic, format_path
from runner.errors import InputError, LockHeldError, RunnerError
from runner.models import ENTRY_KEYS, LockEntry

LOCK_VERSION = 1
PARSED_CACHE_VERSION = 1
HEADER = "# Written by runner; do not edit.\n"


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
    return usercache.cache_file(lockfile.parent, lockfile.name + ".parsed.json", create=create)


def _unsafe(path: Path, exc: OSError, what: str, fix: str = "remove it") -> InputError:
    """A state file that is a symlink (or not a regular file): refused, never followed."""
    return InputError(
        [Diagnostic(str(path), 0, 0, "", f"{what} {exc.strerror}: refused, since runner never "
                    f"reads or writes its own state through a symlink (nothing was); {fix} and "
                    "run again")]
    )


def _cache_key(raw: bytes) -> str:
    """The lockfile's bytes, and what turned them into a valid document (schema, PyYAML)."""
    from runner.shipped_schemas import load_schema

    h = hashlib.sha256(raw)
    h.update(json.dumps([PARSED_CACHE_VERSION, yaml.__version__, load_schema("lockfile")],
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
    payload = usercache.read_sealed(parsed_cache_path(lockfile), "lockfile")
    if payload is None:
        return None
    try:
        cached = json.loads(payload)
    except (ValueError, RecursionError):
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
        usercache.write_sealed(parsed_cache_path(lockfile, create=True), "lockfile", text.encode("utf-8"))
    except (OSError, TypeError, ValueError, RecursionError):
        pass


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
        raise _unsafe(lockfile, exc, "the lockfile", "replace it with the file itself") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _invalid(lockfile, f"cannot read lockfile: {exc}") from exc
    if raw is not None and text is not None and text.strip():
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


@functools.cache
def _record_validator() -> Any:
    """A journal record: ``{"job": NAME, "entry": ENTRY | null}``, with the lockfile schema's
    own job-name rule and entry definition, so a record is exactly as valid as an entry."""
    from jsonschema import Draft202012Validator

    from runner.shipped_schemas import load_schema

    lock = load_schema("lockfile")
    names = lock["properties"]["jobs"].get("propertyNames", {})
    schema = {
        "$schema": lock.get("$schema", "https://json-schema.org/draft/2020-12/schema"),
        "$defs": lock["$defs"],
        "type": "object",
        "additionalProperties": False,
        "required": ["job", "entry"],
        "properties": {
            "job": {"type": "string", **names},
            "entry": {"oneOf": [{"type": "null"}, {"$ref": "#/$defs/entry"}]},
        },
    }
    return Draft202012Validator(schema)


def _record_problem(record: Any) -> tuple[str, str] | None:
    """(key path, message) of the first way ``record`` is not a valid journal record."""
    validator = _record_validator()
    if validator.is_valid(record):
        return None
    errors = sorted(validator.iter_errors(record), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    error = errors[0]
    # "entry" is a oneOf (null or an entry): name what is wrong inside the entry instead.
    while error.context:
        error = max(error.context, key=lambda e: len(e.absolute_path))
    return format_path(list(error.absolute_path)), error.message[:300]


def replay_journal(path: Path, state: LockState) -> int:
    """Apply journal records over ``state``; returns how many were applied.

    Only the last line can be torn (it was being written when the process died): it is the
    change in flight and is dropped when it is not whole JSON. A line before it that is not
    JSON, or any line that is JSON but not a valid record (checked against the lockfile
    schema's entry), means the file was tampered with: an error naming the line, rather
    than a guess. The journal is read without following a symlink.
    """
    try:
        data = read_state(path)
    except UnsafeStateFile as exc:
        raise _unsafe(path, exc, "the journal") from None
    except OSError as exc:
        raise _invalid(path, f"cannot read journal: {exc}") from exc
    if data is None:
        return 0
    lines = data.split(b"\n")
    last = max((i for i, ln in enumerate(lines) if ln.strip()), default=-1)
    applied = 0
    for index, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:  # includes UnicodeDecodeError
            if index == last:
                break  # torn by a crash mid-append: the change in flight
            raise _invalid(path, f"journal line {index + 1} is damaged: {exc}", line=index + 1) from None
        except RecursionError:
            raise _invalid(path, f"journal line {index + 1} is nested too deeply", line=index + 1) from None
        problem = _record_problem(record)
        if problem is not None:
            where, message = problem
            raise _invalid(
                path, f"journal line {index + 1} is not a valid record: {message}", where, index + 1
            )
        name = record["job"]
        raw = record["entry"]
        entry = None if raw is None else LockEntry.from_dict(raw)
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
        self._flock: _OsLock | None = None
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
        lp = lock_path(self.lockfile)
        self._flock = _OsLock.take(self.lockfile, lp)
        try:
            self.state = read_lockfile(self.lockfile)
            if os.path.lexists(self.journal):
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
            created = not os.path.lexists(self.journal)
            # Never through a symlink (one planted since the read would be refused here).
            self._journal_fd = open_state(self.journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
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
        elif os.path.lexists(self.journal):
            fd = open_state(self.journal, os.O_WRONLY)
            try:
                os.ftruncate(fd, 0)
                os.fsync(fd)
            finally:
                os.close(fd)

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



class _OsLock:
    """The apply's exclusive lock: ``flock`` on ``.runner/NAME.lock`` (what filelock used,
    so older runners still exclude us), with the folder and the file opened without
    following symlinks: a committed ``.runner -> /elsewhere`` or a lock file linked to
    another file is refused, where filelock's ``O_TRUNC`` open emptied the target."""

    def __init__(self, fd: int | None, fallback: Any = None) -> None:
        self.fd = fd
        self._fallback = fallback

    @classmethod
    def take(cls, lockfile: Path, lp: Path) -> _OsLock:
        try:
            folder = open_state_dir(lp.parent, create=True)
        except UnsafeStateFile as exc:
            raise _unsafe(lp.parent, exc, "the folder") from None
        except OSError as exc:
            raise InputError(f"{lockfile}: cannot create {lp.parent}: {exc.strerror or exc}") from exc
        try:
            fd = open_state(lp, os.O_RDWR | os.O_CREAT, 0o644, dir_fd=folder)
        except UnsafeStateFile as exc:
            raise _unsafe(lp, exc, "the lock") from None
        except OSError as exc:
            raise InputError(f"{lockfile}: cannot create the lock {lp}: {exc.strerror or exc}") from exc
        finally:
            os.close(folder)
        try:
            import fcntl
        except ImportError:  # Windows: filelock's msvcrt lock on the same path
            os.close(fd)
            return cls._take_filelock(lockfile, lp)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeldError(
                f"{lockfile}: another runner apply holds the lock ({lp}); "
                "wait for it to finish (only one apply may write a lockfile at a time)"
            ) from None
        except OSError as exc:
            os.close(fd)
            raise InputError(f"{lockfile}: cannot lock {lp}: {exc.strerror or exc}") from exc
        return cls(fd)

    @classmethod
    def _take_filelock(cls, lockfile: Path, lp: Path) -> _OsLock:
        from filelock import FileLock, Timeout

        lock = FileLock(str(lp), timeout=0)
        try:
            lock.acquire()
        except Timeout:
            raise LockHeldError(
                f"{lockfile}: another runner apply holds the lock ({lp}); "
                "wait for it to finish (only one apply may write a lockfile at a time)"
            ) from None
        except OSError as exc:
            raise InputError(f"{lockfile}: cannot create the lock {lp}: {exc.strerror or exc}") from exc
        return cls(None, lock)

    def release(self) -> None:
        if self._fallback is not None:
            self._fallback.release()
            self._fallback = None
        if self.fd is not None:
            fd, self.fd = self.fd, None
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor releases the flock
