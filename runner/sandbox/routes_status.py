"""``GET /finetune/{trigger_word}`` and the sandbox's own routes, outside the document.

- ``GET /_sandbox/ledger`` (same ``X-Api-Key``): ``{"credits_charged", "trainings",
  "posts", "replays", "balance", "stored_bytes", "duplicate_trainings", "status_checks",
  "largest_image_side"}`` for that key, so tests can prove "no double charge", count the
  polls a client spent, and see what its uploads really were (the bytes of the images its
  trainings kept; the longest image side it sent since start-up).
- ``GET /_sandbox/files/{asset_id}/{name}``: the sample PNGs (no key, like a CDN URL).
- ``GET /_sandbox/health``: ``{"ok": true}``, no key.

A training's status is advanced when someone looks (``training.advance``), so these
answers are right even when no ticker runs (in-process, under ``httpx.ASGITransport``).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from runner.sandbox import dialects, openapi, training
from runner.sandbox.messages import message
from runner.sandbox.runtime import ApiKey, caller, sandbox_of


def add_routes(app: FastAPI) -> None:
    """On the app itself, not through an APIRouter, which costs every request a second
    route match (``runner.sandbox.app``)."""
    status = openapi.STATUS_ROUTE
    app.add_api_route("/finetune/{trigger_word}", finetune_flux_status, methods=["GET"], **status)
    for path, endpoint in (
        ("/_sandbox/ledger", sandbox_ledger),
        ("/_sandbox/health", sandbox_health),
        ("/_sandbox/files/{asset_id}/{name}", sandbox_file),
    ):
        app.add_api_route(path, endpoint, methods=["GET"], include_in_schema=False)


async def finetune_flux_status(
    trigger_word: str, request: Request, _api_key: ApiKey = None
) -> Response:
    sandbox, account = caller(request)
    sandbox.status_checks[account] = sandbox.status_checks.get(account, 0) + 1
    asset = sandbox.store.get_asset(account, trigger_word)
    if asset is None:
        # 400, not 404: the route documents 400 (and no 404) for a bad request.
        return message(400, f"no finetune {trigger_word!r} for this API key")
    now = sandbox.clock()
    asset = training.advance(sandbox.store, asset, now)
    body = dialects.status_answer(sandbox.config.dialect, asset, str(request.base_url), now)
    return JSONResponse(body)


async def sandbox_ledger(request: Request) -> dict[str, Any]:
    sandbox, account = caller(request)
    return {
        **sandbox.store.ledger(account),
        "status_checks": sandbox.status_checks.get(account, 0),
        "largest_image_side": sandbox.largest_side.get(account, 0),
    }


async def sandbox_health() -> dict[str, Any]:
    return {"ok": True, "app_name": training.APP_NAME}


async def sandbox_file(asset_id: str, name: str, request: Request) -> Response:
    sandbox = sandbox_of(request)
    asset = sandbox.store.get_asset_by_id(asset_id)
    if asset is None or name not in training.OUTPUT_NAMES:
        return message(404, "no such file")
    asset = training.advance(sandbox.store, asset, sandbox.clock())
    if asset.status != training.SUCCESS:
        return message(404, "no such file (the training has not succeeded)")
    state_dir = sandbox.config.state_dir
    path = await run_in_threadpool(training.render_output, asset, name, state_dir)
    return FileResponse(path, media_type="image/png")
