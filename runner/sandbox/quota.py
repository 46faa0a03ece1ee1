"""What one API key may spend: credits (``--credits``) and the per-key quotas.

The store enforces both inside the transaction that creates a training (so concurrent
requests cannot together pass them); the gate and the route ask ``Quota.refusal`` first,
so a key that cannot pay is told so before its upload is read or written.
"""

from __future__ import annotations

from dataclasses import dataclass


class InsufficientCredit(Exception):
    """The account's balance cannot pay for one more training."""


class QuotaExceeded(Exception):
    """The account has used its ``--max-trainings-per-key`` or ``--max-stored-mb-per-key``;
    ``args[0]`` is the message for the client."""


@dataclass(frozen=True)
class Quota:
    """Per-key limits on what a key may keep on the sandbox's disk; None = unlimited."""

    max_trainings: int | None = None
    max_stored_bytes: int | None = None

    def refusal(self, trainings: int, stored_bytes: int, adding_bytes: int) -> str | None:
        """Why one more training of ``adding_bytes`` of uploads is refused, or None."""
        if self.max_trainings is not None and trainings + 1 > self.max_trainings:
            return (
                f"sandbox quota: this API key has used all of its {self.max_trainings}"
                " trainings (--max-trainings-per-key)"
            )
        if self.max_stored_bytes is not None and stored_bytes + adding_bytes > self.max_stored_bytes:
            return (
                f"sandbox quota: this upload ({_mb(adding_bytes)}) would take this API key's"
                f" stored uploads to {_mb(stored_bytes + adding_bytes)}, above its"
                f" {_mb(self.max_stored_bytes)} (--max-stored-mb-per-key)"
            )
        return None


def _mb(size: int) -> str:
    return f"{size / (1024 * 1024):.1f} MB"


def no_credit_message(balance: int) -> str:
    return f"Insufficient credit: this key has {balance} credits left"
