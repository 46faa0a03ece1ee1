"""Fuzzing at scale: generated manifests and mutated lockfiles never crash, hang or get written.

Extends ``tests/test_validate_fuzz.py`` (whose strategies it reuses: mutations of a valid
manifest, random values) from ``validate`` alone to ``validate`` and ``plan``, adds
vocabulary-aware random YAML, and fuzzes lockfiles taken from a real apply against the
sandbox through ``plan`` and ``status``. Counts: 300 manifests and 100 lockfiles by default
(CI); ``pytest --long`` runs 10,000 and 1,000. Most runs are in-process through
``runner.cli.main``; a sample is replayed through real subprocesses.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.apply import runner as run_cli
from support.apply import sandbox
from support.manifests import dump_yaml, write_manifest
from test_validate_fuzz import base, mutated, values  # noqa: F401  (base is a fixture)

from runner.cli import main

HANG_GUARD = 20.0  # seconds for one command on one input: far above any real figure


def _settings(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
    )


def cli(folder: Path, *argv: str) -> tuple[int, str, str]:
    """``runner ARGV`` in-process from ``folder``; asserts exit 0/1, no traceback, no hang."""
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(folder)
    started = time.monotonic()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--log-format", "json", *argv])
    finally:
        os.chdir(cwd)
    elapsed = time.monotonic() - started
    text = out.getvalue() + err.getvalue()
    assert elapsed < HANG_GUARD, f"{argv} took {elapsed:.1f} s"
    assert code in (0, 1), text[-3000:]
    assert "Traceback" not in text and "internal error" not in text, text[-3000:]
    return code, out.getvalue(), err.getvalue()


# -- manifests ----------------------------------------------------------------------------------

KEYS = ["version", "api", "defaults", "jobs", "endpoint", "api_key_env", "requests_per_second", "burst",
        "max_in_flight", "max_uploads", "poll_interval", "job_timeout", "max_submissions", "name", "option",
        "finetune_type", "num_iterations", "lora_prefix", "prompt", "webhook_url", "images", "image_urls",
        "pairs", "start", "end", "start_dir", "end_dir", "<<"]  # fmt: skip
WORDS = ["sandbox", "FluxFinetune", "FluxKontextFinetune", "FluxProFinetune", "Auto", "Style", "imgs",
         "imgs/*.png", "imgs/**/*.png", "s", "e", "s/x.png", "e/x.png", "../x.png", "/etc/passwd",
         "https://example.com/a.jpg", "http://10.0.0.1", "http://127.0.0.1:1", "10s", "1h30m", "-1s",
         "${HOME}", "${UNSET_VAR_X}", "$${", "a", "A_B", "", " ", "~", "\t", "1e400", "0x10", "null", "yes"]  # fmt: skip

yamlish = st.recursive(
    st.one_of(st.sampled_from(WORDS), st.integers(-5, 2**65), st.none(), st.booleans(), st.floats()),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.sampled_from(KEYS), inner, max_size=6),
    ),
    max_leaves=30,
)


@st.composite
def random_manifest(draw: st.DrawFn) -> str:
    """A random document from the manifest's own words, dumped in a random YAML style."""
    doc = draw(st.dictionaries(st.sampled_from(KEYS[:4]), yamlish, max_size=4))
    if draw(st.booleans()):
        doc["jobs"] = draw(st.lists(st.dictionaries(st.sampled_from(KEYS[13:]), yamlish, max_size=7), max_size=4))
    text = yaml.safe_dump(doc, sort_keys=draw(st.booleans()), default_flow_style=draw(st.sampled_from([False, True, None])),
                          allow_unicode=True, width=draw(st.sampled_from([20, 80, 10_000])))  # fmt: skip
    if draw(st.booleans()):  # anchors and aliases: share a random node
        text = text.replace("jobs:", "jobs: &j", 1) + ("x: *j\n" if draw(st.booleans()) else "")
    return text


def _check_manifest(folder: Path, text: str, kept: list[str]) -> int:
    (folder / "fuzzed.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
    code, out, _ = cli(folder, "validate", "fuzzed.yaml")
    plan_format = random.choice(["text", "json", "markdown"])
    plan_code, plan_out, plan_err = cli(folder, "plan", "fuzzed.yaml", "--format", plan_format)
    assert plan_code == code, (out, plan_err)  # the same checks, the same verdict
    if plan_code == 0 and plan_format == "json":
        assert json.loads(plan_out)["version"] == 1
    if len(kept) < 8 and (code == 0 or random.random() < 0.02):
        kept.append(text)
    return code


def test_generated_manifests_never_crash(
    base: tuple[Path, dict[str, Any]], long_run: bool, capsys: pytest.CaptureFixture[str]  # noqa: F811
) -> None:
    """Mutated valid manifests and random YAML: validate and plan exit 0 or 1, never a traceback or hang."""
    folder, doc = base
    total = 10_000 if long_run else 300
    counts = {"mutated": 0, "random": 0, "valid": 0}
    kept: list[str] = []
    started = time.monotonic()

    @_settings(total * 2 // 3)
    @given(data=st.data())
    def mutants(data: st.DataObject) -> None:
        try:
            text = dump_yaml(data.draw(mutated(doc)))
        except yaml.YAMLError:
            return
        counts["mutated"] += 1
        counts["valid"] += _check_manifest(folder, text, kept) == 0

    @_settings(total - total * 2 // 3)
    @given(text=random_manifest())
    def randoms(text: str) -> None:
        counts["random"] += 1
        counts["valid"] += _check_manifest(folder, text, kept) == 0

    mutants()
    randoms()
    # a sample through the real entry point, as CI runs it
    for text in kept[:5]:
        (folder / "sub.yaml").write_text(text, encoding="utf-8", errors="surrogatepass")
        for command in ("validate", "plan"):
            result = run_cli(command, "sub.yaml", cwd=folder, timeout=60)
            assert result.code in (0, 1) and "Traceback" not in result.stdout + result.stderr, result.stderr
    figures = {**counts, "seconds": round(time.monotonic() - started, 1), "subprocess_runs": len(kept[:5]) * 2}
    with capsys.disabled():
        print(f"\nfuzz figures: manifests {json.dumps(figures)}")
    assert counts["mutated"] + counts["random"] >= total * 0.9  # hypothesis may stop a little early


# -- lockfiles ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_lockfile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """A lockfile written by a real apply: succeeded, failed (training and 422) and training jobs."""
    root = tmp_path_factory.mktemp("lockfuzz")
    with sandbox(root / "state", train_seconds=0.2) as url:
        manifest = write_manifest(root, n_jobs=3, url=url, jobs=[
            {"name": "doomed", "lora_prefix": "FAILX", "images": "data/job001"},
            {"name": "rejected", "lora_prefix": "LONG", "num_iterations": 500000, "images": "data/job002"},
        ], filename="m.yaml")  # fmt: skip
        assert run_cli("apply", manifest.name, cwd=root).code == 3
        doc = yaml.safe_load(manifest.read_text())
        doc["jobs"].append({"name": "late", "lora_prefix": "LATE", "images": "data/job000", "num_iterations": 3000})
        manifest.write_text(yaml.safe_dump(doc, sort_keys=False))
        assert run_cli("apply", manifest.name, "--no-wait", cwd=root).code == 3
    # point the manifest at nothing reachable: plan and status must never need the network
    manifest.write_text(manifest.read_text().replace(url, "http://127.0.0.1:9"))
    raw = (root / "m.lock.yaml").read_bytes()
    assert b"status: training" in raw and b"status: failed" in raw and b"status: succeeded" in raw
    return root, raw


@st.composite
def mutated_lockfile(draw: st.DrawFn, raw: bytes) -> bytes:
    """Byte edits, truncation, or structural edits (keys, values, types) of a real lockfile."""
    kind = draw(st.sampled_from(["bytes", "truncate", "structure", "structure", "lines"]))
    if kind == "truncate":
        return raw[: draw(st.integers(0, len(raw)))]
    if kind == "bytes":
        data = bytearray(raw)
        for _ in range(draw(st.integers(1, 8))):
            at = draw(st.integers(0, len(data)))
            op = draw(st.sampled_from(["flip", "insert", "delete"]))
            if op == "flip" and at < len(data):
                data[at] = draw(st.integers(0, 255))
            elif op == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=4) | st.sampled_from([b":", b"\n", b"- ", b"&a", b"*a", b"'", b"{"]))
            elif at < len(data):
                del data[at : at + draw(st.integers(1, 20))]
        return bytes(data)
    if kind == "lines":
        lines = raw.split(b"\n")
        i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
        lines[i], lines[j] = lines[j], lines[i]
        if draw(st.booleans()):
            lines.insert(i, lines[j])
        return b"\n".join(lines)
    doc = yaml.safe_load(raw)
    new = draw(mutated(doc))
    try:
        return yaml.safe_dump(new, sort_keys=False, allow_unicode=True).encode("utf-8", "surrogatepass")
    except yaml.YAMLError:
        return raw


def _check_lockfile(root: Path, data: bytes, journal: bytes | None, tally: dict[str, int]) -> None:
    lock = root / "m.lock.yaml"
    lock.write_bytes(data)
    journal_path = root / "m.lock.journal"
    if journal is None:
        journal_path.unlink(missing_ok=True)
    else:
        journal_path.write_bytes(journal)
    before = hashlib.sha256(data).hexdigest(), lock.stat().st_mtime_ns
    codes = []
    for argv in (
        ("plan", "m.yaml", "--format", "json"),
        ("plan", "m.yaml"),
        ("status", "m.yaml"),
        ("status", "m.yaml", "--format", "json"),
    ):
        code, out, err = cli(root, *argv)
        codes.append(code)
        if code == 0 and "--format" in argv:
            json.loads(out)
        if code == 1:
            assert "m.lock.yaml" in err or "m.lock.journal" in err, err[-2000:]  # names the damaged file
    assert (hashlib.sha256(lock.read_bytes()).hexdigest(), lock.stat().st_mtime_ns) == before, "lockfile modified"
    if journal is not None:
        assert journal_path.read_bytes() == journal, "journal modified"
    assert len(set(codes)) == 1, f"plan and status disagree on whether the lockfile is usable: {codes}"
    tally["rejected" if codes[0] else "accepted"] += 1


def test_mutated_lockfiles_never_crash_and_are_never_written(
    real_lockfile: tuple[Path, bytes], long_run: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """Damaged lockfiles (and journals): plan and status exit 0 or 1, agree, and leave both files as they were."""
    root, raw = real_lockfile
    total = 1_000 if long_run else 100
    tally = {"accepted": 0, "rejected": 0, "with_journal": 0}
    started = time.monotonic()
    entry = yaml.safe_load(raw)["jobs"]["job-000"]

    @_settings(total)
    @given(data=st.data())
    def fuzz(data: st.DataObject) -> None:
        mutated_bytes = data.draw(mutated_lockfile(raw))
        journal = None
        if data.draw(st.integers(0, 4)) == 0:  # one in five: a leftover journal too
            record = json.dumps({"job": data.draw(st.sampled_from(["job-000", "new-one", ""])),
                                 "entry": data.draw(st.sampled_from([entry, None, {}, {"status": "training"}]))})
            journal = data.draw(st.sampled_from([record + "\n", record[: len(record) // 2], "{}\n" + record + "\n", "\x00\n"])).encode()
            tally["with_journal"] += 1
        _check_lockfile(root, mutated_bytes, journal, tally)

    fuzz()
    with capsys.disabled():
        print(f"\nfuzz figures: lockfiles {json.dumps({**tally, 'seconds': round(time.monotonic() - started, 1)})}")
    assert tally["accepted"] + tally["rejected"] >= total * 0.9
    assert tally["rejected"] > 0 and tally["accepted"] > 0


def test_damaged_lockfile_through_the_real_entry_point(real_lockfile: tuple[Path, bytes]) -> None:
    """A truncated lockfile through ``python -m runner plan``/``status``: exit 1, named, untouched."""
    root, raw = real_lockfile
    (root / "m.lock.journal").unlink(missing_ok=True)
    cut = raw[: len(raw) // 2] + b"\n  broken: [\n"
    (root / "m.lock.yaml").write_bytes(cut)
    for argv in (["plan", "m.yaml"], ["status", "m.yaml"]):
        result = run_cli(*argv, cwd=root, timeout=60)
        assert result.code == 1, result.stderr
        assert "m.lock.yaml" in result.stderr and "Traceback" not in result.stderr
    assert (root / "m.lock.yaml").read_bytes() == cut


def test_lockfile_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    """A lockfile carrying a billion-laughs alias bomb is refused at once instead of hanging plan."""
    from support.manifests import write_manifest as write_valid

    write_valid(tmp_path, filename="m.yaml")
    parts = ['&a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    parts += [f"&a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    (tmp_path / "m.lock.yaml").write_text(
        "version: 1\nserial: 1\njobs:\n  demo:\n    fingerprint: sha256:" + "0" * 64
        + "\n    status: succeeded\n    results: [" + ", ".join(parts) + "]\n"
    )
    try:
        result = subprocess.run([sys.executable, "-m", "runner", "plan", "m.yaml"], cwd=tmp_path,
                                capture_output=True, text=True, timeout=10)  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("runner plan hung on a lockfile alias bomb")
    assert result.returncode == 1 and "m.lock.yaml" in result.stderr
