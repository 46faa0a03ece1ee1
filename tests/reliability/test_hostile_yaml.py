"""Hostile YAML through the command line: rejected quickly, at a line and column, never a traceback.

The loader's own tests (``tests/test_yamlload.py``) cover each limit on strings: the alias
bomb refused by node count, the depth limit, tabs, duplicate keys naming both lines, the
size limit, invalid UTF-8, binary garbage, a FIFO manifest, unknown tags. Here each attack is
a manifest file on disk run through ``runner validate`` / ``plan`` as a user (or an attacker
with a pull request) would, at full size, with the time it takes bounded: the bound is a
hang guard, generous on purpose; the real figures are far below it.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import time
from pathlib import Path

import pytest
from support.cli import run_runner
from support.images import make_image

from runner.cli import main

# Seconds of wall time: a hang guard, not a benchmark. The real figures are 0.3-2 s; the
# guard allows for a machine loaded by parallel test workers (diagnostic_flood took 5.7 s
# under pytest -n 3 beside other work), and a hang or blow-up still fails.
QUICK = 30.0


def run(folder: Path, text: str | bytes, *argv: str) -> tuple[int, str, float]:
    """Write ``m.yaml`` and run ``runner validate m.yaml`` (or ``argv``) in-process, timed."""
    path = folder / "m.yaml"
    if isinstance(text, str):
        text = text.encode("utf-8")
    path.write_bytes(text)
    out, err = io.StringIO(), io.StringIO()
    cwd = os.getcwd()
    os.chdir(folder)
    started = time.monotonic()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["--log-format", "json", *(argv or ("validate", "m.yaml"))])
    finally:
        os.chdir(cwd)
    elapsed = time.monotonic() - started
    output = out.getvalue() + err.getvalue()
    assert "Traceback" not in output and "internal error" not in output, output[:2000]
    return code, output, elapsed


def laughs(levels: int = 9) -> str:
    """The classic billion laughs: 10**levels strings from a few hundred bytes."""
    lines = ['lol0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &l{i} [" + ",".join([f"*l{i - 1}"] * 10) + "]")
    return "version: 1\n" + "\n".join(lines) + "\njobs:\n  - name: a\n    images: *l" + str(levels) + "\n"


def test_billion_laughs(tmp_path: Path) -> None:
    """10**9 expanded strings are refused by validate and plan, at the alias that crosses the limit."""
    for argv in (("validate", "m.yaml"), ("plan", "m.yaml"), ("apply", "m.yaml")):
        code, out, elapsed = run(tmp_path, laughs(), *argv)
        assert code == 1 and elapsed < QUICK
        assert re.search(r"m\.yaml:7:\d+: the document expands to more than 500000 nodes .*alias bomb", out), out


def test_quadratic_blowup(tmp_path: Path) -> None:
    """One large anchor used many times (no nesting of aliases) is refused by expanded size too."""
    big = "[" + ",".join(["x"] * 50_000) + "]"
    text = f"version: 1\nbig: &b {big}\njobs:\n" + "".join(f"  - {{name: j{i}, images: *b}}\n" for i in range(20))
    code, out, elapsed = run(tmp_path, text)
    assert code == 1 and elapsed < QUICK
    assert re.search(r"m\.yaml:\d+:\d+: the document expands to more than 500000 nodes", out), out


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("[" * 5_000_000, "1:65"),
        ("version: 1\njobs:\n  - name: a\n    images: " + "[" * 100 + "]" * 100 + "\n", "4:74"),
        ("version: 1\njobs:\n" + "".join("  " * (i + 1) + "-\n" for i in range(100)), "66:129"),
        ("version: 1\n" + "".join(" " * i + f"k{i}:\n" for i in range(100)), "66:65"),
        ("version: 1\njobs: " + "{a: " * 100 + "1" + "}" * 100 + "\n", "2:"),
    ],
    ids=["5MB-of-brackets", "flow-in-a-job", "block-lists", "block-maps", "flow-maps"],
)
def test_deep_nesting(tmp_path: Path, text: str, where: str) -> None:
    """Nesting past 64 levels is refused where it crosses the limit, before anything recurses."""
    code, out, elapsed = run(tmp_path, text)
    assert code == 1 and elapsed < QUICK
    assert f"m.yaml:{where}" in out and "nesting is too deep (more than 64 levels)" in out, out


def test_ten_megabyte_scalar(tmp_path: Path) -> None:
    """A 10 MB value is refused by the size limit, at the line where it crosses the limit."""
    text = "version: 1\njobs:\n  - name: a\n    lora_prefix: " + "X" * (10 * 1024 * 1024) + "\n"
    code, out, elapsed = run(tmp_path, text)
    assert code == 1 and elapsed < QUICK
    assert re.search(r"^m\.yaml:4:\d+: file is too large \(10485\d+ bytes; the limit is 5242880", out, re.M), out
    assert len(out) < 1000


@pytest.mark.parametrize("key", ["lora_prefix", "name", "images", "prompt", "option", "webhook_url"])
def test_four_megabyte_value_under_the_limit(tmp_path: Path, key: str) -> None:
    """A 4 MB value (under the size limit) is parsed and refused quickly, and not echoed in full."""
    make_image(tmp_path / "imgs" / "a.png")
    huge = "X" * (4 * 1024 * 1024)
    value = {"images": huge + ".png", "prompt": "${" + huge + "}", "webhook_url": "https://" + huge + ":x"}.get(key, huge)
    job = {"name": "a", "images": "imgs", key: value}
    text = "version: 1\njobs:\n  - " + "\n    ".join(f"{k}: {v}" for k, v in job.items()) + "\n"
    code, out, elapsed = run(tmp_path, text)
    assert code == 1 and elapsed < QUICK
    assert re.search(rf"^m\.yaml:\d+:\d+: jobs\[0\]\.{key}: ", out, re.M), out[:500]
    assert len(out) < 4000, f"{len(out)} characters of output"


def test_diagnostic_flood(tmp_path: Path) -> None:
    """100,000 bad jobs in a small file: refused quickly with a bounded list of errors, not 200,000 lines."""
    text = "version: 1\njobs:\n" + "- 1\n" * 100_000
    code, out, elapsed = run(tmp_path, text)
    assert code == 1 and elapsed < QUICK
    assert out.startswith("m.yaml:3:3: jobs[0]: expected a mapping, got an integer\n"), out[:500]
    assert out.count("\n") < 2000
    assert "more errors not shown" in out


def test_duplicate_keys(tmp_path: Path) -> None:
    """Repeated keys at the top, in api, in a job and in a flow mapping: each names both lines."""
    make_image(tmp_path / "imgs" / "a.png")
    text = (
        "version: 1\n"
        "api:\n  endpoint: sandbox\n  endpoint: sandbox\n"
        "jobs:\n  - name: a\n    images: imgs\n    images: imgs\n"
        "  - {name: b, images: imgs, name: c}\n"
        "jobs: []\n"
    )
    code, out, elapsed = run(tmp_path, text)
    assert code == 1 and elapsed < QUICK
    assert "m.yaml:4:3: api.endpoint: duplicate key 'endpoint' (first defined at line 3)" in out
    assert "m.yaml:8:5: jobs[0].images: duplicate key 'images' (first defined at line 7)" in out
    assert "m.yaml:9:29: jobs[1].name: duplicate key 'name' (first defined at line 9)" in out
    assert "m.yaml:10:1: jobs: duplicate key 'jobs' (first defined at line 5)" in out


def test_merge_key_override_is_not_a_duplicate(tmp_path: Path) -> None:
    """``<<: *base`` then a key of one's own is YAML's override, not a duplicate key."""
    make_image(tmp_path / "imgs" / "a.png")
    text = (
        "version: 1\nbase: &base {lora_prefix: A, images: imgs}\n"
        "jobs:\n  - <<: *base\n    name: a\n    lora_prefix: B\n"
    )
    code, out, _ = run(tmp_path, text)
    assert "duplicate" not in out
    assert "m.yaml:2:1: base: unknown key 'base'" in out and code == 1  # only the stray anchor holder


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("version: 1\njobs:\n\t- name: a\n", "3:1"),
        ("version: 1\njobs:\n  - name: a\n  \timages: x\n", "4:3"),
        ("version: 1\n\tjobs: []\n", "2:1"),
    ],
    ids=["list-item", "inside-a-job", "top-level"],
)
def test_tabs(tmp_path: Path, text: str, where: str) -> None:
    """A tab used for indentation is refused at its place, saying so in words."""
    code, out, elapsed = run(tmp_path, text)
    assert code == 1 and elapsed < QUICK
    assert f"m.yaml:{where}: invalid YAML: a tab character; YAML indentation must use spaces" in out, out


def test_tab_inside_a_value_is_fine(tmp_path: Path) -> None:
    """A tab inside a quoted value is text, not indentation."""
    make_image(tmp_path / "imgs" / "a.png")
    code, out, _ = run(tmp_path, 'version: 1\njobs:\n  - name: a\n    images: imgs\n    lora_prefix: "A"\t# tab before a comment\n')
    assert code == 0, out


def test_hostile_yaml_through_the_real_entry_point(tmp_path: Path) -> None:
    """Billion laughs, deep nesting, 10 MB and duplicates through ``python -m runner validate`` at once."""
    files = {
        "laughs.yaml": laughs(),
        "deep.yaml": "[" * 1000,
        "big.yaml": "version: 1\nx: " + "y" * (10 * 1024 * 1024),
        "dup.yaml": "version: 1\nversion: 1\njobs: []\n",
        "tabs.yaml": "version: 1\njobs:\n\t- name: a\n",
    }
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    started = time.monotonic()
    result = run_runner("validate", *files, cwd=tmp_path, timeout=60)
    assert time.monotonic() - started < QUICK * 3
    assert result.code == 1
    assert "Traceback" not in result.stdout + result.stderr
    for name in files:
        assert re.search(rf"^{re.escape(name)}:\d+:\d+: ", result.stdout, re.M), name
        assert f"{name}: invalid" in result.stdout
