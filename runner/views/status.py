"""``runner status`` as text, JSON rows and a rich table; outside text handled as
``runner.views.plan``'s docstring says (cleaned, guarded, never markup)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from runner.api.endpoint import accepts, made_at
from runner.engine.plan import natural_key
from runner.logsetup import clean, guard, safe
from runner.models import LockEntry


def status_rows(
    entries: dict[str, LockEntry], names: Iterable[str] | None = None, *, api: str | None = None
) -> list[dict[str, Any]]:
    """One row per job: the entry's fields (not ``inputs``), where it was made (``api``,
    inferred for entries older than the field) and ``made_elsewhere``: true when ``api``,
    the target's identity, does not accept it (``endpoint.accepts``)."""
    rows = []
    for name in sorted(names if names is not None else entries, key=natural_key):
        entry = entries.get(name)
        if entry is None:
            rows.append({"name": name, "status": "absent", "api": None, "made_elsewhere": False})
            continue
        row = {"name": name, **entry.to_dict()}
        row.pop("inputs", None)
        if api is not None:
            row["api"] = made_at(entry, api)
            row["made_elsewhere"] = not accepts(api, row["api"])
        else:
            row["made_elsewhere"] = False
        rows.append(row)
    return rows


def _elsewhere(row: dict[str, Any]) -> str:
    return f"made elsewhere (by {row.get('api')})" if row.get("made_elsewhere") else ""


def status_text(rows: list[dict[str, Any]]) -> str:
    header = ("JOB", "STATUS", "TRIGGER WORD", "OPTION", "IMAGES", "DETAIL")
    table: list[tuple[str, ...]] = [header]
    for row in rows:
        error = row.get("error") or {}
        detail = "; ".join(filter(None, (_elsewhere(row), str(error.get("message") or "")[:80])))
        table.append(
            tuple(
                clean(str(cell))
                for cell in (
                    row["name"],
                    row.get("status", ""),
                    row.get("trigger_word") or "-",
                    row.get("option") or "-",
                    row.get("images", "-"),
                    detail,
                )
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return guard(
        "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table) + "\n"
    )


STATUS_STYLES = {
    "succeeded": "green",
    "failed": "bold red",
    "uncertain": "bold yellow",
    "submitting": "yellow",
    "training": "cyan",
    "pending": "dim",
    "absent": "dim",
}


def status_counts(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        status = str(row.get("status", ""))
        counts[status] = counts.get(status, 0) + 1
    return dict(sorted(counts.items()))


def status_counts_phrase(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {status}" for status, n in counts.items()) or "no jobs"


def status_table(rows: list[dict[str, Any]], title: str | None = None) -> Any:
    """The terminal view of ``runner status``: a rich Table (rich imported only here).

    Same columns as the piped view plus the type and finish time, with the status coloured
    so a failed or uncertain job stands out in a long catalog.
    """
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=Text(safe(title)) if title is not None else None,
        title_justify="left", header_style="bold", expand=False,
    )
    for header in ("job", "status", "trigger word", "option", "type", "images", "finished", "detail"):
        table.add_column(header, overflow="fold", justify="right" if header == "images" else "left")
    for row in rows:
        status = str(row.get("status", ""))
        error = row.get("error") or {}
        detail = str(error.get("message") or "")
        if error.get("status"):
            detail = f"{error['status']}: {detail}"
        if row.get("made_elsewhere"):
            # Not this API's: its word must not be read as ready here.
            cell = Text(safe(f"{status} (made by {row.get('api')})"), style="bold yellow")
        else:
            cell = Text(safe(status), style=STATUS_STYLES.get(status, ""))
        # Every cell a Text, never a str: rich would read "[...]" in outside text as markup.
        table.add_row(
            Text(safe(str(row["name"]))),
            cell,
            *(
                Text(safe(str(value)))
                for value in (
                    row.get("trigger_word") or "-",
                    row.get("option") or "-",
                    row.get("finetune_type") or "-",
                    row.get("images", "-"),
                    row.get("finished_at") or "-",
                    detail,
                )
            ),
        )
    return table
