"""Trust changes: where a run would send the API key, and from which variable, against the lockfile.

A pull request can change ``api.endpoint`` and ``api.api_key_env``; the jobs would still
plan as ``resume`` or ``noop`` and the key would quietly go to another host (or another
secret would be sent as the key). So every plan shows where the key goes, and a *trust
change* — the target (``endpoint.target_identity``) is not one the lockfile's entries were
made against (``endpoint.accepts``), or the key variable is not one they were made with —
is shown first and flagged, and, unless the key would stay on this machine (the sandbox or
a loopback endpoint), ``apply`` and ``--refresh`` refuse it before reading the key, until
an apply is run with ``--allow-trust-change`` after review.

The baseline is the lockfile's entries: their ``api`` (entries from before ``api`` existed
say nothing about the endpoint) and their ``api_key_env`` (entries from before it existed
count as made with the default, ``VIMMERSE_API_KEY``). A lockfile with no entries has no
baseline: nothing to compare, so no trust change (the plan still says where the key goes).

Pure: no I/O, no key; the views are plain functions over values, like ``runner.views.plan``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from runner.api.endpoint import accepts, is_loopback_identity
from runner.errors import UsageError
from runner.models import ApiSettings, LockEntry

DEFAULT_KEY_ENV = ApiSettings.api_key_env
APPROVE_FLAG = "--allow-trust-change"


@dataclass(frozen=True)
class TrustChange:
    field: str  # "api.endpoint" or "api.api_key_env"
    old: tuple[str, ...]  # what the lockfile's entries were made with, sorted
    new: str

    def text(self) -> str:
        return f"{self.field}: {', '.join(map(_clean, self.old))} → {_clean(self.new)}"


@dataclass(frozen=True)
class Trust:
    api: str  # the target's identity: where the key would be sent
    api_key_env: str  # the variable it would be read from
    changes: tuple[TrustChange, ...] = ()
    # The manifest's ``variables``: what apply reads from the environment and sends in
    # ``webhook_url`` besides the key. Shown so a reviewer sees a new one in the plan.
    variables: tuple[str, ...] = ()

    @property
    def local(self) -> bool:
        """The key would not leave this machine (the embedded sandbox or a loopback origin)."""
        return is_loopback_identity(self.api)

    @property
    def needs_approval(self) -> bool:
        return bool(self.changes) and not self.local

    def to_dict(self) -> dict[str, Any]:
        return {
            "api": self.api,
            "api_key_env": self.api_key_env,
            "changes": [{"field": c.field, "old": list(c.old), "new": c.new} for c in self.changes],
            "needs_approval": self.needs_approval,
            "variables": list(self.variables),
        }


def assess(
    api: str,
    api_key_env: str,
    entries: Mapping[str, LockEntry] | Iterable[LockEntry],
    variables: Iterable[str] = (),
) -> Trust:
    """Compare the target (``api``, an ``endpoint.api_identity``) and the key variable with
    the entries (all of them: orphans were made somewhere too)."""
    values = list(entries.values()) if isinstance(entries, Mapping) else list(entries)
    changes: list[TrustChange] = []
    made = sorted({e.api for e in values if e.api})
    if made and not any(accepts(api, m) for m in made):
        changes.append(TrustChange("api.endpoint", tuple(made), api))
    envs = sorted({e.api_key_env or DEFAULT_KEY_ENV for e in values})
    if envs and api_key_env not in envs:
        changes.append(TrustChange("api.api_key_env", tuple(envs), api_key_env))
    return Trust(api, api_key_env, tuple(changes), tuple(variables))


def refuse(trust: Trust, manifest: str, doing: str) -> None:
    """Raise ``UsageError`` (exit 1) when ``trust`` needs an approval this run does not have."""
    if not trust.needs_approval:
        return
    changes = "; ".join(c.text() for c in trust.changes)
    raise UsageError(
        f"{manifest}: trust change ({changes}): the lockfile's entries were made with another "
        f"endpoint or key variable, and {doing} would send the key in ${trust.api_key_env} to "
        f"{_clean(trust.api)}. Nothing was sent. Review the change (runner plan shows it); if it is "
        f"intended, run runner apply once with {APPROVE_FLAG}."
    )


def key_env_amendments(entries: Mapping[str, LockEntry], api_key_env: str, *, approved: bool) -> dict[str, LockEntry]:
    """The entries whose ``api_key_env`` an apply that passed the trust check records.

    Entries from before the field existed gain it; after an approved change every entry
    takes the new variable (it is the one runner now uses for them), so the approval is
    needed once, not on every apply.
    """
    return {
        name: entry.evolve(api_key_env=api_key_env)
        for name, entry in entries.items()
        if entry.api_key_env is None or (approved and entry.api_key_env != api_key_env)
    }


# -- views ----------------------------------------------------------------------------------


def _clean(text: str) -> str:
    """Outside text (an endpoint from a manifest or lockfile) on one printable line, with
    nothing a CI runner would take for a command (``##[``)."""
    if not text.isprintable():
        text = json.dumps(text, ensure_ascii=True)[1:-1]
    return text.replace("##", "#\\x23")


def _md(text: str) -> str:
    """A code span that nothing in ``text`` can break out of."""
    cleaned = _clean(text).replace("`", "'").replace("|", "\\|")
    return f"`{cleaned}`"


def target_line(trust: Trust) -> str:
    where = "this machine" if trust.local else "over the network"
    line = f"api: {_clean(trust.api)} (key from ${trust.api_key_env}, {where})"
    if trust.variables:
        line += "; webhook_url expands " + ", ".join(f"${v}" for v in trust.variables)
    return line


def text_block(trust: Trust) -> list[str]:
    """Lines for the text plan, indented like its sections; the warning first when flagged."""
    lines = [f"  {target_line(trust)}"]
    if not trust.changes:
        return lines
    lines.append("")
    head = "TRUST CHANGE: the key would go somewhere the lockfile's entries were not made"
    lines.append(f"  ! {head}:")
    lines += [f"      {c.text()}" for c in trust.changes]
    if trust.needs_approval:
        lines.append(f"    runner apply and --refresh refuse this until an apply is run with {APPROVE_FLAG}.")
    else:
        lines.append("    The key stays on this machine (sandbox or loopback): no approval needed.")
    return lines


def with_text(plan_text: str, trust: Trust) -> str:
    """The text plan with the target and any trust change right under its first line."""
    head, sep, rest = plan_text.partition("\n")
    return head + sep + "\n".join(text_block(trust)) + "\n" + rest


def markdown_block(trust: Trust, manifest: str | None = None) -> list[str]:
    where = "this machine" if trust.local else "over the network"
    line = f"API: {_md(trust.api)} · key from {_md('$' + trust.api_key_env)} ({where})"
    if trust.variables:
        line += " · `webhook_url` expands " + ", ".join(_md("$" + v) for v in trust.variables)
    if not trust.changes:
        return [line, ""]
    about = f" in {_md(manifest)}" if manifest else ""
    out = [
        "> [!WARNING]",
        f"> **Trust change{about}**: the API key would go somewhere the lockfile's entries were not made.",
    ]
    for c in trust.changes:
        out.append(f"> - {_md(c.field)}: {', '.join(map(_md, c.old))} → {_md(c.new)}")
    if trust.needs_approval:
        out.append(f"> `runner apply` and `--refresh` refuse this until an apply is run with `{APPROVE_FLAG}`.")
    else:
        out.append("> The key stays on this machine (sandbox or loopback): no approval needed.")
    return [*out, "", line, ""]


def with_markdown(plan_markdown: str, trust: Trust) -> str:
    """The markdown plan with the target (and a warning block) under its heading."""
    head, sep, rest = plan_markdown.partition("\n")
    if not head.startswith("#"):
        return "\n".join(markdown_block(trust)) + "\n" + plan_markdown
    return head + sep + "\n" + "\n".join(markdown_block(trust)) + rest


def catalog_markdown(items: list[tuple[str, Trust]]) -> str:
    """The top of a many-manifest markdown plan: every trust change, before any table."""
    flagged = [(m, t) for m, t in items if t.changes]
    if not flagged:
        return ""
    lines = ["> [!WARNING]", "> **Trust changes**: the API key would go somewhere a lockfile's entries were not made."]
    for manifest, trust in flagged:
        for c in trust.changes:
            lines.append(f"> - {_md(manifest)}: {_md(c.field)}: {', '.join(map(_md, c.old))} → {_md(c.new)}")
    if any(t.needs_approval for _, t in flagged):
        lines.append(f"> `runner apply` and `--refresh` refuse these until an apply is run with `{APPROVE_FLAG}`.")
    return "\n".join(lines) + "\n\n"
