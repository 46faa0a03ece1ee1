"""Diagnostics: one problem found in a user's file, pointing at file, line, column and key path.

They accumulate (like Terraform's) so a user sees every problem at once, sorted by place.
File names, key paths and messages come from outside (a pull request names the files and
writes the keys and values quoted in messages), so ``format`` shows each on one line with
its control characters escaped, and no line it makes can be taken for a CI command.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from runner.logsetup import clean, guard

Severity = Literal["error", "warning"]


@dataclass(frozen=True, order=True)
class Diagnostic:
    file: str
    line: int  # 1-based; 0 when the problem is about the whole file
    col: int  # 1-based; 0 when unknown
    path: str  # key path such as ``jobs[3].pairs[1].end``; "" for the document
    message: str
    severity: Severity = "error"

    def format(self) -> str:
        where = clean(self.file)
        if self.line:
            where += f":{self.line}:{self.col or 1}"
        prefix = "warning: " if self.severity == "warning" else ""
        key = f"{clean(self.path)}: " if self.path else ""
        return guard(f"{where}: {prefix}{key}{clean(self.message)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sort_diagnostics(diags: list[Diagnostic]) -> list[Diagnostic]:
    """Sort by position; drop exact duplicates (schema and checks may find the same thing)."""
    return sorted(set(diags), key=lambda d: (d.file, d.line, d.col, d.path, d.message))


def format_path(parts: list[str | int] | tuple[str | int, ...]) -> str:
    """``["jobs", 3, "pairs", 1, "end"]`` -> ``jobs[3].pairs[1].end``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
