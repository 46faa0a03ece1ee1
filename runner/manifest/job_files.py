"""The files a job names: its ``images`` (files, folders, globs) and Kontext ``pairs``,
resolved inside the manifest's folder, and each used file checked once.

A mixin of ``Checker`` (``runner.manifest.checks``): it reports through the checker, at the
key that named the file, and keeps the checker's record of where each file is used.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from runner.manifest import image_paths
from runner.manifest.images import find_problems
from runner.manifest.loader import PathPart
from runner.manifest.values import url_problem

if TYPE_CHECKING:
    from runner.diagnostics import Severity

_PATH = tuple[PathPart, ...]
_ESCAPES = "path escapes the manifest's folder"
_NUL = "path contains a NUL character"  # no file can have one; os.stat would raise
_ALLOW = " (pass --allow-outside-links to allow it)"


@dataclass
class _Use:
    """One place image files are used (an ``images`` entry, a pair's half), for placing
    their problems; one per entry, not per file, as a folder may hold thousands."""

    paths: list[Path]
    where: _PATH
    shown: str | None  # None: name it relative to the manifest, computed only if reported



class JobFiles:
    """Resolving and checking a manifest's files; ``Checker`` provides the fields and
    ``report``."""

    folder: Path
    check_images: bool
    stats: dict[str, os.stat_result] | None
    _uses: list[_Use]

    def report(
        self, path: _PATH, message: str, *, severity: Severity = "error", at_key: bool = False
    ) -> None:
        raise NotImplementedError

    def check_urls(self, here: _PATH, urls: object) -> list[str]:
        if not isinstance(urls, list):
            return []
        out: list[str] = []
        for i, url in enumerate(urls):
            if not isinstance(url, str):
                continue
            problem = url_problem(url)
            # a scheme problem is the schema's to report; the rest (bad host, port) is ours
            if problem and url.lower().startswith(("http://", "https://")):
                self.report((*here, "image_urls", i), problem)
            out.append(url)
        return out

    def resolve_images(self, here: _PATH, spec: object) -> list[Path]:
        entries: list[tuple[_PATH, str]]
        if isinstance(spec, str):
            entries = [((*here, "images"), spec)]
        elif isinstance(spec, list):
            entries = [((*here, "images", i), s) for i, s in enumerate(spec) if isinstance(s, str)]
        else:
            return []
        paths: list[Path] = []
        for where, text in entries:
            if not text:
                continue
            if "\x00" in text:
                self.report(where, f"{_NUL}: {text!r}")
                continue
            absolute = image_paths.absolute(self.folder, text)
            if not self.inside(absolute):
                self.report(where, f"{_ESCAPES}: {text}")
                continue
            resolved = image_paths.resolve(
                self.folder, text, path=absolute, stats=self.stats, contain=self._contain
            )
            if resolved.outside is not None:
                self.report_leaves(where, text, resolved.outside)
                continue
            if resolved.error:
                self.report(where, f"{resolved.error}: {text}")
                continue
            # A folder's files and a single file are inside once ``absolute`` is; only a
            # glob's matches can leave (a ``..`` after a wildcard).
            if image_paths.is_glob(text) and not all(self.inside(p) for p in resolved.paths):
                self.report(where, f"{_ESCAPES}: {text}")
                continue
            single = len(resolved.paths) == 1 and resolved.paths[0] == absolute
            self._uses.append(_Use(resolved.paths, where, text if single else None))
            paths.extend(resolved.paths)
        # Text, not Path: a Path hashes in Python, its (normalised) text in C.
        if len(set(map(str, paths))) == len(paths):
            return paths
        seen: set[Path] = set()
        for path in paths:
            if path in seen:
                self.report(
                    (*here, "images"),
                    f"image listed more than once: {self.shown(path)}",
                    severity="warning",
                    at_key=True,
                )
            seen.add(path)
        return paths

    def resolve_pairs(self, here: _PATH, pairs: object) -> list[Path]:
        """Kontext pairs in upload order: start, end, start, end..."""
        where: _PATH = (*here, "pairs")
        out: list[Path] = []
        if isinstance(pairs, list):
            for i, pair in enumerate(pairs):
                if not isinstance(pair, dict):
                    continue
                start, end = pair.get("start"), pair.get("end")
                if not (isinstance(start, str) and start and isinstance(end, str) and end):
                    continue  # the schema says which half is missing
                for key, text in (("start", start), ("end", end)):
                    path = image_paths.absolute(self.folder, text)
                    if self.escapes((*where, i, key), text):
                        pass
                    elif not image_paths.is_supported(path):
                        self.report(
                            (*where, i, key),
                            f"unsupported file type (use {image_paths.SUPPORTED_TEXT}): {text}",
                        )
                    else:
                        self._uses.append(_Use([path], (*where, i, key), text))
                    out.append(path)
            return out
        if isinstance(pairs, dict):
            start_dir, end_dir = pairs.get("start_dir"), pairs.get("end_dir")
            if not (isinstance(start_dir, str) and start_dir and isinstance(end_dir, str) and end_dir):
                return []
            starts = self._stems((*where, "start_dir"), start_dir)
            ends = self._stems((*where, "end_dir"), end_dir)
            if starts is None or ends is None:
                return []
            for stem in sorted(set(starts) - set(ends)):
                self.report(
                    (*where, "end_dir"),
                    f"no end image for start {self.shown(starts[stem])} "
                    f"(expected {stem}.* in {end_dir})",
                )
            for stem in sorted(set(ends) - set(starts)):
                self.report(
                    (*where, "start_dir"),
                    f"no start image for end {self.shown(ends[stem])} "
                    f"(expected {stem}.* in {start_dir})",
                )
            for stem in sorted(set(starts) & set(ends)):
                for key, path in (("start_dir", starts[stem]), ("end_dir", ends[stem])):
                    self._uses.append(_Use([path], (*where, key), None))
                out.extend((starts[stem], ends[stem]))
        return out

    def _stems(self, where: _PATH, folder_text: str) -> dict[str, Path] | None:
        if self.escapes(where, folder_text):
            return None
        folder = image_paths.absolute(self.folder, folder_text)
        if self._contain is not None:
            leads = self._contain.leaves(str(folder), os.path.islink(folder))
            if leads is not None:
                self.report_leaves(where, folder_text, leads)
                return None
        if not os.path.isdir(folder):
            reason = "not a folder" if os.path.lexists(folder) else "folder not found"
            self.report(where, f"{reason}: {folder_text}")
            return None
        listed = image_paths.list_folder(folder)
        if listed.error:
            self.report(where, f"{listed.error}: {folder_text}")
            return None
        stems: dict[str, Path] = {}
        for path in listed.paths:
            stem = path.stem
            if stem in stems:
                self.report(
                    where, f"two images share the stem {stem!r}: {stems[stem].name}, {path.name}"
                )
                continue
            stems[stem] = path
        return stems

    # -- files ---------------------------------------------------------------------------

    def inside(self, path: Path) -> bool:
        """Is ``path`` (absolute, normalised) the manifest's folder or below it?"""
        text, root = str(path), str(self.folder)
        return text == root or text.startswith(self._root_prefix)

    @functools.cached_property
    def _root_prefix(self) -> str:
        return str(self.folder).rstrip(os.sep) + os.sep

    @functools.cached_property
    def _contain(self) -> image_paths.Containment | None:
        """Symlinks leaving the folder are refused unless ``--allow-outside-links``."""
        return image_paths.containment(self.folder)

    def report_leaves(self, where: _PATH, shown: str, target: str) -> None:
        self.report(where, f"{image_paths.LEAVES}: {shown} -> {target}{_ALLOW}")

    def escapes(self, where: _PATH, text: str) -> bool:
        """Report a path that leaves the manifest's folder once ``..`` (or ``~``, or an
        absolute path) is taken into account, lexically. A reviewed manifest must not be
        able to upload files from elsewhere on the machine running it. A symlink inside
        the folder that points out of it is refused too, where the files are resolved
        (``image_paths.Containment``), unless the command runs with
        ``--allow-outside-links`` (shared dataset mounts).
        A NUL character, which no file name can hold, is reported here too."""
        if "\x00" in text:
            self.report(where, f"{_NUL}: {text!r}")
            return True
        if self.inside(image_paths.absolute(self.folder, text)):
            return False
        self.report(where, f"{_ESCAPES}: {text}")
        return True

    def check_files(self) -> None:
        """Check every used file once (threaded), then report at each place it is used."""
        if not self._uses:
            return
        outside: dict[Path, str] = {}
        problems = find_problems(
            (p for u in self._uses for p in u.paths),
            decode=self.check_images,
            stats=self.stats,
            contain=self._contain,
            outside=outside,
        )
        if not problems and not outside:
            return
        for use in self._uses:
            for path in use.paths:
                problem = problems.get(path)
                if problem:
                    self.report(use.where, f"{problem}: {use.shown or self.shown(path)}")
                elif path in outside:
                    self.report_leaves(use.where, use.shown or self.shown(path), outside[path])

    def shown(self, path: Path) -> str:
        """How to name a file found through a folder or glob: relative to the manifest."""
        try:
            rel = os.path.relpath(path, self.folder)
        except ValueError:
            return str(path)
        return str(path) if rel.startswith("..") else rel
