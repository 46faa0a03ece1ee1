"""The result of ``runner apply``: the headline, a row per job, the lockfile and the
reminder to commit it, and after Ctrl-C what still trains and how to resume."""

from __future__ import annotations

from runner.engine.plan import natural_key
from runner.logsetup import clean, guard
from runner.models import ApplyResult


def apply_counts(result: ApplyResult) -> dict[str, int]:
    """How the run ended, job by job: ``unchanged`` for a job that was already done (it
    is not counted as succeeded, with ``--target`` or not), ``pruned`` for a dropped
    entry, ``training`` for one the service still trains (interrupted, ``--no-wait``)."""
    counts: dict[str, int] = {}
    seen = set()
    for o in result.outcomes:
        seen.add(o.name)
        status = "unchanged" if o.action == "noop" else o.status
        counts[status] = counts.get(status, 0) + 1
    for name in result.on_service:
        if name not in seen:
            counts["training"] = counts.get("training", 0) + 1
    if result.pruned:
        counts["pruned"] = len(result.pruned)
    return dict(sorted(counts.items()))


def apply_rows(result: ApplyResult) -> list[tuple[str, str, str, str, str]]:
    """(job, action, status, trigger word, detail) for every job the run touched."""
    rows = []
    seen = set()
    for o in result.outcomes:
        seen.add(o.name)
        if o.action == "noop":
            continue
        detail = o.message if o.message and o.status != "succeeded" else ""
        rows.append((o.name, o.action, o.status, o.trigger_word or "-", detail or ""))
    for name in result.on_service:
        if name not in seen:
            rows.append((name, "-", "training", "-", "still training on the service"))
    rows += [(name, "orphan", "pruned", "-", "") for name in result.pruned]
    return sorted(rows, key=lambda r: natural_key(r[0]))


def apply_headline(result: ApplyResult) -> str:
    counts = apply_counts(result)
    if not result.changed and not result.interrupted:
        unchanged = counts.get("unchanged", 0)
        jobs = f"{unchanged} job{'s' if unchanged != 1 else ''} unchanged" if unchanged else "no jobs"
        return f"No changes: {jobs}; nothing was sent."
    head = "Apply interrupted: " if result.interrupted else "Apply: "
    return head + ", ".join(f"{n} {s}" for s, n in counts.items())


def lockfile_line(result: ApplyResult, lockfile: str) -> str:
    """Where the lockfile is, and the reminder to commit it (it is the only record)."""
    if not result.changed:
        return f"Lockfile: {clean(lockfile)} (unchanged)"
    return (
        f"Lockfile: {clean(lockfile)} saved. Commit it (git add {clean(lockfile)}): "
        "it records what was trained and paid for."
    )


def resume_lines(result: ApplyResult, lockfile: str, command: str) -> list[str]:
    """After Ctrl-C (or ``--no-wait``): what was saved, what the service is still training
    (paid; it keeps running), and the command that resumes following it."""
    lines = []
    if result.interrupted:
        lines.append(f"Interrupted: every change so far is saved in {clean(lockfile)}.")
    if result.on_service:
        names = ", ".join(clean(n) for n in result.on_service)
        lines.append(f"Still training on the service (paid; they keep running): {names}")
        lines.append(f"Resume following them (nothing is submitted twice): {clean(command)}")
    elif result.interrupted:
        lines.append(f"Nothing is training on the service. Run again to finish: {clean(command)}")
    return lines


def apply_summary(result: ApplyResult, lockfile: str | None = None, command: str | None = None) -> str:
    """The text result of ``runner apply`` (stdout): the headline, a row per job, and the
    lockfile's path with the reminder to commit it."""
    lines = [apply_headline(result)]
    for name, action, status, word, detail in apply_rows(result):
        extra = f"  {clean(detail)}" if detail else ""
        lines.append(f"  {clean(name):<30} {action:<8} {status:<10} {clean(word)}{extra}")
    if lockfile is not None:
        lines.append(lockfile_line(result, lockfile))
        if command is not None and (result.interrupted or result.on_service):
            lines += resume_lines(result, lockfile, command)
    return guard("\n".join(lines) + "\n")


