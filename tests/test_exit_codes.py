"""``ApplyResult.exit_code``: the one place an apply's outcome becomes DESIGN section 2's code."""

from __future__ import annotations

import pytest

from runner.models import ApplyResult, Outcome

DONE = Outcome("a", "create", "succeeded", "A_1")
NOOP = Outcome("b", "noop", "succeeded", "B_1")
SKIPPED = Outcome("c", "create", "skipped", None, "not submitted")
FAILED = Outcome("d", "create", "failed", "D_1", "bad")
TRAINING = Outcome("e", "create", "training", "E_1")


@pytest.mark.parametrize(
    ("result", "code"),
    [
        (ApplyResult([DONE, NOOP]), 0),
        (ApplyResult([NOOP]), 0),
        (ApplyResult([DONE, FAILED]), 3),
        (ApplyResult([TRAINING]), 3),
        (ApplyResult([DONE], credit_exhausted=True), 4),
        (ApplyResult([DONE, TRAINING], interrupted=True), 130),
        # A fatal stop before anything was sent: "nothing was submitted".
        (ApplyResult([SKIPPED, NOOP], fatal="the API refused the key (HTTP 401)"), 1),
        # ... and after a training was started: unfinished, the lockfile holds each state.
        (ApplyResult([DONE, SKIPPED], fatal="the lockfile cannot be written"), 3),
        (ApplyResult([SKIPPED], fatal="the lockfile cannot be written", sent=True), 3),
        # Only following trainings paid for earlier, then refused: nothing was submitted.
        (ApplyResult([SKIPPED], fatal="the API refused the key (HTTP 403)", on_service=["e"]), 1),
    ],
)
def test_exit_code(result: ApplyResult, code: int) -> None:
    assert result.exit_code == code
