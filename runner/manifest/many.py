"""Many manifests on one command line: expanding globs, and the worst exit code wins.

A catalog of thousands of LoRAs scales out as one manifest per product line, so
``validate``, ``plan``, ``apply`` and ``status`` take several manifests and globs
(``runner plan 'catalog/*.yaml'``). Globs are expanded here, not only by the shell, so the
same command works quoted in CI YAML, on Windows shells and from ``subprocess`` lists.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence

from runner.errors import UsageError

_GLOB_CHARS = frozenset("*?[")
# Written by runner beside every manifest; a glob such as ``*.yaml`` must not pick them up.
_NOT_MANIFESTS = (".lock.yaml", ".lock.yml")


def is_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


def expand_manifests(patterns: Sequence[str], *, lockfile: str | None = None) -> list[str]:
    """Every manifest the arguments name, in the order given, each glob sorted, no repeats.

    A plain path is kept as typed, even when it does not exist, so the command reports it
    at its place with the usual message. A glob that matches nothing is a usage error:
    in CI it almost always means a typo, and passing silently would skip a whole catalog.
    Lockfiles (``*.lock.yaml``) matched by a glob are skipped. ``--lockfile`` names one
    lockfile, so it is refused when the arguments name several manifests.
    """
    found: list[str] = []
    seen: set[str] = set()
    for pattern in patterns:
        if is_glob(pattern) and not os.path.exists(pattern):
            matches = [
                m
                for m in sorted(glob.glob(pattern, recursive=True))
                if os.path.isfile(m) and not m.endswith(_NOT_MANIFESTS)
            ]
            if not matches:
                raise UsageError(f"no manifest matches {pattern!r}")
        else:
            matches = [pattern]
        for match in matches:
            key = os.path.normcase(os.path.abspath(match))
            if key not in seen:
                seen.add(key)
                found.append(match)
    if lockfile and len(found) > 1:
        raise UsageError("--lockfile cannot be used with several manifests")
    return found


def worst(codes: Sequence[int]) -> int:
    """The exit code of a multi-manifest run: the most severe, not the highest number.

    130 (interrupted) first; then any failure (1, 3, 4: the highest); then 2 (``plan
    --detailed-exitcode``: changes), which is information, not a failure, so an invalid
    manifest (1) beside a changed one (2) still fails the CI check; then 0.
    """
    if 130 in codes:
        return 130
    failures = [c for c in codes if c not in (0, 2)]
    if failures:
        return max(failures)
    return 2 if 2 in codes else 0
