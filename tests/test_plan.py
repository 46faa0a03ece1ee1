"""make_plan is pure: literals in, a Plan out, no files or event loop."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from runner.engine.plan import make_plan
from runner.errors import UsageError
from runner.models import Fingerprinted, Job, LockEntry

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
    from runner.views.plan import plan_markdown, plan_text

    plan = make_plan("m.yaml", [fp("j"), fp("new")], {"j": entry("succeeded", api="sandbox")}, api=LIVE)
    text = plan_text(plan)
    assert f"      + j  (endpoint, api: sandbox → {LIVE})\n" in text
    assert "      + new\n" in text  # a new job's reason is the heading itself
    assert f"| create | `j` | endpoint, api: `sandbox` → `{LIVE}` |" in plan_markdown(plan)
    assert "| create | `new` | new job |" in plan_markdown(plan)


def test_replace_shows_old_and_new_values() -> None:
    """DESIGN section 5: old → new for each changed value; images as counts (the lock keeps a digest)."""
    from runner.views.plan import plan_document, plan_markdown, plan_text

    job = Fingerprinted(
        Job(name="j", images=tuple(Path(f"{i}.jpg") for i in range(13))), FP_B,
        {**INPUTS, "images": "sha256:2", "lora_prefix": "WAVES", "option": "FluxProFinetune"},
    )
    old = LockEntry(fingerprint=FP_A, status="succeeded", images=12, inputs={**INPUTS, "lora_prefix": "STYLE"})
    plan = make_plan("m.yaml", [job], {"j": old})
    (change,) = plan.changes
    assert change.diff == (("option", "FluxFinetune", "FluxProFinetune"), ("lora_prefix", "STYLE", "WAVES"), ("images", 12, 13))
    text = plan_text(plan)
    assert "-/+ j  (option: FluxFinetune → FluxProFinetune, lora_prefix: STYLE → WAVES, images: 12 → 13)" in text
    md = plan_markdown(plan)
    assert "| replace | `j` | option: `FluxFinetune` → `FluxProFinetune`, lora_prefix: `STYLE` → `WAVES`, images: `12` → `13` |" in md
    doc = plan_document(plan)["jobs"][0]
    assert doc["diff"]["images"] == {"old": 12, "new": 13}
    assert doc["diff"]["lora_prefix"] == {"old": "STYLE", "new": "WAVES"}


def test_same_image_count_keeps_the_bare_reason_and_a_missing_value_reads_none() -> None:
    job = Fingerprinted(Job(name="j", images=(Path("a.jpg"),)), FP_B, {**INPUTS, "images": "sha256:2", "prompt": "p"})
    plan = make_plan("m.yaml", [job], {"j": LockEntry(fingerprint=FP_A, status="succeeded", images=1, inputs=dict(INPUTS))})
    (change,) = plan.changes
    assert change.reasons == ("prompt", "images")
    assert change.diff == (("prompt", None, "p"),)
    from runner.views.plan import plan_text

    assert "(prompt: (none) → p, images)" in plan_text(plan)


def test_long_prompts_are_shortened_around_their_difference() -> None:
    from runner.views.plan import shorten_pair

    assert shorten_pair("short", "also short") == ("short", "also short")
    old, new = shorten_pair("turn the car red", "turn the car a deep glossy candy-apple red, keep the background")
    assert old == "turn the car red" and new.startswith("turn the car a deep") and new.endswith("…")
    old, new = shorten_pair("x" * 60 + " red", "x" * 60 + " blue")
    assert old.startswith("…") and old.endswith(" red") and new.endswith(" blue") and old != new
    assert len(new) <= 42


def test_natural_order_in_every_view() -> None:
    """a2 before a10, in the plan and so in text, markdown and json."""
    from runner.views.plan import plan_document, plan_markdown, plan_text

    plan = make_plan("m.yaml", [fp("a10"), fp("a2"), fp("b1")], {"a1": entry("succeeded")})
    assert [c.name for c in plan.changes] == ["a1", "a2", "a10", "b1"]
    text = plan_text(plan)
    assert text.index(" a2\n") < text.index(" a10\n")
    md = plan_markdown(plan)
    assert md.index("`a2`") < md.index("`a10`")
    assert [j["name"] for j in plan_document(plan)["jobs"]] == ["a1", "a2", "a10", "b1"]


def test_one_vocabulary_across_views() -> None:
    """The text summary counts in the actions' own words, as markdown and json."""
    from runner.engine.plan import ACTIONS
    from runner.views.plan import plan_document, plan_markdown, plan_text

    plan = make_plan("m.yaml", [fp("a"), fp("b")], {"b": entry("succeeded"), "gone": entry("succeeded")})
    assert "Plan: 1 create, 0 replace, 0 resume, 0 retry, 0 blocked, 1 noop, 1 orphan." in plan_text(plan)
    assert "**1** create · **0** replace · **0** resume · **0** retry · **0** blocked · **1** noop · **1** orphan" in plan_markdown(plan)
    assert tuple(plan_document(plan)["summary"]) == ACTIONS
    for word in ("unchanged", "orphaned"):
        assert word not in plan_text(plan).split("Plan:")[1]


def test_colour_only_our_words_and_only_when_asked() -> None:
    from runner.views.plan import plan_text

    plan = make_plan("m.yaml", [fp("\x1b[31mevil")], {})
    plain = plan_text(plan)
    assert "\x1b" not in plain
    coloured = plan_text(plan, color=True)
    assert "\x1b[32m" in coloured and "\x1b[0m" in coloured
    assert "\\x1b[31mevil" in coloured  # the job's own escape stays shown, not obeyed
    assert coloured.replace("\x1b[32m", "").replace("\x1b[1m", "").replace("\x1b[0m", "") == plain


def test_use_color_follows_the_terminal_and_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    from runner.commands.plan import use_color

    class Tty:
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_color(Tty())
    assert not use_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(Tty())


def test_prune_shows_what_apply_prune_drops() -> None:
    from runner.views.plan import plan_document, plan_markdown, plan_text

    plan = make_plan("m.yaml", [fp("a")], {"a": entry("succeeded"), "gone": entry("succeeded")})
    assert not plan.has_changes
    pruned = plan.pruning()
    assert pruned.has_changes  # --detailed-exitcode: apply --prune would change the lockfile
    text = plan_text(pruned)
    assert "1 job(s) will be dropped from the lockfile (--prune; no longer in the manifest):\n      - gone\n" in text
    assert "| orphan (pruned) | `gone` | dropped from the lockfile by --prune |" in plan_markdown(pruned)
    doc = plan_document(pruned)
    assert doc["prune"] is True and doc["jobs"][1]["action"] == "orphan"
    assert "prune" not in plan_document(plan)


def test_diff_and_prune_documents_match_the_schema() -> None:
    from jsonschema import Draft202012Validator

    from runner.shipped_schemas import load_schema
    from runner.views.plan import plan_document

    job = Fingerprinted(Job(name="j", images=(Path("a.jpg"), Path("b.jpg"))), FP_B, {**INPUTS, "images": "sha256:2", "num_iterations": 300})
    old = LockEntry(fingerprint=FP_A, status="succeeded", images=1, inputs=dict(INPUTS))
    plan = make_plan("m.yaml", [job], {"j": old, "gone": entry("succeeded")}).pruning()
    doc = plan_document(plan)
    assert doc["jobs"][1]["diff"] == {"num_iterations": {"old": 0, "new": 300}, "images": {"old": 1, "new": 2}}
    assert list(Draft202012Validator(load_schema("plan")).iter_errors(doc)) == []


def _plan_on_a_terminal(tmp_path: Path, env: dict[str, str]) -> bytes:
    """``runner plan`` with its stdout on a pseudo-terminal; what the terminal received."""
    import os
    import subprocess
    import sys

    from support.paths import REPO_ROOT

    main, child = os.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "runner", "plan", "manifest.yaml"], cwd=tmp_path, stdout=child,
            stderr=subprocess.PIPE, env={**env, "PYTHONPATH": str(REPO_ROOT)}, timeout=60, check=True,
        )
        assert proc.returncode == 0
        os.close(child)
        child = -1
        out = b""
        while True:
            try:
                chunk = os.read(main, 65536)
            except OSError:  # Linux: EIO once the other side is closed and drained
                break
            if not chunk:
                break
            out += chunk
        return out
    finally:
        os.close(main)
        if child >= 0:
            os.close(child)


def test_plan_is_coloured_on_a_terminal_only(tmp_path: Path) -> None:
    """Colour on a terminal; none with NO_COLOR, none when piped."""
    import os

    from support.cli import run_runner
    from support.manifests import write_manifest

    write_manifest(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    coloured = _plan_on_a_terminal(tmp_path, {**env, "TERM": "xterm"})
    assert b"    \x1b[32m  +\x1b[0m demo" in coloured and b"\x1b[1mPlan: 1 create" in coloured
    assert b"\x1b" not in _plan_on_a_terminal(tmp_path, {**env, "TERM": "xterm", "NO_COLOR": "1"})
    piped = run_runner("plan", "manifest.yaml", cwd=tmp_path, env={**env, "TERM": "xterm"})
    assert piped.code == 0 and "+ demo" in piped.stdout and "\x1b" not in piped.stdout
