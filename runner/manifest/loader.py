"""Read YAML keeping the line and column of every node, safely.

PyYAML's own composer and constructor lose positions, silently keep the last of two
duplicate keys, expand aliases without limit (the "billion laughs" bomb) and recurse once
per nesting level. So this module builds its own small tree from PyYAML's *event* stream
(libyaml when available), iteratively, and enforces:

- a size limit on the file (``MAX_BYTES``), read without following FIFOs into a hang;
- a nesting depth limit (``MAX_DEPTH``), checked before anything recurses;
- an expansion limit (``MAX_NODES``): every node knows how many nodes it stands for once
  aliases are expanded, computed as it is built, so a bomb is refused after reading its
  few lines, long before anything is expanded;
- duplicate keys are errors that name both places;
- recursive aliases, unknown tags and non-scalar keys are errors.

Scalars are typed with YAML 1.1 rules as ``yaml.safe_load`` would (``yes`` is ``True``),
except timestamps and binary, which stay strings so the result is always JSON-shaped.
``Document.position(path)`` finds the place of any key path for messages.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

MAX_BYTES = 5 * 1024 * 1024
MAX_DEPTH = 64
MAX_NODES = 500_000

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_KEEP_AS_STRING = {"tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:binary"}
_MAP_TAGS = {None, "!", "tag:yaml.org,2002:map"}
_SEQ_TAGS = {None, "!", "tag:yaml.org,2002:seq"}
# Plain scalars whose first character starts no implicit resolver (null, bool, int, float,
# merge, ...), and every quoted scalar, resolve to str whatever their text: the common
# case (names, paths, prompts) skips the resolver's regexes and the constructor call.
_RESOLVED_BY_FIRST = frozenset(k for k in _Loader.yaml_implicit_resolvers if k is not None)
_FAST_STR = None not in _Loader.yaml_implicit_resolvers and not _Loader.yaml_path_resolvers

PathPart = str | int


class YamlError(Exception):
    """A problem that stops reading the file, with its 1-based position (0 = unknown)."""

    def __init__(self, message: str, line: int = 0, col: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.col = col


@dataclass(frozen=True)
class Problem:
    """A problem found while reading that does not stop it (duplicate key, unknown tag)."""

    message: str
    line: int
    col: int
    path: tuple[PathPart, ...]


@dataclass(eq=False)
class Node:
    """One YAML node with its 1-based position.

    ``entries`` (mappings) maps each key to ``(key node, value node)`` after merge keys;
    ``items`` holds a sequence's nodes; ``value`` a scalar's typed value. ``size`` is the
    number of nodes this one stands for with aliases expanded.
    """

    kind: Literal["map", "seq", "scalar"]
    line: int
    col: int
    value: Any = None
    style: str | None = None
    entries: dict[str, tuple[Node, Node]] = field(default_factory=dict)
    items: list[Node] = field(default_factory=list)
    size: int = 1


# Shared, never mutated: a scalar has no entries or items (saves two allocations per scalar).
_NO_ENTRIES: dict[str, tuple[Node, Node]] = {}
_NO_ITEMS: list[Node] = []


@dataclass
class Document:
    """The data (plain dicts, lists and scalars) and the tree that knows where each came from."""

    data: Any
    root: Node
    problems: list[Problem] = field(default_factory=list)

    def node(self, path: Sequence[PathPart]) -> Node | None:
        """The node at ``path``, or None if the path leaves the tree."""
        node = self.root
        for part in path:
            if node.kind == "map" and isinstance(part, str) and part in node.entries:
                node = node.entries[part][1]
            elif node.kind == "seq" and isinstance(part, int) and 0 <= part < len(node.items):
                node = node.items[part]
            else:
                return None
        return node

    def position(self, path: Sequence[PathPart], *, key: bool = False) -> tuple[int, int]:
        """Line and column of ``path``'s value (or of its key, with ``key=True``).

        A path that leaves the tree (a missing key) falls back to its nearest ancestor, which
        is where the user has to add it.
        """
        node = self.root
        where = (node.line, node.col)
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if node.kind == "map" and isinstance(part, str) and part in node.entries:
                key_node, node = node.entries[part]
                where = (key_node.line, key_node.col) if key and last else (node.line, node.col)
            elif node.kind == "seq" and isinstance(part, int) and 0 <= part < len(node.items):
                node = node.items[part]
                where = (node.line, node.col)
            else:
                break
        return where


def read_text(path: Path, *, max_bytes: int = MAX_BYTES) -> str:
    """Read a manifest as UTF-8, refusing what is not a regular file or is too large.

    ``O_NONBLOCK`` keeps a FIFO swapped in after the ``stat`` from hanging the open.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise YamlError("file not found") from None
    except PermissionError:
        raise YamlError("permission denied") from None
    except OSError as exc:
        raise YamlError(_os_reason(exc)) from None
    if stat.S_ISDIR(st.st_mode):
        raise YamlError("is a folder, not a manifest file")
    if not stat.S_ISREG(st.st_mode):
        raise YamlError("not a regular file")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read(max_bytes + 1)
    except PermissionError:
        raise YamlError("permission denied") from None
    except OSError as exc:
        raise YamlError(_os_reason(exc)) from None
    if len(raw) > max_bytes:
        # Point at the line that crosses the limit: usually one huge value.
        start = raw.rfind(b"\n", 0, max_bytes) + 1
        line = raw.count(b"\n", 0, max_bytes) + 1
        col = len(raw[start:max_bytes].decode("utf-8", "replace")) + 1
        size = max(st.st_size, len(raw))
        raise YamlError(
            f"file is too large ({size} bytes; the limit is {max_bytes}, passed on this line)", line, col
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start]
        line = before.count(b"\n") + 1
        col = exc.start - (before.rfind(b"\n") + 1) + 1
        raise YamlError("not UTF-8 text (invalid byte)", line, col) from None


def _os_reason(exc: OSError) -> str:
    return exc.strerror.lower() if exc.strerror else str(exc)


def load_file(path: Path, *, max_bytes: int = MAX_BYTES) -> Document:
    """Read and parse one YAML file; raises ``YamlError`` when it cannot be read at all."""
    return loads(read_text(path, max_bytes=max_bytes))


def loads(text: str) -> Document:
    """Parse one YAML document from text; see the module docstring for what is refused."""
    try:
        return _parse(text, _Loader)
    except _LibyamlTooDeep as exc:
        # libyaml 0.2.6 (PyYAML 6.0.4 wheels) refuses more than 1,000 flow levels while its
        # scanner looks ahead, before our builder has seen the 65th. The text up to that
        # point holds all 1,000, so the pure-Python parser, given only that prefix, lets
        # ``MAX_DEPTH`` stop the read at the right place. Only files nested 1,000 deep pay
        # for it: seconds when the nesting sits at the end of a megabyte.
        try:
            _parse(text[: exc.index], yaml.SafeLoader)
        except YamlError as error:
            if error.message.startswith("nesting is too deep"):
                raise
        return _parse(text, yaml.SafeLoader)  # never a prefix's document: all of it


class _LibyamlTooDeep(Exception):
    """libyaml's own nesting limit fired before ours could, at ``index`` in the text."""

    def __init__(self, index: int) -> None:
        super().__init__(index)
        self.index = index


def _parse(text: str, loader_class: type[Any]) -> Document:
    builder = _Builder()
    loader = loader_class(text)
    try:
        while True:
            event = loader.get_event()
            if event is None:
                break
            builder.feed(event, loader)
    except yaml.MarkedYAMLError as exc:
        if loader_class is not yaml.SafeLoader and "maximum nesting depth" in str(exc.problem):
            mark = exc.problem_mark
            raise _LibyamlTooDeep(mark.index + 1 if mark else len(text)) from None
        mark = exc.problem_mark or exc.context_mark
        message = exc.problem or exc.context or "invalid YAML"
        if exc.context and exc.problem:
            message = f"{exc.problem} ({exc.context})"
        line, col = (mark.line + 1, mark.column + 1) if mark else (0, 0)
        if mark and 0 <= mark.index < len(text) and text[mark.index] == "\t":
            message = "a tab character; YAML indentation must use spaces"
        raise YamlError(f"invalid YAML: {message}", line, col) from None
    except yaml.reader.ReaderError as exc:
        line, col = _line_col(text, exc.position)
        raise YamlError(f"invalid YAML: {exc.reason}", line, col) from None
    except yaml.YAMLError as exc:  # anything else libyaml may raise, still without a traceback
        raise YamlError(f"invalid YAML: {exc}") from None
    finally:
        loader.dispose()
    if builder.root is None:
        raise YamlError("the file is empty", 1, 1)
    data = _to_python(builder.root)
    return Document(data=data, root=builder.root, problems=builder.problems)


def _line_col(text: str, position: int) -> tuple[int, int]:
    before = text[:position]
    return before.count("\n") + 1, position - (before.rfind("\n") + 1) + 1


@dataclass
class _Frame:
    node: Node
    path: tuple[PathPart, ...]
    anchor: str | None
    pending_key: Node | None = None  # a mapping's key waiting for its value
    merges: list[tuple[Node, Node]] = field(default_factory=list)


class _Builder:
    """Turns the event stream into ``Node`` trees without recursion."""

    def __init__(self) -> None:
        self.root: Node | None = None
        self.documents = 0
        self.stack: list[_Frame] = []
        self.anchors: dict[str, Node] = {}
        self.open_anchors: set[str] = set()
        self.problems: list[Problem] = []
        self.aliased = False  # an alias was used: a huge size is then likely a bomb

    def _path(self) -> tuple[PathPart, ...]:
        if not self.stack:
            return ()
        top = self.stack[-1]
        if top.node.kind == "seq":
            return (*top.path, len(top.node.items))
        if top.pending_key is not None:
            return (*top.path, str(top.pending_key.value))
        return top.path

    def feed(self, event: Any, loader: Any) -> None:
        line, col = event.start_mark.line + 1, event.start_mark.column + 1
        if isinstance(event, yaml.ScalarEvent):  # by far the most frequent
            self._scalar(event, loader, line, col)
        elif isinstance(event, yaml.DocumentStartEvent):
            self.documents += 1
            if self.documents > 1:
                raise YamlError("expected one YAML document, found more ('---')", line, col)
        elif isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor or "")
            if target is None:
                reason = "refers to itself" if event.anchor in self.open_anchors else "is not defined"
                raise YamlError(f"alias *{event.anchor} {reason}", line, col)
            self.aliased = True
            self._add(target, line, col)
        elif isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            is_map = isinstance(event, yaml.MappingStartEvent)
            if event.tag not in (_MAP_TAGS if is_map else _SEQ_TAGS):
                raise YamlError(f"unsupported tag {event.tag}", line, col)
            if len(self.stack) >= MAX_DEPTH:
                raise YamlError(f"nesting is too deep (more than {MAX_DEPTH} levels)", line, col)
            path = self._path()
            node = Node("map" if is_map else "seq", line, col)
            if event.anchor:
                self.open_anchors.add(event.anchor)
            self.stack.append(_Frame(node, path, event.anchor))
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            frame = self.stack.pop()
            if frame.merges:
                self._apply_merges(frame)
            if frame.anchor:
                self.open_anchors.discard(frame.anchor)
                self.anchors[frame.anchor] = frame.node
            self._add(frame.node, frame.node.line, frame.node.col, built=True)

    def _scalar(self, event: Any, loader: Any, line: int, col: int) -> None:
        tag = event.tag
        text = event.value
        if (
            _FAST_STR
            and (tag is None or tag == "!")
            and (not event.implicit[0] or (text and text[0] not in _RESOLVED_BY_FIRST))
        ):
            node = Node("scalar", line, col, text, event.style or None, _NO_ENTRIES, _NO_ITEMS)
            if event.anchor:
                self.anchors[event.anchor] = node
            self._add(node, line, col)
            return
        if tag is None or tag == "!":
            tag = loader.resolve(yaml.ScalarNode, event.value, event.implicit)
        if tag in _KEEP_AS_STRING:
            tag = _STR_TAG
        constructor = loader.yaml_constructors.get(tag)
        if tag == _MERGE_TAG:
            value: Any = "<<"
        elif constructor is None or tag.startswith("tag:yaml.org,2002:python/"):
            self.problems.append(Problem(f"unsupported tag {tag}", line, col, self._path()))
            value = event.value
        else:
            try:
                value = constructor(loader, yaml.ScalarNode(tag, event.value, style=event.style))
            except (yaml.YAMLError, ValueError) as exc:
                raise YamlError(f"invalid {tag.rsplit(':', 1)[-1]}: {exc}", line, col) from None
        node = Node("scalar", line, col, value, event.style or None, _NO_ENTRIES, _NO_ITEMS)
        if tag == _MERGE_TAG:
            node.style = "merge"
        if event.anchor:
            self.anchors[event.anchor] = node
        self._add(node, line, col)

    def _add(self, node: Node, line: int, col: int, built: bool = False) -> None:
        """Attach a finished node (or an alias's target) to its parent."""
        if not self.stack:
            self.root = node
            return
        top = self.stack[-1]
        parent = top.node
        parent.size += node.size
        if parent.size > MAX_NODES:
            if self.aliased:
                message = f"the document expands to more than {MAX_NODES} nodes once aliases are expanded (alias bomb?)"
            else:
                message = f"the document has more than {MAX_NODES} nodes (keys, values and list items)"
            raise YamlError(message, line, col)
        if parent.kind == "seq":
            parent.items.append(node)
            return
        if top.pending_key is None:
            if node.kind != "scalar":
                self.problems.append(
                    Problem("mapping keys must be plain strings", line, col, top.path)
                )
                # keep the event stream in step: the next node is this key's value
                top.pending_key = Node("scalar", line, col, value="\0invalid")
            else:
                top.pending_key = node
            return
        key_node, top.pending_key = top.pending_key, None
        if key_node.style == "merge":
            top.merges.append((key_node, node))
            return
        if key_node.value == "\0invalid":
            return
        key = _key_text(key_node)
        previous = parent.entries.get(key)
        if previous is not None:
            self.problems.append(
                Problem(
                    f"duplicate key {key!r} (first defined at line {previous[0].line})",
                    key_node.line,
                    key_node.col,
                    (*top.path, key),
                )
            )
            return
        parent.entries[key] = (key_node, node)

    def _apply_merges(self, frame: _Frame) -> None:
        """``<<: *base`` copies keys the mapping does not set itself (YAML merge keys)."""
        for key_node, value in frame.merges:
            sources = value.items if value.kind == "seq" else [value]
            for source in sources:
                if source.kind != "map":
                    self.problems.append(
                        Problem(
                            "a merge key (<<) needs a mapping or a list of mappings",
                            key_node.line,
                            key_node.col,
                            frame.path,
                        )
                    )
                    continue
                for key, pair in source.entries.items():
                    frame.node.entries.setdefault(key, pair)


def _key_text(node: Node) -> str:
    """Keys are compared and reported as text: ``1:`` and ``"1":`` are the same key."""
    value = node.value
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _to_python(node: Node) -> Any:
    """Plain data for JSON Schema; an aliased node is copied at each use (sizes are capped)."""
    if node.kind == "scalar":
        return node.value
    if node.kind == "seq":
        return [_to_python(item) for item in node.items]
    return {key: _to_python(value) for key, (_k, value) in node.entries.items()}
