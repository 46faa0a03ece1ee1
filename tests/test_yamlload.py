"""The YAML loader: positions, duplicate keys, bombs, limits and garbage."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from runner.manifest import loader as yamlload
from runner.manifest.loader import YamlError, load_file, loads


def test_positions_of_values_and_keys() -> None:
    """Every value and key knows its 1-based line and column, through lists and flow maps."""
    doc = loads("a: 1\nlist:\n  - x\n  - {k: v}\n")
    assert doc.data == {"a": 1, "list": ["x", {"k": "v"}]}
    assert doc.position(["a"]) == (1, 4)
    assert doc.position(["a"], key=True) == (1, 1)
    assert doc.position(["list", 1, "k"]) == (4, 9)
    assert doc.position(["list", 1, "k"], key=True) == (4, 6)


def test_missing_path_falls_back_to_nearest_ancestor() -> None:
    """A key that is absent is placed at its parent, where the user must add it."""
    doc = loads("jobs:\n  - name: a\n")
    assert doc.position(["jobs", 0, "images"]) == (2, 5)
    assert doc.node(["jobs", 0, "images"]) is None


def test_duplicate_key_is_a_problem_naming_both_lines() -> None:
    """A repeated key is reported at the second one, naming the first; the first value stays."""
    doc = loads("a: 1\nb: 2\na: 3\n")
    assert doc.data == {"a": 1, "b": 2}
    [problem] = doc.problems
    assert (problem.line, problem.col, problem.path) == (3, 1, ("a",))
    assert "duplicate key 'a'" in problem.message and "line 1" in problem.message


def test_keys_compare_as_text() -> None:
    """``1:`` and ``"1":`` are the same key once the document is JSON-shaped."""
    doc = loads('1: a\n"1": b\n')
    assert len(doc.problems) == 1


def test_alias_bomb_refused_fast() -> None:
    """A billion-laughs document is refused by node count in well under a second."""
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, 20):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]")
    started = time.perf_counter()
    with pytest.raises(YamlError, match="alias bomb") as info:
        loads("\n".join(lines))
    assert time.perf_counter() - started < 0.5
    assert info.value.line > 1


def test_small_aliases_are_expanded() -> None:
    """Ordinary anchors and merge keys work and are copied, not shared."""
    doc = loads("base: &b {x: 1, y: 2}\nother:\n  <<: *b\n  y: 3\nlist: [*b, *b]\n")
    assert doc.data["other"] == {"x": 1, "y": 3}
    assert doc.data["list"] == [{"x": 1, "y": 2}, {"x": 1, "y": 2}]
    assert doc.data["list"][0] is not doc.data["list"][1]
    assert doc.problems == []


def test_recursive_alias_is_an_error() -> None:
    """An anchor used inside itself is refused instead of building a cycle."""
    with pytest.raises(YamlError, match="refers to itself"):
        loads("a: &x [1, *x]\n")


def test_undefined_alias_is_positioned() -> None:
    """An alias to no anchor points at the alias."""
    with pytest.raises(YamlError) as info:
        loads("a: 1\nb: *nope\n")
    assert (info.value.line, info.value.col) == (2, 4)


def test_depth_limit() -> None:
    """Deep nesting is refused at the level that crosses the limit, not by a RecursionError."""
    with pytest.raises(YamlError, match="too deep") as info:
        loads("[" * 10_000)
    assert info.value.col == yamlload.MAX_DEPTH + 1


def test_tab_indentation_is_positioned() -> None:
    """A tab used for indentation gives a clear message at its place."""
    with pytest.raises(YamlError, match="tab") as info:
        loads("a:\n  b: 1\n\tc: 2\n")
    assert (info.value.line, info.value.col) == (3, 1)


@pytest.mark.parametrize(
    "text",
    ["a: b: c", "key: [unclosed", "- a\nb: c", "a: 'x\n", "{a: 1", "a: \x07"],
)
def test_syntax_errors_are_positioned(text: str) -> None:
    """Malformed YAML raises YamlError with a line and column, never a PyYAML exception."""
    with pytest.raises(YamlError) as info:
        loads(text)
    assert info.value.line >= 1 and info.value.col >= 1
    assert info.value.message.startswith("invalid YAML")


def test_multiple_documents_refused() -> None:
    """A second document (``---``) is an error: a manifest is one document."""
    with pytest.raises(YamlError, match="one YAML document"):
        loads("a: 1\n---\nb: 2\n")


def test_empty_document_refused() -> None:
    """An empty (or comment-only) file is an error, not None."""
    with pytest.raises(YamlError, match="empty"):
        loads("# nothing\n")


def test_python_tags_refused() -> None:
    """``!!python/...`` tags are reported, never constructed, on scalars and collections."""
    doc = loads("a: !!python/name:os.system ''\n")
    assert any("unsupported tag" in p.message for p in doc.problems)
    with pytest.raises(YamlError, match="unsupported tag"):
        loads("a: !!python/object/apply:os.system [echo]\n")


def test_timestamps_stay_strings() -> None:
    """Dates stay text so the data is always JSON-shaped for the schema."""
    assert loads("d: 2024-01-02\n").data == {"d": "2024-01-02"}


def test_non_scalar_key_is_a_problem() -> None:
    """A mapping used as a key is reported and skipped."""
    doc = loads("? [a, b]\n: 1\nc: 2\n")
    assert doc.data == {"c": 2}
    assert doc.problems and "plain strings" in doc.problems[0].message


def test_size_limit(tmp_path: Path) -> None:
    """A file over the size limit is refused before it is parsed."""
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * 2000 + "\n")
    with pytest.raises(YamlError, match="too large"):
        load_file(big, max_bytes=1000)


def test_invalid_utf8_positioned(tmp_path: Path) -> None:
    """Bytes that are not UTF-8 are reported at their line and column."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"a: 1\nb: caf\xe9\n")
    with pytest.raises(YamlError, match="UTF-8") as info:
        load_file(path)
    assert (info.value.line, info.value.col) == (2, 7)


def test_binary_garbage(tmp_path: Path) -> None:
    """Random binary input gives a YamlError, not a crash."""
    path = tmp_path / "garbage.yaml"
    path.write_bytes(os.urandom(256) + b"\x00")
    with pytest.raises(YamlError):
        load_file(path)


def test_folder_and_missing_file(tmp_path: Path) -> None:
    """A folder or a missing path is a YamlError with a plain reason."""
    with pytest.raises(YamlError, match="folder"):
        load_file(tmp_path)
    with pytest.raises(YamlError, match="not found"):
        load_file(tmp_path / "nope.yaml")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_manifest_does_not_hang(tmp_path: Path) -> None:
    """A FIFO given as the manifest is refused at once instead of blocking on open."""
    fifo = tmp_path / "pipe.yaml"
    os.mkfifo(fifo)
    with pytest.raises(YamlError, match="not a regular file"):
        load_file(fifo)
