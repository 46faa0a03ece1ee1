"""Lock-state transitions: ``transition(entry, event) -> entry``, pure (no I/O, no clock).

Apply (``runner.engine.submit``, ``runner.engine.follow``) and ``--refresh``
(``runner.engine.refresh``) meet the same events, so they move an entry the same way; the
moment of an event (``at``) is the caller's ``models.utcnow()``.

| from         | event            | to          | also                                       |
|--------------|------------------|-------------|--------------------------------------------|
| (any)        | ``submitting``   | submitting  | attempt and key journaled before the POST  |
| submitting   | Accepted         | training    | trigger word, asset id, where it was made  |
| submitting   | AcceptedUnread   | uncertain   | the 200's raw answer kept; error status 200 |
| submitting   | AnswerLost       | uncertain   | error; the 5xx body, if any, kept          |
| submitting   | Refused          | failed      | error (the 4xx, or 0: an image unreadable) |
| training     | Trained          | succeeded   | samples, finished_at; error, answer cleared |
| training     | TrainingFailed   | failed      | finished_at, error                         |
| training     | StatusUnreadable | training    | the last answer and a message kept         |

Jobs that were never sent (402, unreachable, key refused) are recorded as they were before:
no transition.
"""

from __future__ import annotations

from dataclasses import dataclass

from runner.api import wire
from runner.api.client import idempotency_key
from runner.models import Fingerprinted, LockEntry

UNREAD_TRIGGER = (
    "the API accepted the job (and may have charged for it) but no trigger word could be read "
    "from its answer; the answer is kept in the lockfile: please send it to the runner maintainers"
)


@dataclass(frozen=True)
class Accepted:
    """A POST 200 with a trigger word: the service trains (and charges for) the job."""

    trigger_word: str
    asset_id: str | None
    api: str | None


@dataclass(frozen=True)
class AcceptedUnread:
    """A POST 200 in which no trigger word could be read; ``raw`` is the answer."""

    asset_id: str | None
    api: str | None
    raw: str
    message: str = UNREAD_TRIGGER


@dataclass(frozen=True)
class AnswerLost:
    """The POST may have started a training and we cannot know (``errors.Uncertain``)."""

    status: int
    message: str
    answer: str | None = None


@dataclass(frozen=True)
class Refused:
    """The job was refused (a 4xx), or could not be sent in full (status 0)."""

    status: int
    message: str


@dataclass(frozen=True)
class StatusUnreadable:
    """Status answers no longer followed this run: the last one, and why, are kept."""

    status: int
    raw: str
    message: str


@dataclass(frozen=True)
class Trained:
    """A status answer: the training succeeded, with these samples."""

    results: tuple[str, ...]
    at: str


@dataclass(frozen=True)
class TrainingFailed:
    """A status answer: the training failed (``message``: the service's words, or ours)."""

    message: str
    at: str


Event = Accepted | AcceptedUnread | AnswerLost | Refused | Trained | TrainingFailed | StatusUnreadable


def transition(entry: LockEntry, event: Event) -> LockEntry:
    """The entry after ``event`` (the table in the module docstring)."""
    match event:
        case Accepted(trigger_word, asset_id, api):
            return entry.evolve(status="training", trigger_word=trigger_word, asset_id=asset_id, api=api)
        case AcceptedUnread(asset_id, api, raw, message):
            return entry.evolve(status="uncertain", asset_id=asset_id, api=api, answer=raw,
                                error={"status": 200, "message": message})
        case AnswerLost(status, message, answer):
            return entry.evolve(status="uncertain", answer=answer, error={"status": status, "message": message})
        case Refused(status, message):
            return entry.evolve(status="failed", error={"status": status, "message": message})
        case Trained(results, at):
            return entry.evolve(status="succeeded", results=results, finished_at=at, error=None, answer=None)
        case TrainingFailed(message, at):
            return entry.evolve(status="failed", finished_at=at, error={"status": 0, "message": message})
        case StatusUnreadable(status, raw, message):
            return entry.evolve(answer=raw, error={"status": status, "message": message})
    raise AssertionError(f"unknown event {event!r}")  # pragma: no cover


def on_status(entry: LockEntry, status: wire.Status, at: str) -> LockEntry | None:
    """The entry after a status answer we could read; None while it is still running."""
    if status.state == "succeeded":
        return transition(entry, Trained(status.results, at))
    if status.state == "failed":
        return transition(entry, TrainingFailed(status.message or "training failed", at))
    return None


def on_submitted(entry: LockEntry, submitted: wire.Submitted, api: str | None) -> LockEntry:
    """The entry after a POST 200: training, or uncertain when no trigger word was read.
    An answer from the sandbox records it as the sandbox's, whatever ``api`` says."""
    made_by = "sandbox" if submitted.app_name == "sandbox" else api
    if not submitted.trigger_word:
        return transition(entry, AcceptedUnread(submitted.asset_id, made_by, submitted.raw))
    return transition(entry, Accepted(submitted.trigger_word, submitted.asset_id, made_by))


def attempt_for(previous: LockEntry | None, action: str, replay: bool, fingerprint: str) -> tuple[int, str]:
    """The attempt number and Idempotency-Key of a submission.

    A replay of a lost answer reuses the entry's attempt and key (so the API can recognise
    it); a retry or a resubmission of an uncertain job is a new attempt with a new key.
    """
    if replay and previous is not None:
        attempt = previous.attempt or 1
        return attempt, previous.idempotency_key or idempotency_key(fingerprint, attempt)
    attempt = previous.attempt + 1 if action in ("retry", "blocked") and previous is not None else 1
    return attempt, idempotency_key(fingerprint, attempt)


def submitting(
    fp: Fingerprinted, previous: LockEntry | None, action: str, replay: bool, *,
    api: str | None, api_key_env: str, at: str,
) -> LockEntry:
    """The write-ahead entry journaled before a POST: the key is durable before the request
    can reach the server."""
    attempt, key = attempt_for(previous, action, replay, fp.fingerprint)
    job = fp.job
    return LockEntry(
        fingerprint=fp.fingerprint,
        status="submitting",
        option=job.option,
        finetune_type=wire.sent_finetune_type(job),
        images=wire.image_count(job),
        submitted_at=at,
        api=api,
        api_key_env=api_key_env,
        attempt=attempt,
        idempotency_key=key,
        inputs=fp.inputs,
    )
