"""Lock-state transitions as a table of literals: (entry, event) -> entry, no I/O, no clock."""

from __future__ import annotations

from typing import Any

import pytest

from runner.api import wire
from runner.engine.transitions import (
    UNREAD_TRIGGER,
    Accepted,
    AcceptedUnread,
    AnswerLost,
    Event,
    Refused,
    StatusUnreadable,
    Trained,
    TrainingFailed,
    attempt_for,
    on_status,
    on_submitted,
    transition,
)
from runner.models import LockEntry

AT = "2026-01-02T03:04:05Z"
SUBMITTING = LockEntry(fingerprint="sha256:f", status="submitting", attempt=1, idempotency_key="k1", api="sandbox")
TRAINING = SUBMITTING.evolve(status="training", trigger_word="P_1", asset_id="a1")
# A training whose last status answers could not be read: error and answer are kept.
KEPT = TRAINING.evolve(answer="<html>", error={"status": 200, "message": "stopped following"})

TABLE: list[tuple[str, LockEntry, Event, dict[str, Any]]] = [
    ("accepted", SUBMITTING, Accepted("P_1", "a1", "sandbox"),
     {"status": "training", "trigger_word": "P_1", "asset_id": "a1", "api": "sandbox"}),
    ("accepted, no trigger word", SUBMITTING, AcceptedUnread("a1", "https://api.x", "{}"),
     {"status": "uncertain", "asset_id": "a1", "api": "https://api.x", "answer": "{}",
      "error": {"status": 200, "message": UNREAD_TRIGGER}}),
    ("answer lost", SUBMITTING, AnswerLost(502, "bad gateway", "<html>"),
     {"status": "uncertain", "answer": "<html>", "error": {"status": 502, "message": "bad gateway"}}),
    ("answer lost, nothing kept", SUBMITTING, AnswerLost(0, "cut off"),
     {"status": "uncertain", "answer": None, "error": {"status": 0, "message": "cut off"}}),
    ("refused", SUBMITTING, Refused(422, "no images"),
     {"status": "failed", "error": {"status": 422, "message": "no images"}}),
    ("trained", TRAINING, Trained(("u1",), AT),
     {"status": "succeeded", "results": ("u1",), "finished_at": AT, "error": None, "answer": None}),
    ("trained after unreadable answers: error and answer cleared", KEPT, Trained(("u1",), AT),
     {"status": "succeeded", "results": ("u1",), "finished_at": AT, "error": None, "answer": None}),
    ("training failed", TRAINING, TrainingFailed("oom", AT),
     {"status": "failed", "finished_at": AT, "error": {"status": 0, "message": "oom"}}),
    ("status unreadable", TRAINING, StatusUnreadable(200, "<html>", "stopped following"),
     {"status": "training", "trigger_word": "P_1", "answer": "<html>",
      "error": {"status": 200, "message": "stopped following"}}),
]


@pytest.mark.parametrize(("entry", "event", "changed"), [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_transition_table(entry: LockEntry, event: Event, changed: dict[str, Any]) -> None:
    """Each event moves the entry to the table's state and changes nothing else."""
    assert transition(entry, event) == entry.evolve(**changed)


def test_refresh_and_apply_read_a_status_the_same_way() -> None:
    """``on_status``: running -> no change; succeeded/failed -> the table's entries."""
    assert on_status(KEPT, wire.Status("running"), AT) is None
    assert on_status(KEPT, wire.Status("succeeded", results=("u",)), AT) == transition(KEPT, Trained(("u",), AT))
    assert on_status(TRAINING, wire.Status("failed"), AT) == transition(TRAINING, TrainingFailed("training failed", AT))


def test_a_sandbox_answer_records_the_entry_as_the_sandboxs() -> None:
    """A 200 whose app_name is the sandbox's is recorded as made by the sandbox."""
    got = on_submitted(SUBMITTING, wire.Submitted("P_1", "a1", "sandbox", "{}"), "http://127.0.0.1:8000")
    assert (got.status, got.api) == ("training", "sandbox")
    unread = on_submitted(SUBMITTING, wire.Submitted(None, "a1", None, "{}"), "https://api.x")
    assert (unread.status, unread.api, unread.answer) == ("uncertain", "https://api.x", "{}")


@pytest.mark.parametrize(
    ("previous", "action", "replay", "attempt"),
    [
        (None, "create", False, 1),
        (SUBMITTING.evolve(status="failed", attempt=2), "retry", False, 3),
        (SUBMITTING.evolve(status="uncertain", attempt=2, idempotency_key="k2"), "blocked", True, 2),
        (SUBMITTING.evolve(status="uncertain", attempt=2), "blocked", False, 3),
        (SUBMITTING.evolve(attempt=4), "replace", False, 1),
    ],
)
def test_attempt_and_key(previous: LockEntry | None, action: str, replay: bool, attempt: int) -> None:
    """A replay keeps the entry's attempt and key; a retry or resubmission is the next
    attempt under a new key; a replaced job starts again at 1."""
    got, key = attempt_for(previous, action, replay, "sha256:f")
    assert got == attempt
    if replay and previous is not None:
        assert key == previous.idempotency_key
    else:
        assert key.startswith("runner-") and key != (previous.idempotency_key if previous else None)
