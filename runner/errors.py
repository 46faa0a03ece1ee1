"""The error tree and the one place that maps errors to exit codes.

    RunnerError                 exit 1 unless said otherwise: bad input or usage
    ├── UsageError              a bad flag or argument combination
    ├── InputError              bad manifest / lockfile / file; carries Diagnostics
    ├── LockHeldError           another apply holds the lockfile
    ├── LockfileWriteError      (runner.state.lockfile) the journal or lockfile cannot be written
    └── ApiError                an answer from the finetune API (status), or none (status 0)
        ├── InsufficientCredit  402: exit 4
        ├── KeyRefused          401/403: the key is refused; nothing more is sent
        ├── Uncertain           a POST that may have started a paid training; its answer lost
        ├── Unreachable         nothing reached the server (name, refused, TLS, timeout)
        └── Transient           worth another try; kept inside the client's retry loops
            ├── NotReached      the request never reached the server
            ├── Busy            429: refused before anything was done
            └── Replayable      a lost POST answer at an API that honours Idempotency-Key

An answer the wire format cannot read is a value (``runner.api.wire.Unreadable``), not an
error. Per-job failures during apply are *values* (outcomes recorded in the lockfile), never
exceptions escaping the task group; anything else is a bug: exit 70, after the lockfile is
saved (``runner.cli``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from runner.diagnostics import Diagnostic

EXIT_OK = 0
EXIT_INPUT = 1
EXIT_CHANGES = 2
EXIT_INCOMPLETE = 3
EXIT_CREDIT = 4
EXIT_BUG = 70  # an unexpected internal error (DESIGN section 2)
EXIT_INTERRUPTED = 130


class RunnerError(Exception):
    """An expected failure the user can act on; its message is shown without a traceback."""

    exit_code: int = EXIT_INPUT


class UsageError(RunnerError):
    """A bad flag, a missing argument, a combination that makes no sense."""


class InputError(RunnerError):
    """One or more problems with a file the user gave us, each pointing at its place."""

    def __init__(self, diagnostics: Sequence[Diagnostic] | str) -> None:
        if isinstance(diagnostics, str):
            self.diagnostics: list[Diagnostic] = []
            super().__init__(diagnostics)
        else:
            self.diagnostics = list(diagnostics)
            super().__init__("\n".join(d.format() for d in self.diagnostics))


class LockHeldError(RunnerError):
    """Another runner process holds the lockfile's lock."""


class ApiError(RunnerError):
    """The finetune API answered with an error (or could not be reached).

    ``status`` is the HTTP status (0 when no answer arrived); ``retry_after`` is the
    server's Retry-After in seconds when it sent one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int = 0,
        job: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.job = job
        self.retry_after = retry_after


class InsufficientCredit(ApiError):
    """402 from the API: stop submitting, follow what runs, exit 4."""

    exit_code = EXIT_CREDIT


class KeyRefused(ApiError):
    """401/403: the API refused the key. Whatever the request, the run stops sending."""

    def __init__(self, message: str, *, status: int, job: str | None = None) -> None:
        super().__init__(f"the API refused the key (HTTP {status}): {message}", status=status, job=job)


class Unreachable(ApiError):
    """The endpoint could not be reached at all; ``message`` names the host and the cause."""


class Uncertain(ApiError):
    """The POST may have started a paid training, and we cannot know: never retried blindly.

    ``answer``: the raw answer (a 5xx body) when one arrived, kept in the lockfile.
    """

    def __init__(self, message: str, *, status: int = 0, job: str | None = None,
                 answer: str | None = None) -> None:
        super().__init__(message, status=status, job=job)
        self.answer = answer


class Transient(ApiError):
    """Worth another try: the server was busy, or the answer of a safe request was lost."""


class NotReached(Transient):
    """The request never reached the server: nothing can have happened there."""


class Busy(Transient):
    """429: the server refused the request before doing anything."""


class Replayable(Transient):
    """A POST whose answer was lost (or was a 5xx) at an API that honours Idempotency-Key:
    replaying it under the same key cannot pay twice."""

    def __init__(self, message: str, *, status: int = 0, job: str | None = None,
                 answer: str | None = None) -> None:
        super().__init__(message, status=status, job=job)
        self.answer = answer
