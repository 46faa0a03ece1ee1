"""Views: plans, apply summaries and status as text, JSON or Markdown.

Pure functions from values to strings, so every view is testable without a terminal.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from runner.apply import ApplyResult
from runner.lockfile import LockEntry
from runner.plan import ACTIONS, Plan

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
        "jobs": [
            {
                "name": c.name,
                "action": c.action,
                "fingerprint": c.fingerprint,
                "reasons": list(c.reasons),
            }
            for c in plan.changes
        ],
    }


def plan_json(plan: Plan) -> str:
    return json.dumps(plan_document(plan), indent=2, ensure_ascii=False) + "\n"


def _summary_line(plan: Plan) -> str:
    counts = plan.summary()
    parts = [
        f"{counts['create']} to create",
        f"{counts['replace']} to replace",
        f"{counts['resume']} to resume",
        f"{counts['retry']} to retry",
        f"{counts['blocked']} blocked",
        f"{counts['noop']} unchanged",
        f"{counts['orphan']} orphaned",
    ]
    return "Plan: " + ", ".join(parts) + "."


def plan_text(plan: Plan, *, show_noop: bool = False) -> str:
    lines = [f"{plan.manifest}:"]
    for action in ACTIONS:
        changes = plan.with_action(action)
        if not changes or (action == "noop" and not show_noop):
            continue
        lines.append("")
        lines.append(f"  {len(changes)} job(s) {HEADINGS[action]}:")
        for change in changes:
            why = f"  ({', '.join(change.reasons)})" if change.reasons and action not in ("create",) else ""
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
                f"| {change.action} | `{_md_escape(change.name)}` | {_md_escape(', '.join(change.reasons))} |"
            )
    else:
        lines.append("No changes: every job is up to date with the lockfile.")
    return "\n".join(lines) + "\n"


def status_rows(entries: dict[str, LockEntry], names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    rows = []
    for name in sorted(names if names is not None else entries):
        entry = entries.get(name)
        if entry is None:
            rows.append({"name": name, "status": "absent"})
            continue
        row = {"name": name, **entry.to_dict()}
        row.pop("inputs", None)
        rows.append(row)
    return rows


def status_text(rows: list[dict[str, Any]]) -> str:
    header = ("JOB", "STATUS", "TRIGGER WORD", "OPTION", "IMAGES", "DETAIL")
    table = [header]
    for row in rows:
        error = row.get("error") or {}
        table.append(
            (
                row["name"],
                row.get("status", ""),
                row.get("trigger_word") or "-",
                row.get("option") or "-",
                str(row.get("images", "-")),
                (error.get("message") or "")[:80],
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
