"""Views: plans, apply summaries and status as text, JSON or Markdown.

Pure functions from values to strings, so every view is testable without a terminal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from runner.endpoint import accepts, made_at
from runner.lockfile import LockEntry
from runner.plan import ACTIONS, Change, Plan

if TYPE_CHECKING:  # runner.apply brings httpx and anyio, which plan and status never use
    from runner.apply import ApplyResult

SYMBOLS = {
    "create": "+",
    "replace": "-/+",
    "resume": "~",
    "retry": "↻",
    "blocked": "!",
    "noop": " ",
    "orphan": "?",
}
HEADINGS = {
    "create": "will be created",
    "replace": "will be replaced (inputs changed; trains anew, new trigger word)",
    "resume": "will be followed (still training)",
    "retry": "will be retried (failed before)",
    "blocked": "are blocked (answer lost; see --resubmit-uncertain)",
    "noop": "are up to date",
    "orphan": "are no longer in the manifest (kept; --prune drops them)",
}


def plan_document(plan: Plan) -> dict[str, Any]:
    return {
        "version": 1,
        "manifest": plan.manifest,
        "summary": plan.summary(),
        "jobs": [_job_document(c) for c in plan.changes],
    }


def _job_document(change: Change) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "name": change.name,
        "action": change.action,
        "fingerprint": change.fingerprint,
        "reasons": list(change.reasons),
    }
    if change.diff:  # only when a value is known to have changed: other jobs read as before
        doc["diff"] = {key: {"old": old, "new": new} for key, old, new in change.diff}
    return doc


# Reasons that only restate the action: not repeated after the job's name.
_SELF_EVIDENT = frozenset({"new job"})


def _why(change: Change) -> str:
    """The reasons, each changed value as ``field: old → new`` (in place of its reason)."""
    shown = {key: f"{key}: {old} → {new}" for key, old, new in change.diff}
    parts = [shown.pop(r, r) for r in change.reasons if r not in _SELF_EVIDENT]
    return ", ".join([*parts, *shown.values()])


def plan_json(plan: Plan) -> str:
    return json.dumps(plan_document(plan), indent=2, ensure_ascii=False) + "\n"


def _summary_line(plan: Plan) -> str:
    return "Plan: " + _counts_phrase(plan.summary()) + "."


def _counts_phrase(counts: dict[str, int]) -> str:
    parts = [
        f"{counts['create']} to create",
        f"{counts['replace']} to replace",
        f"{counts['resume']} to resume",
        f"{counts['retry']} to retry",
        f"{counts['blocked']} blocked",
        f"{counts['noop']} unchanged",
        f"{counts['orphan']} orphaned",
    ]
    return ", ".join(parts)


def plan_text(plan: Plan, *, show_noop: bool = False) -> str:
    lines = [f"{plan.manifest}:"]
    for action in ACTIONS:
        changes = plan.with_action(action)
        if not changes or (action == "noop" and not show_noop):
            continue
        lines.append("")
        lines.append(f"  {len(changes)} job(s) {HEADINGS[action]}:")
        for change in changes:
            why = _why(change)
            why = f"  ({why})" if why else ""
            lines.append(f"    {SYMBOLS[action]:>3} {change.name}{why}")
    if not plan.has_changes and not plan.with_action("orphan"):
        lines.append("")
        lines.append("  No changes. Every job is up to date with the lockfile.")
    lines.append("")
    lines.append(_summary_line(plan))
    return "\n".join(lines) + "\n"


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def plan_markdown(plan: Plan) -> str:
    counts = plan.summary()
    lines = [
        f"### runner plan: `{plan.manifest}`",
        "",
        " · ".join(f"**{counts[a]}** {a}" for a in ACTIONS),
        "",
    ]
    shown = [c for c in plan.changes if c.action != "noop"]
    if shown:
        lines += ["| action | job | why |", "|---|---|---|"]
        for change in shown:
            lines.append(
                f"| {change.action} | `{_md_escape(change.name)}` | {_md_escape(_why(change) or ', '.join(change.reasons))} |"
            )
    else:
        lines.append("No changes: every job is up to date with the lockfile.")
    return "\n".join(lines) + "\n"


# -- many manifests ----------------------------------------------------------------------
# One summary after the per-manifest views, so a CI log or a pull-request comment over a
# whole catalog starts (markdown) or ends (text) with the totals a reviewer needs.


def total_summary(plans: Iterable[Plan]) -> dict[str, int]:
    totals: dict[str, int] = dict.fromkeys(ACTIONS, 0)
    for plan in plans:
        for action, n in plan.summary().items():
            totals[action] += n
    return totals


def plans_total_text(plans: list[Plan], failed: list[tuple[str, str]]) -> str:
    """The closing line of a multi-manifest text plan (and the manifests that could not plan)."""
    lines = [f"Total over {len(plans) + len(failed)} manifests: {_counts_phrase(total_summary(plans))}."]
    lines += [f"  not planned: {name}: {message.splitlines()[0] if message else ''}" for name, message in failed]
    return "\n".join(lines) + "\n"


def plans_json(plans: list[Plan], failed: list[tuple[str, str]]) -> str:
    """Several manifests: each manifest's plan document (the single-manifest shape) in a list."""
    doc = {
        "version": 1,
        "summary": total_summary(plans),
        "manifests": [plan_document(p) for p in plans],
        "errors": [{"manifest": name, "message": message} for name, message in failed],
    }
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def plans_markdown(plans: list[Plan], failed: list[tuple[str, str]]) -> str:
    """A pull-request comment for a catalog: a totals table first, then one section per manifest."""
    totals = total_summary(plans)
    lines = [
        f"## runner plan: {len(plans) + len(failed)} manifests",
        "",
        "| manifest | " + " | ".join(ACTIONS) + " |",
        "|---|" + "---:|" * len(ACTIONS),
    ]
    for plan in plans:
        counts = plan.summary()
        lines.append(f"| `{_md_escape(plan.manifest)}` | " + " | ".join(str(counts[a]) for a in ACTIONS) + " |")
    for name, _message in failed:
        lines.append(f"| `{_md_escape(name)}` | " + " | ".join("—" for _ in ACTIONS) + " |")
    lines.append("| **total** | " + " | ".join(f"**{totals[a]}**" for a in ACTIONS) + " |")
    for name, message in failed:
        lines += ["", f"**`{_md_escape(name)}` could not be planned:**", "", "```text", message, "```"]
    body = "\n".join(lines) + "\n"
    return body + "".join("\n" + plan_markdown(p) for p in plans)


def status_rows(
    entries: dict[str, LockEntry], names: Iterable[str] | None = None, *, api: str | None = None
) -> list[dict[str, Any]]:
    """One row per job: the entry's fields (not ``inputs``), where it was made (``api``,
    inferred for entries older than the field) and ``made_elsewhere``: true when ``api``,
    the target's identity, does not accept it (``endpoint.accepts``)."""
    rows = []
    for name in sorted(names if names is not None else entries):
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
    table = [header]
    for row in rows:
        error = row.get("error") or {}
        detail = "; ".join(filter(None, (_elsewhere(row), (error.get("message") or "")[:80])))
        table.append(
            (
                row["name"],
                row.get("status", ""),
                row.get("trigger_word") or "-",
                row.get("option") or "-",
                str(row.get("images", "-")),
                detail,
            )
        )
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in table) + "\n"


def apply_summary(result: ApplyResult) -> str:
    counts: dict[str, int] = {}
    for o in result.outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    lines = []
    for o in sorted(result.outcomes, key=lambda o: o.name):
        if o.action == "noop":
            continue
        word = o.trigger_word or "-"
        detail = f"  {o.message}" if o.message and o.status != "succeeded" else ""
        lines.append(f"  {o.name:<30} {o.action:<8} {o.status:<10} {word}{detail}")
    for name in result.pruned:
        lines.append(f"  {name:<30} {'orphan':<8} {'pruned':<10} -")
    head = "Apply: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) if counts else "Apply: nothing to do"
    return "\n".join([head, *lines]) + "\n"


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

    table = Table(title=title, title_justify="left", header_style="bold", expand=False)
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
            cell = Text(f"{status} (made by {row.get('api')})", style="bold yellow")
        else:
            cell = Text(status, style=STATUS_STYLES.get(status, ""))
        table.add_row(
            row["name"],
            cell,
            row.get("trigger_word") or "-",
            row.get("option") or "-",
            row.get("finetune_type") or "-",
            str(row.get("images", "-")),
            str(row.get("finished_at") or "-"),
            detail,
        )
    return table
