"""make_plan(jobs, lock) -> Plan: which action each job gets. Pure: no I/O, no clock.

| action  | when                                                             |
|---------|------------------------------------------------------------------|
| create  | no lock entry (or one that never got submitted: ``pending``)     |
| replace | lock entry with another fingerprint: trains anew                 |
| resume  | same fingerprint, still ``training``: follow it, never resubmit  |
| retry   | same fingerprint, ``failed``                                     |
| blocked | same fingerprint, ``uncertain``/``submitting``: the POST's answer |
|         | was lost; see apply for when it is replayed                      |
| noop    | same fingerprint, ``succeeded``                                  |
| orphan  | lock entry whose job left the manifest                           |

Given ``api`` (the identity of the endpoint the run targets, ``endpoint.api_identity``),
an entry made against an API the target does not accept counts as absent: ``create``
with the reason ``endpoint``, whatever its status (DESIGN section 4).

``Plan.trust`` (``runner.engine.trust``, set by the commands with ``with_trust``) says where the
key would go and what changed against the lockfile; a trust change is a change for
``--detailed-exitcode`` even when every job is ``noop``.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from runner.api.endpoint import accepts, made_at
from runner.api.wire import image_count
from runner.engine.trust import Trust, assess
from runner.errors import UsageError
from runner.models import Fingerprinted, LockEntry

Action = Literal["create", "replace", "resume", "retry", "blocked", "noop", "orphan"]
ACTIONS: tuple[Action, ...] = (
    "create",
    "replace",
    "resume",
    "retry",
    "blocked",
    "noop",
    "orphan",
)
# The actions that start a paid training (and ``blocked`` with --resubmit-uncertain).
SUBMITTING_ACTIONS = frozenset({"create", "replace", "retry"})
# The actions apply needs the API for: every change but noop and orphan (which only touch
# the lockfile). They are also what --detailed-exitcode calls "changes": anything apply
# would do, or that needs a person.
API_ACTIONS = frozenset({*SUBMITTING_ACTIONS, "resume", "blocked"})
PRUNE_REASON = "dropped from the lockfile by --prune"
REASON_FIELDS = ("option", "finetune_type", "lora_prefix", "num_iterations", "prompt", "max_side", "jpeg_quality", "images")


@dataclass(frozen=True)
class Change:
    name: str
    action: Action
    fingerprint: str | None
    reasons: tuple[str, ...] = ()
    job: Fingerprinted | None = None
    entry: LockEntry | None = None
    # Changed values as (field, old, new), shown "field: old → new" by the views: strings,
    # integers (images: the count, num_iterations) or None (a field the request lacked).
    diff: tuple[tuple[str, Any, Any], ...] = ()


@dataclass(frozen=True)
class Plan:
    manifest: str
    changes: tuple[Change, ...]
    trust: Trust | None = None
    # ``plan --prune``: the orphans are shown as apply --prune would drop them (a change).
    prune: bool = False

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = dict.fromkeys(ACTIONS, 0)
        for change in self.changes:
            counts[change.action] += 1
        return counts

    @property
    def has_changes(self) -> bool:
        if self.trust is not None and self.trust.changes:
            return True
        changing = API_ACTIONS | {"orphan"} if self.prune else API_ACTIONS
        return any(c.action in changing for c in self.changes)

    def pruning(self) -> Plan:
        """This plan as ``apply --prune`` would run it: each orphan to be dropped."""
        changes = tuple(
            replace(c, reasons=(PRUNE_REASON,)) if c.action == "orphan" else c for c in self.changes
        )
        return replace(self, changes=changes, prune=True)

    def with_trust(
        self, api: str, api_key_env: str, entries: dict[str, LockEntry], variables: Sequence[str] = ()
    ) -> Plan:
        """This plan with ``trust``: the target and key variable against ``entries``, and
        the manifest's ``variables`` (shown)."""
        return replace(self, trust=assess(api, api_key_env, entries, variables))

    def with_action(self, *actions: str) -> list[Change]:
        return [c for c in self.changes if c.action in actions]

    def api_work(self) -> list[Change]:
        """The changes apply needs the API for (``API_ACTIONS``), in the plan's order."""
        return [c for c in self.changes if c.action in API_ACTIONS]


def _reasons(job: Fingerprinted, entry: LockEntry) -> tuple[str, ...]:
    if not entry.inputs:
        return ("fingerprint",)
    changed = [
        key
        for key in REASON_FIELDS
        if job.inputs.get(key) != entry.inputs.get(key)
    ]
    return tuple(changed) or ("fingerprint",)


def _diff(job: Fingerprinted, entry: LockEntry, reasons: Sequence[str]) -> tuple[tuple[str, Any, Any], ...]:
    """Old → new for each changed input the lockfile kept: the values themselves, and for
    ``images`` (kept as a digest) the counts, when they differ (same count: the reason alone)."""
    out: list[tuple[str, Any, Any]] = []
    for key in reasons:
        if key == "images":
            old, new = entry.images, image_count(job.job)
            if old and old != new:
                out.append(("images", old, new))
        elif key in REASON_FIELDS:
            out.append((key, entry.inputs.get(key), job.inputs.get(key)))
    return tuple(out)


def natural_key(name: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key putting ``a2`` before ``a10``: digit runs compare as numbers."""
    return tuple(
        (0, int(part), part) if part.isdigit() else (1, 0, part)
        for part in re.findall(r"\d+|\D+", name)
    )


def _action_for(job: Fingerprinted, entry: LockEntry | None) -> tuple[Action, tuple[str, ...]]:
    if entry is None:
        return "create", ("new job",)
    if entry.fingerprint != job.fingerprint:
        return "replace", _reasons(job, entry)
    status = entry.status
    if status == "succeeded":
        return "noop", ()
    if status == "training":
        return "resume", ("still training",)
    if status == "failed":
        message = (entry.error or {}).get("message") or "failed"
        return "retry", (f"previous attempt failed: {message}",)
    if status in ("uncertain", "submitting"):
        return "blocked", ("the answer to its submission was lost; it may be training already",)
    return "create", ("never submitted",)


def check_targets(targets: Sequence[str], known: Iterable[str]) -> None:
    names = set(known)
    for target in targets:
        if target not in names:
            hint = difflib.get_close_matches(target, sorted(names), n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise UsageError(f"--target {target}: no job or lock entry by that name{extra}")


def make_plan(
    manifest: str,
    jobs: Sequence[Fingerprinted],
    entries: dict[str, LockEntry],
    targets: Sequence[str] = (),
    *,
    api: str | None = None,
) -> Plan:
    """One change per manifest job plus one per orphaned lock entry, in natural order of
    name (``a2`` before ``a10``).

    ``api``: the target's identity; None skips the endpoint check.
    """
    wanted = set(targets)
    if targets:
        check_targets(targets, [fp.job.name for fp in jobs] + list(entries))
    changes: list[Change] = []
    in_manifest = set()
    for fp in jobs:
        in_manifest.add(fp.job.name)
        if wanted and fp.job.name not in wanted:
            continue
        entry = entries.get(fp.job.name)
        if api is not None and entry is not None:
            made = made_at(entry, api)
            if not accepts(api, made):
                changes.append(
                    Change(fp.job.name, "create", fp.fingerprint, ("endpoint",), fp, entry, (("api", made, api),))
                )
                continue
        action, reasons = _action_for(fp, entry)
        diff = _diff(fp, entry, reasons) if action == "replace" and entry is not None else ()
        changes.append(Change(fp.job.name, action, fp.fingerprint, reasons, fp, entry, diff))
    for name, entry in entries.items():
        if name in in_manifest or (wanted and name not in wanted):
            continue
        changes.append(
            Change(name, "orphan", entry.fingerprint, ("job is no longer in the manifest",), None, entry)
        )
    changes.sort(key=lambda c: natural_key(c.name))
    return Plan(manifest, tuple(changes))
