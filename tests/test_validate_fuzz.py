"""Property tests: whatever the manifest, ``runner validate`` exits 0 or 1 and never crashes.

Most examples run in-process through ``runner.cli.main`` (milliseconds each); a few go
through a real subprocess to prove the same holds for the installed entry point.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support.cli import run_runner
from support.images import make_image
from support.manifests import dump_yaml, write_manifest

from runner.cli import main

FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
    st.sampled_from(["FluxKontextFinetune", "sandbox", "http://x", "10s", "${HOME}", "${NOPE_X}", "*.png", "imgs", "", "$${"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)),
    max_leaves=12,
)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """A folder with real images and a valid manifest using every feature, as data."""
    folder = tmp_path_factory.mktemp("fuzz")
    for rel in ("imgs/a.png", "imgs/b.png", "s/x.png", "e/x.png"):
        make_image(folder / rel)
    path = write_manifest(
        folder,
        api={"endpoint": "sandbox", "poll_interval": "1s", "job_timeout": "5m", "max_submissions": 3},
        defaults={"finetune_type": "Auto", "num_iterations": 0},
        jobs=[
            {"name": "folder", "lora_prefix": "F", "images": "imgs"},
            {"name": "list", "option": "FluxProFinetune", "images": ["imgs/a.png", "imgs/*.png"]},
            {"name": "urls", "image_urls": ["https://example.com/a.jpg"]},
            {"name": "pairs", "option": "FluxKontextFinetune", "prompt": "p", "pairs": [{"start": "s/x.png", "end": "e/x.png"}]},
            {"name": "dirs", "option": "FluxKontextFinetune", "prompt": "p", "pairs": {"start_dir": "s", "end_dir": "e"}},
        ],
    )
    return folder, yaml.safe_load(path.read_text())


def _run_split(folder: Path, text: str, *extra: str) -> tuple[int, str, str]:
    manifest = folder / "fuzzed.yaml"
    manifest.write_text(text, encoding="utf-8", errors="surrogatepass")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["--log-format", "json", "validate", *extra, str(manifest)])
    return code, out.getvalue(), err.getvalue()


def _run(folder: Path, text: str, *extra: str) -> tuple[int, str]:
    code, out, err = _run_split(folder, text, *extra)
    return code, out + err


def _assert_clean(code: int, output: str) -> None:
    assert code in (0, 1), output
    assert "Traceback" not in output and "internal error" not in output, output


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _paths(value, (*prefix, i))
    return found


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


@st.composite
def mutated(draw: st.DrawFn, doc: dict[str, Any]) -> Any:
    """Apply 1-4 edits at random places: delete, replace with junk, add a junk key, retype."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, 4))):
        paths = _paths(doc)
        path = draw(st.sampled_from(paths))
        action = draw(st.sampled_from(["delete", "replace", "insert", "stringify", "listify"]))
        if not path:
            if action == "replace":
                doc = draw(values)
            continue
        parent, last = _parent(doc, path), path[-1]
        try:
            if action == "delete":
                del parent[last]
            elif action == "replace":
                parent[last] = draw(values)
            elif action == "insert" and isinstance(parent[last], dict):
                parent[last][draw(st.text(max_size=10))] = draw(values)
            elif action == "insert" and isinstance(parent[last], list):
                parent[last].append(draw(values))
            elif action == "stringify":
                parent[last] = str(parent[last])
            elif action == "listify":
                parent[last] = [parent[last]]
        except (KeyError, IndexError, TypeError):
            pass
    return doc


def test_valid_base_is_valid(base: tuple[Path, dict[str, Any]]) -> None:
    """The fuzzing starts from a manifest that is valid (so mutations mean something)."""
    folder, doc = base
    code, output = _run(folder, dump_yaml(doc))
    assert code == 0, output


@FUZZ
@given(data=st.data())
def test_mutated_manifests_never_crash(base: tuple[Path, dict[str, Any]], data: st.DataObject) -> None:
    """Deleting keys, changing types and inserting junk always gives exit 0 or 1, no traceback."""
    folder, doc = base
    new = data.draw(mutated(doc))
    try:
        text = dump_yaml(new)
    except yaml.YAMLError:
        return
    _assert_clean(*_run(folder, text))


@FUZZ
@given(text=st.text(max_size=300))
def test_random_text_never_crashes(base: tuple[Path, dict[str, Any]], text: str) -> None:
    """Arbitrary text as a manifest gives exit 1 (or 0), never a traceback."""
    folder, _ = base
    _assert_clean(*_run(folder, text))


@FUZZ
@given(data=st.data())
def test_edited_yaml_text_never_crashes(base: tuple[Path, dict[str, Any]], data: st.DataObject) -> None:
    """Character-level edits of a valid manifest's text (broken indentation, quotes, tabs)."""
    folder, doc = base
    text = dump_yaml(doc)
    for _ in range(data.draw(st.integers(1, 5))):
        at = data.draw(st.integers(0, len(text)))
        junk = data.draw(st.sampled_from(["\t", ":", "- ", "'", '"', "&a ", "*a", "{", "]", "\n", "  ", "!!", "<<: ", "#", "${X", "\x00"]))
        if data.draw(st.booleans()):
            text = text[:at] + junk + text[at:]
        else:
            text = text[:at] + text[at + len(junk):]
    code, out, err = _run_split(folder, text, "--format", "json")
    _assert_clean(code, out + err)
    assert json.loads(out)["valid"] is (code == 0)


@pytest.mark.parametrize(
    "content",
    [os.urandom(64), b"\xff\xfe\x00\x00", b"version: 1\njobs: [" + b"[" * 500, b"- - - -\n" * 10, b"version: !!binary aGVsbG8=\njobs: {}"],
    ids=["random-bytes", "bom-junk", "deep", "lists", "binary-tag"],
)
def test_garbage_through_subprocess(tmp_path: Path, content: bytes) -> None:
    """Garbage files through the real entry point exit 1 with a positioned message."""
    (tmp_path / "g.yaml").write_bytes(content)
    result = run_runner("validate", "g.yaml", cwd=tmp_path)
    assert result.code == 1
    assert result.stdout.startswith("g.yaml:")
    assert "Traceback" not in result.stdout + result.stderr
