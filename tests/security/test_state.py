"""Only the lockfile is state (issue 12, items 3 and 4): what a pull request commits besides
the reviewed lockfile changes no answer, and runner's own files are never followed through
a symlink.

Each attack is made as a PR author would make it: a commit in a temporary git repository
(force-adding files under the ignored ``.runner/``, committing symlinks), then the real
``runner`` as a subprocess, as CI runs it. The attack must have no effect: ``output`` and
``plan`` answer from the lockfile alone, a file outside the repository stays byte-identical
and none is created there, and where runner refuses it says why and exits 1, never with a
traceback.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from statesupport import SECRET, applied_repo, git, lock_doc, make_repo, pr_commit, run, snapshot

from runner.shipped_schemas import load_schema

pytestmark = pytest.mark.skipif(not hasattr(os, "O_NOFOLLOW"), reason="POSIX symlink semantics")

EVIL = "EVIL_pwned"


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """The per-user cache folder, outside the repository (as ``~/.cache/runner`` is)."""
    return tmp_path / "home-cache"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the applied repository is made once for this module (``applied_repo``)."""
    return tmp_path_factory.mktemp("applied")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the repository with a file an attack must not touch."""
    folder = tmp_path / "outside"
    folder.mkdir()
    (folder / "victim.txt").write_bytes(b"precious data\n")
    return folder


def _old_parsed_key(raw: bytes) -> str:
    """The key runner <= 0.x used for ``.runner/NAME.parsed.json``: public data only."""
    h = hashlib.sha256(raw)
    h.update(json.dumps([1, yaml.__version__, load_schema("lockfile")], sort_keys=True).encode())
    return h.hexdigest()


def _poisoned(lockfile: Path) -> dict[str, object]:
    doc = yaml.safe_load(lockfile.read_text(encoding="utf-8"))
    doc["jobs"]["hero"]["trigger_word"] = EVIL
    return doc


# -- item 3: caches ------------------------------------------------------------------------


def test_committed_parsed_lockfile_cache_changes_no_answer(tmp_path: Path, cache: Path, template: Path) -> None:
    """A force-added ``.runner/runner.lock.yaml.parsed.json`` (its key computable from the
    public lockfile) used to make ``output`` print the attacker's word; now it is never read,
    and an apply keeps the reviewed lockfile byte-identical."""
    repo, word = applied_repo(tmp_path, cache, template)
    lockfile = repo / "runner.lock.yaml"
    planted = repo / ".runner" / "runner.lock.yaml.parsed.json"
    planted.parent.mkdir(exist_ok=True)
    raw = lockfile.read_bytes()
    planted.write_text(json.dumps({"key": _old_parsed_key(raw), "document": _poisoned(lockfile)}))
    pr_commit(repo, ".runner/runner.lock.yaml.parsed.json")

    # CI on a fresh machine (empty cache) and on one that ran before (warm cache) alike.
    for home in (tmp_path / "fresh-cache", cache):
        env_out = run("output", "runner.yaml", "--format", "env", cwd=repo, cache=home)
        assert env_out.code == 0, env_out.text
        assert word in env_out.stdout and EVIL not in env_out.text
        one = run("output", "runner.yaml", "hero", cwd=repo, cache=home)
        assert one.stdout.strip() == word
        status = run("status", "runner.yaml", "--format", "json", cwd=repo, cache=home)
        assert EVIL not in status.text and word in status.stdout
    plan = run("plan", "runner.yaml", "--format", "json", "--detailed-exitcode", cwd=repo, cache=cache)
    assert plan.code == 0, plan.text
    assert json.loads(plan.stdout)["summary"]["noop"] == 1
    applied = run("apply", "runner.yaml", cwd=repo, cache=cache)
    assert applied.code == 0, applied.text
    assert lockfile.read_bytes() == raw
    assert EVIL not in lockfile.read_text()


def test_committed_schema_cache_does_not_skip_validation(tmp_path: Path, cache: Path, template: Path) -> None:
    """``.runner/schema-valid.json`` naming the hash of a schema-invalid manifest (computable
    from the PR's own text) used to let plan skip the JSON Schema; it is not read now."""
    from runner.manifest import schema

    repo, _word = applied_repo(tmp_path, cache, template)
    text = (repo / "runner.yaml").read_text().replace("{endpoint: sandbox}", "{endpoint: sandbox, evil: 1}")
    (repo / "runner.yaml").write_text(text)
    key = schema._valid_key(yaml.safe_load(text), "manifest")
    (repo / ".runner" / "schema-valid.json").write_text(json.dumps({"version": 1, "valid": [key]}))
    pr_commit(repo, "runner.yaml", ".runner/schema-valid.json")
    for command in ("plan", "apply", "status"):
        result = run(command, "runner.yaml", cwd=repo, cache=cache)
        assert result.code == 1, (command, result.text)
        assert "runner.yaml:2:" in result.stderr and "evil" in result.stderr, result.stderr


def test_committed_digest_cache_is_not_read(tmp_path: Path, cache: Path, template: Path) -> None:
    """A ``.runner/digests.json`` claiming the old digest for a changed image (even with the
    checkout's own size, mtime and inode) does not hide the change: the plan replaces."""
    repo, _word = applied_repo(tmp_path, cache, template)
    image = repo / "data" / "hero" / "a.png"
    from support.images import make_image

    old = hashlib.sha256(image.read_bytes()).hexdigest()
    make_image(image, (16, 16), (250, 0, 0))
    pr_commit(repo, "data/hero/a.png")
    st = image.stat()
    # As if the attacker could predict the checkout's stat: the best case for the attack.
    (repo / ".runner" / "digests.json").write_text(json.dumps(
        {"version": 1, "files": {str(image): [st.st_size, st.st_mtime_ns, st.st_ino, old]}}
    ))
    plan = run("plan", "runner.yaml", "--format", "json", cwd=repo, cache=tmp_path / "fresh-cache")
    assert plan.code == 0, plan.text
    assert [j["action"] for j in json.loads(plan.stdout)["jobs"]] == ["replace"]


def test_cache_folder_inside_the_repository_is_refused(tmp_path: Path) -> None:
    """A cache folder configured inside the repository (as a CI cache path might be) is not
    used: a committed key and a correctly sealed poisoned file still change nothing."""
    from runner import cache as usercache
    from runner.state.lockfile import cache_key

    inside = tmp_path / "repo" / ".ci-cache" / "runner"
    repo, word = applied_repo(tmp_path, tmp_path / "elsewhere")
    lockfile = repo / "runner.lock.yaml"
    # The attacker writes the key and a file sealed with it, exactly as runner would.
    key = os.urandom(usercache.KEY_BYTES)
    inside.mkdir(parents=True, mode=0o700)
    (inside / "key").write_bytes(key)
    (inside / "key").chmod(0o600)
    digest = hashlib.sha256(os.path.abspath(repo).encode()).hexdigest()[:32]
    target = inside / digest / "runner.lock.yaml.parsed.json"
    target.parent.mkdir(mode=0o700)
    payload = json.dumps({"key": cache_key(lockfile.read_bytes()), "document": _poisoned(lockfile)}).encode()
    real_target = Path(os.path.realpath(inside)) / digest / target.name
    mac = usercache._mac(key, real_target, "lockfile", payload)
    target.write_bytes(usercache.SEAL_VERSION + b" " + mac.encode() + b"\n" + payload)
    pr_commit(repo, ".ci-cache")
    result = run("output", "runner.yaml", "--format", "json", cwd=repo, cache=inside)
    assert result.code == 0, result.text
    assert json.loads(result.stdout) == {"hero": word}
    assert "caches are off" in result.stderr and "inside the repository" in result.stderr


def test_caches_live_outside_the_manifest_folder(tmp_path: Path, cache: Path, template: Path) -> None:
    """A plan writes nothing beside the manifest; its caches go to the private cache folder."""
    repo, _word = applied_repo(tmp_path, cache, template)
    before = snapshot(repo / ".runner")
    assert not any(name.endswith(".json") for name in before), before
    plan = run("plan", "runner.yaml", cwd=repo, cache=cache)
    assert plan.code == 0, plan.text
    assert snapshot(repo / ".runner") == before
    assert git(repo, "status", "--porcelain", "--ignored") .strip() == "!! .runner/"
    assert (cache / "key").stat().st_mode & 0o777 == 0o600
    assert cache.stat().st_mode & 0o777 == 0o700
    names = {p.name for p in cache.glob("*/*")}
    assert {"digests.json", "schema-valid.json", "runner.lock.yaml.parsed.json"} <= names, names


# -- item 2: journal records -----------------------------------------------------------------


def _record(**entry: object) -> bytes:
    base = {"fingerprint": "sha256:" + "a" * 64, "status": "succeeded", "trigger_word": "HERO_x1"}
    return json.dumps({"job": "hero", "entry": {**base, **entry}}).encode()


BAD_RECORDS: dict[str, bytes] = {
    "status word": _record(status="pwned"),
    "results not a list": _record(results={"url": 1}),
    "error not an object": _record(error="boom"),
    "unknown key": _record(shell="rm -rf /"),
    "bad fingerprint": _record(fingerprint="md5:1"),
    "images negative": _record(images=-5),
    "job name": b'{"job": "../../etc", "entry": null}',
    "job not a string": b'{"job": 7, "entry": null}',
    "no entry key": b'{"job": "hero"}',
    "extra record key": b'{"job": "hero", "entry": null, "x": 1}',
    "a list": b"[1, 2, 3]",
    "a string": b'"hero"',
    "nested 100,000 deep": b"[" * 100_000 + b"]" * 100_000,
    "not UTF-8": b'{"job": "hero", "entry": null, "\xff": 1}',
}


@pytest.mark.parametrize("kind", list(BAD_RECORDS))
def test_crafted_journal_record_in_the_middle(tmp_path: Path, cache: Path, template: Path, kind: str) -> None:
    """A committed journal whose second record is crafted: every reader exits 1 naming the
    file and line; none crashes, none uses the record."""
    repo, word = applied_repo(tmp_path, cache, template)
    journal = repo / "runner.lock.journal"
    good = _record(trigger_word="HERO_fromjournal")
    bad = BAD_RECORDS[kind]
    journal.write_bytes(b"\n".join((good, bad, good)) + b"\n")
    pr_commit(repo, "runner.lock.journal")
    lock_before = (repo / "runner.lock.yaml").read_bytes()
    commands = [("status", "runner.yaml"), ("report", "runner.yaml", "-o", str(tmp_path / "r.html"))]
    if kind in ("status word", "nested 100,000 deep", "not UTF-8"):  # every reader, for a few
        commands += [
            ("status", "runner.yaml", "--format", "json"), ("output", "runner.yaml", "--format", "env"),
            ("plan", "runner.yaml"), ("apply", "runner.yaml"),
        ]
    for command in commands:
        result = run(*command, cwd=repo, cache=cache)
        assert result.code == 1, (command, result.text)
        assert "runner.lock.journal:2" in result.stderr, (command, result.stderr)
        assert "HERO_fromjournal" not in result.stdout
    assert (repo / "runner.lock.yaml").read_bytes() == lock_before
    assert not (tmp_path / "r.html").exists()
    del word


@pytest.mark.parametrize("kind", ["status word", "nested 100,000 deep", "unknown key"])
def test_crafted_last_record_is_an_error_too(tmp_path: Path, cache: Path, template: Path, kind: str) -> None:
    """A last line that is whole JSON (so not torn by a crash) but not a valid record is
    tampering, not the change in flight: also refused."""
    repo, _word = applied_repo(tmp_path, cache, template)
    (repo / "runner.lock.journal").write_bytes(_record() + b"\n" + BAD_RECORDS[kind] + b"\n")
    result = run("status", "runner.yaml", cwd=repo, cache=cache)
    assert result.code == 1, result.text
    assert "runner.lock.journal:2" in result.stderr


def test_torn_last_line_is_dropped(tmp_path: Path, cache: Path, template: Path) -> None:
    """A crash mid-append leaves a prefix of a record: dropped, the records before it count."""
    repo, _word = applied_repo(tmp_path, cache, template)
    whole = _record(trigger_word="HERO_journaled")
    (repo / "runner.lock.journal").write_bytes(whole + b"\n" + whole[: len(whole) // 2])
    out = run("output", "runner.yaml", "--format", "json", cwd=repo, cache=cache)
    assert out.code == 0, out.text
    assert json.loads(out.stdout) == {"hero": "HERO_journaled"}
    report = run("report", "runner.yaml", "-o", str(tmp_path / "r.html"), cwd=repo, cache=cache)
    assert report.code == 0, report.text


# -- item 3: symlinks to runner's own files ----------------------------------------------------

COMMANDS = [
    ("apply", "runner.yaml"),
    ("plan", "runner.yaml"),
    ("status", "runner.yaml"),
    ("output", "runner.yaml", "--format", "env"),
]


def _assert_refused(repo: Path, cache: Path, outside: Path, what: str, commands: list[tuple[str, ...]]) -> None:
    before = snapshot(outside)
    for command in commands:
        result = run(*command, cwd=repo, cache=cache)
        assert result.code == 1, (command, result.text)
        assert what in result.stderr and "symlink" in result.stderr, (command, result.stderr)
        assert snapshot(outside) == before, command


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-file", "dangling"])
def test_symlinked_journal(tmp_path: Path, cache: Path, template: Path, outside: Path, dangling: bool) -> None:
    """``runner.lock.journal -> ../outside/victim.txt`` used to be truncated by any apply
    (and a dangling one created outside); now every command refuses it and touches nothing."""
    repo, _word = applied_repo(tmp_path, cache, template)
    target = outside / ("created.txt" if dangling else "victim.txt")
    os.symlink(os.path.relpath(target, repo), repo / "runner.lock.journal")
    pr_commit(repo, "runner.lock.journal")
    _assert_refused(repo, cache, outside, "runner.lock.journal", COMMANDS)
    assert not (outside / "created.txt").exists()
    assert (outside / "victim.txt").read_bytes() == b"precious data\n"


def test_symlinked_journal_before_the_first_apply(tmp_path: Path, cache: Path, outside: Path) -> None:
    """No lockfile yet, a dangling journal link: the first apply creates nothing outside."""
    repo = make_repo(tmp_path)
    os.symlink(os.path.relpath(outside / "created.txt", repo), repo / "runner.lock.journal")
    pr_commit(repo, "runner.lock.journal")
    _assert_refused(repo, cache, outside, "runner.lock.journal", COMMANDS[:3])
    assert not (outside / "created.txt").exists()
    assert not (repo / "runner.lock.yaml").exists()


@pytest.mark.parametrize("dangling", [False, True], ids=["to-a-folder", "dangling"])
def test_symlinked_runner_folder(tmp_path: Path, cache: Path, outside: Path, dangling: bool) -> None:
    """``.runner -> ../outside`` used to make plan write its caches there and apply its lock
    and sandbox database; now plan, apply, status and report refuse it."""
    repo = make_repo(tmp_path)
    target = outside / "made-by-runner" if dangling else outside
    os.symlink(os.path.relpath(target, repo), repo / ".runner")
    pr_commit(repo, ".runner")
    commands = [*COMMANDS[:3], ("report", "runner.yaml", "-o", str(tmp_path / "r.html"))]
    _assert_refused(repo, cache, outside, ".runner", commands)
    assert sorted(p.name for p in outside.iterdir()) == ["victim.txt"]


@pytest.mark.parametrize("inner", ["runner.lock.yaml.lock", "sandbox", "sandbox/sandbox.sqlite3"])
def test_symlink_inside_runner_folder(tmp_path: Path, cache: Path, outside: Path, inner: str) -> None:
    """A real ``.runner`` holding a symlinked lock file (filelock 3.x opened it with
    ``O_TRUNC``, emptying the target; runner now takes its own ``flock`` whatever filelock's
    version), sandbox folder or sandbox database: apply refuses, the target untouched."""
    repo = make_repo(tmp_path)
    link = repo / ".runner" / inner
    link.parent.mkdir(parents=True)
    target = outside if inner == "sandbox" else outside / "victim.txt"
    os.symlink(target, link)
    pr_commit(repo, ".runner")
    _assert_refused(repo, cache, outside, inner.rsplit("/", 1)[-1], [("apply", "runner.yaml")])
    assert (outside / "victim.txt").read_bytes() == b"precious data\n"


def test_symlinked_lockfile_is_not_read(tmp_path: Path, cache: Path, template: Path, outside: Path) -> None:
    """``runner.lock.yaml -> ../outside/other.lock.yaml`` (another project's lockfile on the
    machine) is not read as this one's: every reader refuses it, and the target is untouched."""
    repo, word = applied_repo(tmp_path, cache, template)
    other = outside / "other.lock.yaml"
    other.write_text((repo / "runner.lock.yaml").read_text().replace(word, "HERO_other"))
    (repo / "runner.lock.yaml").unlink()
    os.symlink(os.path.relpath(other, repo), repo / "runner.lock.yaml")
    pr_commit(repo, "runner.lock.yaml")
    _assert_refused(repo, cache, outside, "runner.lock.yaml", COMMANDS)
    assert "HERO_other" in other.read_text()


def test_no_key_in_state(tmp_path: Path, cache: Path, template: Path) -> None:
    """The cache folder, like the lockfile, never holds the API key."""
    repo, _word = applied_repo(tmp_path, cache, template)
    run("plan", "runner.yaml", cwd=repo, cache=cache)
    for path in cache.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert lock_doc(repo / "runner.lock.yaml")["jobs"]["hero"]["status"] == "succeeded"


# -- the cache folder itself (in-process) ------------------------------------------------------


@pytest.fixture
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from runner import cache as usercache

    folder = tmp_path / "cache"
    monkeypatch.setenv("RUNNER_CACHE_DIR", str(folder))
    usercache.reset()
    yield folder
    usercache.reset()


def test_sealed_files_verify_only_as_written(tmp_path: Path, private_cache: Path) -> None:
    """A sealed file reads back; a changed byte, another purpose, a copy at another path or a
    file without a seal is a miss (None), never content."""
    from runner import cache as usercache

    where = usercache.folder_for(tmp_path / "project")
    assert where is not None and where.parent == Path(os.path.realpath(private_cache))
    path = where / "x.json"
    assert usercache.write_sealed(path, "digests", b'{"a": 1}')
    assert usercache.read_sealed(path, "digests") == b'{"a": 1}'
    assert usercache.read_sealed(path, "lockfile") is None
    data = path.read_bytes()
    path.write_bytes(data[:-2] + b"2}")
    assert usercache.read_sealed(path, "digests") is None
    path.write_bytes(data)
    (where / "copy.json").write_bytes(data)
    assert usercache.read_sealed(where / "copy.json", "digests") is None
    (where / "plain.json").write_bytes(b'{"a": 1}\n{"a": 1}')
    assert usercache.read_sealed(where / "plain.json", "digests") is None
    os.symlink(path, where / "link.json")
    assert usercache.read_sealed(where / "link.json", "digests") is None
    assert (private_cache / "key").stat().st_mode & 0o777 == 0o600


def test_a_key_others_could_read_is_replaced(tmp_path: Path, private_cache: Path) -> None:
    """A key file readable by others (or not 32 bytes) is not trusted: files sealed with it
    are misses, and the next write makes a new private key."""
    from runner import cache as usercache

    path = usercache.cache_file(tmp_path / "project", "d.json")
    assert path is not None and usercache.write_sealed(path, "digests", b"{}")
    key = private_cache / "key"
    old = key.read_bytes()
    key.chmod(0o644)
    usercache.reset()
    assert usercache.read_sealed(path, "digests") is None
    assert usercache.write_sealed(path, "digests", b"{}")
    assert key.read_bytes() != old and key.stat().st_mode & 0o777 == 0o600
    assert usercache.read_sealed(path, "digests") == b"{}"


def test_a_cache_folder_others_can_write_is_not_used(tmp_path: Path, private_cache: Path) -> None:
    """A group- or world-writable cache folder (a shared /tmp path in RUNNER_CACHE_DIR) turns
    caches off; so does a per-manifest folder replaced by a symlink."""
    from runner import cache as usercache

    private_cache.mkdir(mode=0o700)
    private_cache.chmod(0o777)
    assert usercache.folder_for(tmp_path / "project") is None
    assert not usercache.write_sealed(private_cache / "x", "digests", b"{}")
    private_cache.chmod(0o700)
    usercache.reset()
    where = usercache.folder_for(tmp_path / "project")
    assert where is not None
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.rmtree(where)
    os.symlink(elsewhere, where)
    assert usercache.folder_for(tmp_path / "project") is None
    assert list(elsewhere.iterdir()) == []
