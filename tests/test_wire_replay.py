"""Traced answers replayed through the reading module (runner/api/wire.py).

Every ``tests/data/traces/*.jsonl`` is a ``--trace-http`` file (runner/api/trace.py documents
the line format). Those named after a sandbox dialect (``envelope``, ``args``, ``bare``,
``opaque``; re-recorded by ``tests/data/traces/record.py``) are held to what that dialect
means; any other file, such as the first trace from the live service dropped in beside
them (``live-2026-12.jsonl``), is replayed too, asserting only that reading never raises,
and what was read is printed (``pytest -s tests/test_wire_replay.py``, or
``python tests/test_wire_replay.py FILE...``), so it teaches us the live shapes.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from runner.api import wire

TRACES = Path(__file__).resolve().parent / "data" / "traces"
DIALECTS = ("envelope", "args", "bare", "opaque")


@dataclass(frozen=True)
class Reading:
    """One recorded answer and what ``wire`` read from it."""

    index: int
    method: str
    path: str
    status: int | None
    kind: str  # submit | status | error | other | no answer
    value: Any
    truncated: bool = False


def _path(url: str) -> str:
    rest = url.split("://", 1)[-1]
    return "/" + rest.split("/", 1)[1] if "/" in rest else "/"


def replay(path: Path) -> list[Reading]:
    """Read every answer of a trace as runner would: a POST /finetune 200 with
    ``read_submit`` (the lora_prefix from the traced form), a GET /finetune/... 200 with
    ``read_status``, other answers of those routes with ``error_message``."""
    readings: list[Reading] = []
    for index, line in enumerate(path.read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        record = json.loads(line)
        method, where = record.get("method", "?"), _path(record.get("url", ""))
        answer = record.get("response")
        if answer is None:
            readings.append(Reading(index, method, where, None, "no answer", record.get("error")))
            continue
        body = (answer.get("body") or "").encode()
        status, truncated = answer.get("status"), bool(answer.get("body_truncated"))
        fields = dict((record.get("request") or {}).get("form", {}).get("fields", []))
        if where == "/finetune" and method == "POST" and status == 200:
            value: Any = wire.read_submit(body, str(fields.get("lora_prefix", "")))
            kind = "submit"
        elif where.startswith("/finetune/") and method == "GET" and status == 200:
            value, kind = wire.read_status(body), "status"
        elif where.startswith("/finetune"):
            value, kind = wire.error_message(body, f"HTTP {status}"), "error"
        else:
            value, kind = wire.describe_shape(body), "other"
        readings.append(Reading(index, method, where, status, kind, value, truncated))
    return readings


def summary(path: Path, readings: list[Reading]) -> str:
    """What was read, one line per answer and a count per kind of reading."""
    out = [f"{path.name}: {len(readings)} answers"]
    tally: Counter[str] = Counter()
    for r in readings:
        if isinstance(r.value, wire.Submitted):
            what = (f"trigger word {r.value.trigger_word!r} at {r.value.found_at}" if r.value.trigger_word
                    else f"no trigger word (asset id {r.value.asset_id!r}, {len(r.value.raw)} chars kept)")
            tally["submit: " + ("trigger word" if r.value.trigger_word else "none")] += 1
        elif isinstance(r.value, wire.Status):
            what = f"{r.value.state} (word {r.value.word!r}, {len(r.value.results)} samples)"
            tally[f"status: {r.value.state}"] += 1
        elif isinstance(r.value, wire.Unreadable):
            what = f"UNREADABLE: {r.value.reason}"
            tally["status: unreadable"] += 1
        else:
            what = str(r.value)[:160]
            tally[r.kind] += 1
        note = " (body truncated in the trace)" if r.truncated else ""
        out.append(f"  #{r.index} {r.method} {r.path} -> {r.status}: {what}{note}")
    out.append("  " + ", ".join(f"{k} x{n}" for k, n in sorted(tally.items())))
    return "\n".join(out)


def _traces() -> list[Path]:
    return sorted(TRACES.glob("*.jsonl"))


def test_every_sandbox_dialect_has_a_recorded_trace() -> None:
    assert {p.stem for p in _traces()} >= set(DIALECTS)


@pytest.mark.parametrize("path", _traces(), ids=lambda p: p.name)
def test_replaying_a_trace_never_raises(path: Path) -> None:
    """Any trace, a sandbox's or the live service's: every answer is read without an
    exception, and what was read is printed."""
    readings = replay(path)
    assert readings, f"{path.name} holds no exchanges"
    print(summary(path, readings))


@pytest.mark.parametrize("dialect", ["envelope", "args", "bare"])
def test_readable_dialects_give_the_trigger_words_the_status_urls_use(dialect: str) -> None:
    """envelope, args, bare: each POST 200 gives a trigger word starting with its
    lora_prefix, the later status requests ask for exactly those words, and every status
    answer reads as running or succeeded (each job ends succeeded with samples)."""
    readings = replay(TRACES / f"{dialect}.jsonl")
    submits = [r for r in readings if r.kind == "submit"]
    statuses = [r for r in readings if r.kind == "status"]
    assert len(submits) == 2 and statuses
    words = []
    found_at = {"envelope": "data.trigger_word", "args": "data.args.trigger_word", "bare": "body"}
    for r in submits:
        assert isinstance(r.value, wire.Submitted) and r.value.trigger_word, r
        assert r.value.found_at == found_at[dialect]  # the fixture really is that dialect
        words.append(r.value.trigger_word)
        asked = [s for s in statuses if s.index > r.index and s.path == f"/finetune/{r.value.trigger_word}"]
        assert asked, f"no status request for {r.value.trigger_word}"
    assert all(w.startswith(("TR0_", "TR1_")) for w in words)
    asked_for = {s.path.removeprefix("/finetune/") for s in statuses}
    assert asked_for == set(words)
    for s in statuses:
        assert isinstance(s.value, wire.Status), f"#{s.index}: {s.value}"
        assert s.value.state in ("running", "succeeded")
    for word in words:
        last = [s for s in statuses if s.path.endswith(word)][-1]
        assert isinstance(last.value, wire.Status) and last.value.state == "succeeded" and last.value.results


def test_opaque_answers_give_no_trigger_word_and_are_kept() -> None:
    """opaque: no trigger word can be read; the asset id and the raw answer are kept (what
    the lockfile's ``answer`` holds), and no status request follows."""
    path = TRACES / "opaque.jsonl"
    readings = replay(path)
    submits = [r for r in readings if r.kind == "submit"]
    assert len(submits) == 2
    bodies = {i: json.loads(line)["response"]["body"]
              for i, line in enumerate(path.read_text(encoding="utf-8").splitlines())}
    for r in submits:
        assert isinstance(r.value, wire.Submitted)
        assert r.value.trigger_word is None and r.value.found_at is None
        assert r.value.asset_id and r.value.raw == wire.answer_text(bodies[r.index].encode())
    assert not [r for r in readings if r.kind == "status"]


def test_a_trace_with_an_unknown_name_is_replayed_and_summarised(tmp_path: Path) -> None:
    """A live trace is taken as it comes: shapes no dialect has (a status word we do not
    know, a body that is not JSON, a truncated body, a lost answer) are read without raising
    and named in the summary."""
    lines = [json.loads(line) for line in (TRACES / "args.jsonl").read_text(encoding="utf-8").splitlines()]
    post = next(line for line in lines if line["method"] == "POST" and line["response"]["status"] == 200)
    get = next(line for line in lines if "/finetune/TR" in line["url"])
    prefix = dict(post["request"]["form"]["fields"])["lora_prefix"]
    odd = [
        {**get, "response": {**get["response"], "body": '{"data": {"status": "warming_up"}}'}},
        {**get, "response": {**get["response"], "body": "<html>Bad gateway</html>"}},
        {**get, "response": {**get["response"], "body": '{"data": {"sta', "body_truncated": True}},
        {**post, "response": {**post["response"], "body": json.dumps({"result": {"lora": f"{prefix}_abc123"}})}},
        {**post, "response": None, "error": {"type": "ReadTimeout", "message": ""}},
    ]
    path = tmp_path / "live-2026-12.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines + odd), encoding="utf-8")
    readings = replay(path)
    text = summary(path, readings)
    assert "UNREADABLE: unknown status word 'warming_up'" in text
    assert "UNREADABLE: the answer is not JSON" in text and "(body truncated in the trace)" in text
    assert f"'{prefix}_abc123' at the one string starting with the lora_prefix" in text
    assert readings[-1].kind == "no answer"


if __name__ == "__main__":  # python tests/test_wire_replay.py FILE...: what runner reads
    for name in sys.argv[1:] or [str(p) for p in _traces()]:
        print(summary(Path(name), replay(Path(name))))
