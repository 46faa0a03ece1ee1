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


LIVE = "https://api.vimmerse.net"


def test_entries_made_against_another_api_are_created_whatever_their_state() -> None:
    """DESIGN section 4: with ``api`` given, an entry the target does not accept is absent."""
    jobs = [fp("done"), fp("running"), fp("broken"), fp("lost"), fp("changed", FP_B), fp("here")]
    entries = {
        "done": entry("succeeded", api="sandbox"),
        "running": entry("training", trigger_word="T", api="sandbox"),
        "broken": entry("failed", api="sandbox", error={"status": 422, "message": "bad"}),
        "lost": entry("uncertain", api="sandbox"),
        "changed": entry("succeeded", api="sandbox"),
        "here": entry("succeeded", api=LIVE),
        "gone": entry("succeeded", api="sandbox"),
    }
    plan = make_plan("m.yaml", jobs, entries, api=LIVE)
    assert actions(plan) == {
        "done": "create", "running": "create", "broken": "create", "lost": "create",
        "changed": "create", "here": "noop", "gone": "orphan",
    }
    for change in plan.with_action("create"):
        assert change.reasons == ("endpoint",)
        assert change.diff == (("api", "sandbox", LIVE),)
        assert change.entry is entries[change.name]
    # No api: no endpoint check (callers that predate it plan as before).
    assert actions(make_plan("m.yaml", jobs, entries))["done"] == "noop"
    # The sandbox target accepts the sandbox's entries, not the live API's.
    back = make_plan("m.yaml", jobs, entries, api="sandbox")
    assert actions(back)["done"] == "noop" and actions(back)["here"] == "create"


def test_legacy_entries_are_judged_by_their_sample_urls() -> None:
    sandbox_made = entry("succeeded", results=("http://127.0.0.1:5/_sandbox/files/x/sample_0.png",))
    live_made = entry("succeeded", results=("https://cdn.example.com/x.png",))
    plan = make_plan("m.yaml", [fp("s"), fp("l")], {"s": sandbox_made, "l": live_made}, api=LIVE)
    assert actions(plan) == {"s": "create", "l": "noop"}


def test_text_and_markdown_show_the_endpoint_change() -> None:
    from runner.render import plan_markdown, plan_text

    plan = make_plan("m.yaml", [fp("j"), fp("new")], {"j": entry("succeeded", api="sandbox")}, api=LIVE)
    text = plan_text(plan)
    assert f"      + j  (endpoint, api: sandbox → {LIVE})\n" in text
    assert "      + new\n" in text  # a new job's reason is the heading itself
    assert f"| create | `j` | endpoint, api: `sandbox` → `{LIVE}` |" in plan_markdown(plan)
    assert "| create | `new` | new job |" in plan_markdown(plan)
