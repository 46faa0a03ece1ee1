"""The sandbox HTTP app: ``create_app(config) -> FastAPI``, assembled from its parts.

- ``gate``: key check, rate limit, upload cap, bandwidth, ``Idempotency-Key`` echo and
  fault injection, as raw ASGI in front of FastAPI (``SandboxApp.__call__``);
- ``routes_finetune`` (POST /finetune, with ``validation``, ``uploads`` and
  ``idempotency``) and ``routes_status`` (the status route and the ``/_sandbox/`` ones);
- ``openapi``: the published words, and the patching of FastAPI's document;
- ``runtime``: the state they share (store, clock, limiter, faults, webhooks, ticker).

Routes are added to the app itself (``add_routes``) and find the sandbox through
``runtime.caller(request)``, not through an included ``APIRouter`` or a FastAPI dependency:
each of those costs every request another pass of FastAPI's machinery (about 100 and 60
more Python calls per GET, measured), which a server benchmarked by POSTs per second feels.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException
from starlette.types import Receive, Scope, Send

from runner.sandbox import openapi, routes_finetune, routes_status
from runner.sandbox.config import SandboxConfig
from runner.sandbox.gate import gate, guarded
from runner.sandbox.messages import ClientMessage, message
from runner.sandbox.runtime import Sandbox


class SandboxApp(FastAPI):
    """FastAPI with the gate in front; ``sandbox`` holds the runtime state."""

    sandbox: Sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and guarded(scope["path"]):
            await gate(self.sandbox, scope, receive, send, super().__call__)
        else:
            await super().__call__(scope, receive, send)


def create_app(config: SandboxConfig, *, clock: Callable[[], float] = time.time) -> FastAPI:
    """A fresh sandbox over ``config.state_dir``; ``clock`` is injectable for tests.

    The background ticker (finishing trainings nobody polls, sending webhooks) runs in the
    lifespan, so under ``httpx.ASGITransport`` (no lifespan) statuses still advance on
    GET, but webhooks wait for a server run. The lifespan also closes the database; without
    it, call ``app.state.sandbox.close()`` when done.
    """
    sandbox = Sandbox(config, clock)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sandbox.run_ticker, tg)
                yield
                tg.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await sandbox.webhooks.aclose()
            sandbox.close()

    app = SandboxApp(
        title=openapi.TITLE,
        description=openapi.DESCRIPTION,
        version=openapi.VERSION,
        lifespan=lifespan,
    )
    app.sandbox = sandbox
    app.state.sandbox = sandbox
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(ClientMessage, _client_message)  # type: ignore[arg-type]
    routes_finetune.add_routes(app)
    routes_status.add_routes(app)
    app.openapi = lambda: openapi.document(app)  # type: ignore[method-assign]
    return app


async def _http_error(_request: Request, exc: HTTPException) -> Response:
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return message(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))


async def _client_message(_request: Request, exc: ClientMessage) -> Response:
    return message(exc.status, exc.message)

