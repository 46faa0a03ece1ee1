"""The sandbox's settings: one frozen value shared by the app, the CLI and the tests.

Validation lives here (not in the CLI) so that programmatic users such as the embedded
``api.endpoint: sandbox`` default and other engineers' tests get the same errors as
``runner sandbox serve`` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from runner.errors import UsageError

FAULT_KINDS: tuple[str, ...] = (
    "500", "502", "503", "drop", "slow", "lost_post", "gateway_timeout"
)  # fmt: skip
# Faults that only a POST /finetune can draw: they need a training to be created first.
POST_ONLY_FAULTS: tuple[str, ...] = ("lost_post", "gateway_timeout")
# The answer shapes the sandbox can speak (DESIGN section 7; README "The sandbox").
DIALECTS: tuple[str, ...] = ("envelope", "args", "bare", "opaque")
DEFAULT_MAX_UPLOAD_BYTES = 100 * 1024 * 1024
# ``runner sandbox serve``'s per-key quotas when it listens beyond loopback (on loopback,
# and programmatically, as for the embedded sandbox, the default is unlimited): enough for
# any demo, small enough that one key of an exposed sandbox cannot fill its disk.
DEFAULT_MAX_TRAININGS_PER_KEY = 1000
DEFAULT_MAX_STORED_MB_PER_KEY = 1024


@dataclass(frozen=True)
class SandboxConfig:
    """Everything that changes how the sandbox behaves; see README "The sandbox".

    ``credits=None`` means unlimited; ``rate_limit=None`` turns the limiter off; an empty
    ``api_keys`` accepts any non-empty ``X-Api-Key``, each key being its own account.
    ``seed`` makes fault injection reproducible for tests. ``dialect`` picks the shapes of
    the POST and status answers (one of ``DIALECTS``; see ``runner.sandbox.dialects``).
    ``max_trainings_per_key`` and ``max_stored_bytes_per_key`` are per-key quotas (None =
    unlimited); past one, a POST is answered 402. ``exposed`` says the server listens beyond
    loopback (``start_server`` sets it): webhooks then never go to loopback or private
    addresses.
    """

    state_dir: Path
    train_seconds: float = 5.0
    credits: int | None = None
    rate_limit: float | None = None
    fault_rate: float = 0.0
    fault_delay: float = 1.0
    fault_kinds: tuple[str, ...] = FAULT_KINDS
    api_keys: tuple[str, ...] = ()
    allow_external_webhooks: bool = False
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    # Request bodies are read no faster than this many megabits per second, over all
    # requests (``runner.sandbox.bandwidth``); None: as fast as they come.
    bandwidth_mbps: float | None = None
    seed: int | None = None
    # False mimics the real service, which has no idempotency keys: the header is ignored
    # and never echoed, so clients must treat a lost POST answer as uncertain.
    idempotency: bool = True
    dialect: str = "envelope"
    max_trainings_per_key: int | None = None
    max_stored_bytes_per_key: int | None = None
    exposed: bool = False
    # Webhook retry schedule: first retry after this many seconds, doubling each time.
    webhook_backoff: float = field(default=0.5, repr=False)
    webhook_attempts: int = field(default=6, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        object.__setattr__(self, "fault_kinds", tuple(self.fault_kinds))
        object.__setattr__(self, "api_keys", tuple(self.api_keys))
        problems = list(self._problems())
        if problems:
            raise UsageError("invalid sandbox settings: " + "; ".join(problems))

    def _problems(self) -> list[str]:
        out: list[str] = []

        def finite(value: float) -> bool:
            return isinstance(value, int | float) and math.isfinite(value)

        if not finite(self.train_seconds) or self.train_seconds < 0:
            out.append(f"--train-seconds must be a number >= 0, not {self.train_seconds!r}")
        if self.credits is not None and (not isinstance(self.credits, int) or self.credits < 0):
            out.append(f"--credits must be an integer >= 0, not {self.credits!r}")
        if self.rate_limit is not None and (not finite(self.rate_limit) or self.rate_limit <= 0):
            out.append(f"--rate-limit must be a number > 0, not {self.rate_limit!r}")
        if not finite(self.fault_rate) or not 0.0 <= self.fault_rate <= 1.0:
            out.append(f"--fault-rate must be between 0 and 1, not {self.fault_rate!r}")
        if not finite(self.fault_delay) or self.fault_delay < 0:
            out.append(f"--fault-delay must be a number >= 0, not {self.fault_delay!r}")
        unknown = [k for k in self.fault_kinds if k not in FAULT_KINDS]
        if unknown:
            out.append(
                f"unknown fault kind(s) {', '.join(unknown)}; choose from {', '.join(FAULT_KINDS)}"
            )
        if self.dialect not in DIALECTS:
            out.append(f"unknown dialect {self.dialect!r}; choose from {', '.join(DIALECTS)}")
        if not self.fault_kinds:
            out.append("--fault-kinds needs at least one kind")
        if any(not k or k != k.strip() for k in self.api_keys):
            out.append("--api-key values must be non-empty and have no surrounding spaces")
        if not isinstance(self.max_upload_bytes, int) or self.max_upload_bytes < 1:
            out.append(f"--max-upload-mb must be > 0, not {self.max_upload_bytes!r}")
        if self.bandwidth_mbps is not None and (not finite(self.bandwidth_mbps) or self.bandwidth_mbps <= 0):
            out.append(f"--bandwidth-mbps must be a number > 0, not {self.bandwidth_mbps!r}")
        if self.max_trainings_per_key is not None and (
            not isinstance(self.max_trainings_per_key, int) or self.max_trainings_per_key < 1
        ):
            out.append(
                f"--max-trainings-per-key must be an integer >= 1, not {self.max_trainings_per_key!r}"
            )
        if self.max_stored_bytes_per_key is not None and (
            not isinstance(self.max_stored_bytes_per_key, int) or self.max_stored_bytes_per_key < 1
        ):
            out.append(
                f"--max-stored-mb-per-key must be > 0, not {self.max_stored_bytes_per_key!r}"
            )
        if self.exposed and not self.api_keys:
            out.append(
                "a sandbox listening beyond loopback needs at least one --api-key (it would"
                " accept any key otherwise)"
            )
        if self.webhook_attempts < 1 or self.webhook_backoff < 0:
            out.append("webhook retry settings must be positive")
        return out
