"""The ``{"message": ...}`` answer: the shape the service gives every refusal but a 422.

Both the gate (401, 402, 413, 429, injected faults) and the routes (400, 402, 404) answer
with it, so it lives apart from either.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse


def message(status: int, text: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"message": text}, status_code=status, headers=headers)


class ClientMessage(Exception):
    """A 4xx with a ``{"message": ...}`` body, raised from deep inside a handler (the app's
    exception handler turns it into the answer)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.message = text
