"""make_plan is pure: literals in, a Plan out, no files or event loop."""

from __future__ import annotations

import pytest

from runner.errors import UsageError
from runner.fingerprint import Fingerprinted
from runner.lockfile import LockEntry
from runner.models import Job
from runner.plan import make_plan

FP_A = "sha256:" + "a" * 64
FP_B = "sha256:" + "b" * 64
INPUTS = {"option": "FluxFinetune", "finetune_type": "Auto", "lora_prefix": "X", "num_iterations": 0, "images": "sha256:1"}


def fp(name: str, fingerprint: str = FP_A, **inputs: object) -> Fingerprinted:
    return Fingerprinted(Job(name=name), fingerprint, {**INPUTS, **inputs})


def entry(status: str, fingerprint: str = FP_A, **kw: object) -> LockEntry:
    return LockEntry(fingerprint=fingerprint, status=status, inputs=dict(INPUTS), **kw)  # type: ignore[arg-type]


def actions(plan) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {c.name: c.action for c in plan.changes}


def test_every_action_from_its_lock_state() -> None:
    """Each lock state maps to the action DESIGN section 5 names."""
    jobs = [fp("new"), fp("changed", FP_B), fp("running"), fp("broken"), fp("lost"), fp("crashed"), fp("done")]
    entries = {
        "changed": entry("succeeded"),
        "running": entry("training", trigger_word="T"),
        "broken": entry("failed", error={"status": 422, "message": "bad"}),
        "lost": entry("uncertain"),
        "crashed": entry("submitting"),
        "done": entry("succeeded"),
        "gone": entry("succeeded"),
    }
    plan = make_plan("m.yaml", jobs, entries)
    assert actions(plan) == {
        "new": "create",
        "changed": "replace",
        "running": "resume",
        "broken": "retry",
        "lost": "blocked",
        "crashed": "blocked",
        "done": "noop",
        "gone": "orphan",
    }
    assert plan.summary() == {"create": 1, "replace": 1, "resume": 1, "retry": 1, "blocked": 2, "noop": 1, "orphan": 1}
    assert [c.name for c in plan.changes] == sorted(c.name for c in plan.changes)


def test_replace_reasons_name_the_changed_inputs() -> None:
    """A replace says which inputs changed (images, prefix), not just 'changed'."""
    plan = make_plan("m.yaml", [fp("j", FP_B, images="sha256:2", lora_prefix="Y")], {"j": entry("succeeded")})
    (change,) = plan.changes
    assert change.action == "replace"
    assert change.reasons == ("lora_prefix", "images")


def test_no_changes_when_all_succeeded() -> None:
    """A plan of noops (and orphans) has no changes for --detailed-exitcode."""
    plan = make_plan("m.yaml", [fp("a")], {"a": entry("succeeded"), "old": entry("succeeded")})
    assert not plan.has_changes
    plan2 = make_plan("m.yaml", [fp("a"), fp("b")], {"a": entry("succeeded")})
    assert plan2.has_changes


def test_targets_limit_the_plan_and_unknown_target_is_an_error() -> None:
    """--target keeps only the named jobs; a misspelt target is a usage error with a hint."""
    plan = make_plan("m.yaml", [fp("alpha"), fp("beta")], {"gone": entry("succeeded")}, targets=["beta"])
    assert actions(plan) == {"beta": "create"}
    with pytest.raises(UsageError, match="did you mean 'alpha'"):
        make_plan("m.yaml", [fp("alpha")], {}, targets=["alpah"])
