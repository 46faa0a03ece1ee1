"""Lockfile and journal: atomic, deterministic, replayed by readers, refused when broken."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.errors import InputError, LockHeldError
from runner.models import LockEntry
from runner.state.files import journal_path
from runner.state.lockfile import read_lockfile
from runner.state.session import LockfileWriteError, LockSession

FP = "sha256:" + "c" * 64


def entry(status: str = "training", **kw: object) -> LockEntry:
    return LockEntry(fingerprint=FP, status=status, trigger_word="SNKR_ab12", option="FluxFinetune", images=3, **kw)  # type: ignore[arg-type]


def test_write_is_sorted_and_noop_rewrite_is_byte_identical(tmp_path: Path) -> None:
    """Entries are sorted by name; a session that changes nothing leaves the file untouched."""
    lock = tmp_path / "m.lock.yaml"
    with LockSession(lock) as s:
        s.record("zeta", entry())
        s.record("alpha", entry("succeeded"))
    text = lock.read_text()
    assert text.index("alpha:") < text.index("zeta:")
    assert text.startswith("# Written by runner; do not edit.")
    assert not journal_path(lock).exists()
    mtime = lock.stat().st_mtime_ns
    with LockSession(lock) as s:
        s.record("alpha", entry("succeeded"))  # same value again
    assert lock.read_text() == text
    assert lock.stat().st_mtime_ns == mtime
    state = read_lockfile(lock)
    assert state.serial == 1
    assert state.entries["zeta"].trigger_word == "SNKR_ab12"


def test_reader_replays_a_leftover_journal(tmp_path: Path) -> None:
    """A crash after journaling but before the rewrite loses nothing: readers replay the journal."""
    lock = tmp_path / "m.lock.yaml"
    s = LockSession(lock)
    s.acquire()
    s.record("job", entry("submitting"))
    s.record("job", entry("training"))
    # Simulate a crash: no flush, no close; release the OS lock only.
    s._flock.release()
    assert not lock.exists()
    state = read_lockfile(lock)
    assert state.entries["job"].status == "training"


def test_torn_last_journal_line_is_dropped_but_damage_before_it_is_an_error(tmp_path: Path) -> None:
    """Only the line in flight may be torn; an earlier damaged line is refused."""
    lock = tmp_path / "m.lock.yaml"
    good = json.dumps({"job": "a", "entry": entry().to_dict()})
    journal_path(lock).write_text(good + "\n" + '{"job": "b", "ent')
    assert set(read_lockfile(lock).entries) == {"a"}
    journal_path(lock).write_text('{"job": "b", "ent\n' + good + "\n")
    with pytest.raises(InputError, match="damaged"):
        read_lockfile(lock)


def test_corrupt_lockfile_is_refused_and_left_untouched(tmp_path: Path) -> None:
    """A hand-broken lockfile is an error naming the key, and a session never overwrites it."""
    lock = tmp_path / "m.lock.yaml"
    lock.write_text("version: 1\njobs:\n  a:\n    fingerprint: nope\n    status: succeeded\n")
    before = lock.read_bytes()
    with pytest.raises(InputError, match=r"jobs\.a\.fingerprint"):
        read_lockfile(lock)
    with pytest.raises(InputError):
        LockSession(lock).acquire()
    assert lock.read_bytes() == before
    lock.write_text("version: 1\njobs: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        read_lockfile(lock)


def test_second_session_fails_fast(tmp_path: Path) -> None:
    """Two applies on one lockfile: the second gets LockHeldError at once."""
    lock = tmp_path / "m.lock.yaml"
    with LockSession(lock), pytest.raises(LockHeldError, match="another runner apply"):
        LockSession(lock).acquire()
    with LockSession(lock):  # released after the first closed
        pass


def test_journal_is_folded_in_when_a_session_starts(tmp_path: Path) -> None:
    """A crashed run's journal is written into the lockfile by the next session, then removed."""
    lock = tmp_path / "m.lock.yaml"
    journal_path(lock).write_text(json.dumps({"job": "a", "entry": entry().to_dict()}) + "\n")
    with LockSession(lock):
        assert lock.exists()
    assert not journal_path(lock).exists()
    assert read_lockfile(lock).entries["a"].status == "training"


def test_failed_rewrite_keeps_old_lockfile_and_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the atomic rename fails (disk full), the previous lockfile and the journal survive."""
    lock = tmp_path / "m.lock.yaml"
    with LockSession(lock) as s:
        s.record("a", entry("succeeded"))
    before = lock.read_bytes()
    import runner.atomic

    def boom(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runner.atomic.os, "replace", boom)
    s = LockSession(lock)
    s.acquire()
    s.record("b", entry())
    with pytest.raises(LockfileWriteError, match=r"No space left on device.*previous lockfile is intact"):
        s.close()
    assert lock.read_bytes() == before
    monkeypatch.undo()
    assert set(read_lockfile(lock).entries) == {"a", "b"}
    assert list(tmp_path.glob(".m.lock.yaml.*.tmp")) == []


def test_flush_leaves_a_parsed_cache_equal_to_parsing_the_file(tmp_path: Path) -> None:
    """The parsed cache written at flush is exactly what parsing the new lockfile yields."""
    from runner.state.lockfile import _cached_document, _parse_and_validate, cache_key

    lock = tmp_path / "m.lock.yaml"
    with LockSession(lock) as s:
        s.record("b", entry("succeeded", results=("https://x/a.png?sig=1&t=2", "null", "1e3"),
                            error={"status": 0, "message": "yes: no # really"}))
        s.record("a", entry())
    raw = lock.read_bytes()
    cached = _cached_document(lock, cache_key(raw))
    assert cached is not None
    assert cached == _parse_and_validate(lock, raw.decode())
