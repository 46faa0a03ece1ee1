"""Plans as text, JSON or Markdown, for one manifest or many.

Pure functions from values to strings, so every view is testable without a terminal. The
rules below hold for every view of this package (``status``, ``summary``), too.

Job names, file names, reasons, messages, diffs and trigger words come from outside (a pull
request, the lockfile, the API), and these views end up in terminals, CI logs and pull-request
comments. So (STYLE habit 13):

- text: each outside string through ``logsetup.clean`` (on one line, control characters
  shown escaped: ``\x1b``, ``\n``, ``\u202e``), the whole view through ``logsetup.guard``
  (no line starts a CI workflow command: ``\x3a:error ::...``; ``##[`` becomes ``#\x23[``);
- rich: outside strings as ``rich.text.Text`` (never markup), cleaned and guarded;
- JSON: ``logsetup.json_safe`` (the same data, with C1/bidi/``##[`` written as escapes);
- Markdown: every outside string a code span (``md_code``), where nothing is markup, no
  link, image, HTML or @mention, and that cannot leave its table cell.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from runner.engine.plan import ACTIONS, Change, Plan
from runner.logsetup import clean, clean_lines, guard, json_safe

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
PRUNE_HEADING = "will be dropped from the lockfile (--prune; no longer in the manifest)"
# ANSI colours of the text view on a terminal (``plan_text(color=True)``); only our own words
# and symbols are coloured, never outside text, which stays cleaned (no escape of its own).
COLORS = {
    "create": "32",  # green
    "replace": "33",  # yellow
    "resume": "36",  # cyan
    "retry": "33",
    "blocked": "1;31",  # bold red
    "noop": "2",  # dim
    "orphan": "2",
    "prune": "31",  # red: entries go
}


def _paint(text: str, code: str, color: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if color else text


def plan_document(plan: Plan) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": 1,
        "manifest": plan.manifest,
        "summary": plan.summary(),
        "jobs": [_job_document(c) for c in plan.changes],
    }
    if plan.trust is not None:  # where the key goes, and trust changes (runner.engine.trust)
        doc["trust"] = plan.trust.to_dict()
    if plan.prune:  # plan --prune: the orphans would be dropped
        doc["prune"] = True
    return doc


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


# Long values (a Kontext prompt) are shown around their first difference, this wide.
SHOWN_WIDTH = 40


def _value(value: Any) -> str:
    return "(none)" if value is None else str(value)


def shorten_pair(old: str, new: str, width: int = SHOWN_WIDTH) -> tuple[str, str]:
    """``old`` and ``new`` cut to about ``width`` characters each, around where they first
    differ (so two long prompts that share a start still read as different), ``…`` marking
    each cut."""
    if len(old) <= width and len(new) <= width:
        return old, new
    common = 0
    for a, b in zip(old, new, strict=False):
        if a != b:
            break
        common += 1
    # From the start, unless they share a long start: then from a little before the change.
    start = common - width // 4 if common > width // 2 else 0

    def cut(text: str) -> str:
        if len(text) <= width:
            return text
        begin = min(start, max(0, len(text) - width))
        piece = text[begin : begin + width]
        return ("…" if begin else "") + piece + ("…" if begin + width < len(text) else "")

    return cut(old), cut(new)


def _why_parts(change: Change) -> list[str | tuple[str, str, str]]:
    """The reasons, each changed value as ``(field, old, new)`` in place of its reason
    (long values shortened)."""
    shown: dict[str, str | tuple[str, str, str]] = {
        key: (key, *shorten_pair(_value(old), _value(new))) for key, old, new in change.diff
    }
    parts = [shown.pop(r, r) for r in change.reasons if r not in _SELF_EVIDENT]
    return [*parts, *shown.values()]


def _why(change: Change) -> str:
    """The reasons as text, each changed value as ``field: old → new``; every one cleaned."""
    return ", ".join(
        clean(p) if isinstance(p, str) else f"{clean(p[0])}: {clean(p[1])} → {clean(p[2])}"
        for p in _why_parts(change)
    )


def dumps(doc: Any) -> str:
    """A JSON document for stdout: indented, non-ASCII as it is, safe in a CI log."""
    return json_safe(json.dumps(doc, indent=2, ensure_ascii=False)) + "\n"


def plan_json(plan: Plan) -> str:
    return dumps(plan_document(plan))


def _summary_line(plan: Plan) -> str:
    return "Plan: " + _counts_phrase(plan.summary()) + "."


def _counts_phrase(counts: dict[str, int]) -> str:
    """The counts in the actions' own words (DESIGN section 5), as markdown and json say them."""
    return ", ".join(f"{counts[action]} {action}" for action in ACTIONS)


def plan_text(plan: Plan, *, show_noop: bool = False, color: bool = False) -> str:
    """The plan for a person: a group per action (``color``: ANSI colours, for a terminal)."""
    lines = [f"{clean(plan.manifest)}:"]
    for action in ACTIONS:
        changes = plan.with_action(action)
        if not changes or (action == "noop" and not show_noop):
            continue
        pruned = action == "orphan" and plan.prune
        code = COLORS["prune" if pruned else action]
        heading = PRUNE_HEADING if pruned else HEADINGS[action]
        symbol = "-" if pruned else SYMBOLS[action]
        lines.append("")
        lines.append(_paint(f"  {len(changes)} job(s) {heading}:", code, color))
        for change in changes:
            why = "" if pruned else _why(change)
            why = f"  ({why})" if why else ""
            lines.append(f"    {_paint(f'{symbol:>3}', code, color)} {clean(change.name)}{why}")
    if not plan.has_changes and not plan.with_action("orphan"):
        lines.append("")
        lines.append("  No changes. Every job is up to date with the lockfile.")
    lines.append("")
    lines.append(_paint(_summary_line(plan), "1", color))
    return guard("\n".join(lines) + "\n")


# -- Markdown ------------------------------------------------------------------------------
# GitHub renders a plan comment: emphasis, links, images, raw HTML, @mentions and #refs in
# plain text. Inside a code span none of them exist, so every outside string is one. What
# is left to handle: backticks (a longer fence), a line break (escaped by ``clean``) and
# ``|``, which GFM splits table cells on before any inline parsing, even inside a code
# span: it needs an odd number of backslashes before it (``\\`` is an escaped backslash,
# so ``\\|`` would end the cell).

_PIPE = re.compile(r"(\\*)\|")
_BACKTICKS = re.compile(r"`+")
# Our own words (reasons such as "new job", field names): plain text is safe for these.
_PLAIN = re.compile(r"[A-Za-z0-9 ,;()-]+")
_FIELD = re.compile(r"[a-z][a-z_]*")


def _pipes(text: str) -> str:
    return _PIPE.sub(lambda m: m.group(1) * 2 + "\\|", text)


def md_code(text: str) -> str:
    """``text`` as a Markdown code span that stays in its table cell: nothing inside it is
    markup, a link, HTML or a mention. An empty string is shown as ``(empty)``."""
    text = _pipes(clean(text))
    if not text:
        return "(empty)"
    fence = "`" * (max((len(run) for run in _BACKTICKS.findall(text)), default=0) + 1)
    pad = " " if text[0] in "` " or text[-1] in "` " else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _md_words(text: str) -> str:
    """A reason: plain if it is only words and simple punctuation, else a code span."""
    return text if _PLAIN.fullmatch(text) else md_code(text)


def _md_why(change: Change) -> str:
    parts = _why_parts(change) or list(change.reasons)
    return ", ".join(
        _md_words(p) if isinstance(p, str)
        else f"{p[0] if _FIELD.fullmatch(p[0]) else md_code(p[0])}: {md_code(p[1])} → {md_code(p[2])}"
        for p in parts
    )


def _md_fenced(text: str) -> list[str]:
    """A fenced code block holding ``text`` (line breaks kept), with a fence longer than
    any run of backticks in it, so no line of it can close the block."""
    body = clean_lines(text)
    fence = "`" * max(3, max((len(run) for run in _BACKTICKS.findall(body)), default=0) + 1)
    return [f"{fence}text", *body.split("\n"), fence]


def plan_markdown(plan: Plan) -> str:
    counts = plan.summary()
    lines = [
        f"### runner plan: {md_code(plan.manifest)}",
        "",
        " · ".join(f"**{counts[a]}** {a}" for a in ACTIONS),
        "",
    ]
    shown = [c for c in plan.changes if c.action != "noop"]
    if shown:
        lines += ["| action | job | why |", "|---|---|---|"]
        for change in shown:
            action = "orphan (pruned)" if change.action == "orphan" and plan.prune else change.action
            lines.append(f"| {action} | {md_code(change.name)} | {_md_why(change)} |")
    else:
        lines.append("No changes: every job is up to date with the lockfile.")
    return guard("\n".join(lines) + "\n")


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
    lines += [
        f"  not planned: {clean(name)}: {clean(message.split(chr(10))[0]) if message else ''}"
        for name, message in failed
    ]
    return guard("\n".join(lines) + "\n")


def plans_json(plans: list[Plan], failed: list[tuple[str, str]]) -> str:
    """Several manifests: each manifest's plan document (the single-manifest shape) in a list."""
    doc = {
        "version": 1,
        "summary": total_summary(plans),
        "manifests": [plan_document(p) for p in plans],
        "errors": [{"manifest": name, "message": message} for name, message in failed],
    }
    return dumps(doc)


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
        lines.append(f"| {md_code(plan.manifest)} | " + " | ".join(str(counts[a]) for a in ACTIONS) + " |")
    for name, _message in failed:
        lines.append(f"| {md_code(name)} | " + " | ".join("—" for _ in ACTIONS) + " |")
    lines.append("| **total** | " + " | ".join(f"**{totals[a]}**" for a in ACTIONS) + " |")
    for name, message in failed:
        lines += ["", f"**{md_code(name)} could not be planned:**", "", *_md_fenced(message)]
    body = guard("\n".join(lines) + "\n")
    return body + "".join("\n" + plan_markdown(p) for p in plans)


