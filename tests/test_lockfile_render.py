"""LockState.render (templated, fast) writes exactly what yaml.dump writes."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from runner.models import LockEntry
from runner.state.lockfile import LockState

TRICKY = [
    "", " ", "null", "Null", "~", "yes", "No", "on", "true", "1", "0x1f", "1e3", "1_000", ".5",
    "-", "- a", "? x", ": x", "a: b", "a #b", "#x", "&a", "*a", "!tag", "|", ">", "'q'", '"q"',
    "%x", "@x", "`x", "a\nb", "a\n", "\tx", "x\t", "ünïcödé", "日本", "\u2028", "\x85", "2026-11-23T20:01:02Z",
    "2026-11-23", "12:30", "<<", "=", "https://example.com/a?b=c&d=e#f", "sha256:" + "a" * 64,
    "x" * 600, "y " * 400, "[a]", "{a}", "a,b", "\x00", "\x7f", "\ufeff", "a  b", " lead", "trail ",
]
text = st.one_of(st.sampled_from(TRICKY), st.text(max_size=40))
maybe_text = st.one_of(st.none(), text)
names = st.one_of(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True), st.sampled_from(TRICKY))
entries = st.builds(
    LockEntry,
    fingerprint=text,
    status=st.sampled_from(["pending", "submitting", "uncertain", "training", "succeeded", "failed"]),
    asset_id=maybe_text,
    trigger_word=maybe_text,
    option=st.one_of(st.none(), st.sampled_from(["FluxFinetune", "FluxKontextFinetune"]), text),
    finetune_type=maybe_text,
    images=st.one_of(st.integers(0, 10**6), st.integers(-5, -1)),
    results=st.lists(text, max_size=3).map(tuple),
    submitted_at=maybe_text,
    finished_at=maybe_text,
    error=st.one_of(st.none(), st.fixed_dictionaries({"status": st.integers(0, 599), "message": text})),
    attempt=st.integers(0, 100),
    idempotency_key=maybe_text,
    inputs=st.dictionaries(st.one_of(st.sampled_from(["option", "lora_prefix", "images"]), text),
                           st.one_of(text, st.integers(0, 5000)), max_size=4),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(names, entries, max_size=6), st.integers(0, 10**9))
def test_render_matches_yaml_dump(jobs: dict[str, LockEntry], serial: int) -> None:
    """The templated renderer and yaml.dump agree byte for byte, odd strings included."""
    state = LockState(dict(jobs), serial)
    assert state.render() == state.render_yaml()


def test_render_of_a_real_entry_is_plain_and_ordered() -> None:
    """A typical entry renders with plain scalars, quoted timestamps and keys in order."""
    entry = LockEntry(
        fingerprint="sha256:" + "0" * 64, status="succeeded", asset_id="a1", trigger_word="SNKR_k2x9",
        option="FluxFinetune", finetune_type="Product", images=12, results=("https://x/s.png",),
        submitted_at="2026-11-23T20:01:02Z", finished_at="2026-11-23T20:09:40Z",
        inputs={"option": "FluxFinetune", "images": "sha256:" + "1" * 64},
    )
    state = LockState({"red-sneaker": entry}, 3)
    text = state.render()
    assert text == state.render_yaml()
    assert "    submitted_at: '2026-11-23T20:01:02Z'\n" in text
    assert text.index("fingerprint:") < text.index("status:") < text.index("inputs:")
