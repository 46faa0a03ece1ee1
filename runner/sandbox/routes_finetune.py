"""``POST /finetune``: check the request, replay it or start (and charge) a training.

The order is the service's contract: field errors (422) before Kontext's rules and a bad
``Idempotency-Key`` (400), unreadable images (400), then a replay under the key (the stored
answer, nothing charged), then quota and credit (402), and only then anything written.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from runner.models import uses_finetune_type, uses_prompt
from runner.sandbox import dialects, idempotency, openapi, training, uploads, validation
from runner.sandbox.messages import message
from runner.sandbox.quota import InsufficientCredit, QuotaExceeded, no_credit_message
from runner.sandbox.runtime import ApiKey, Sandbox, caller
from runner.sandbox.store import NewAsset


@dataclass(frozen=True)
class Submission:
    """One checked POST: the training's arguments and its (inspected) uploads."""

    account: str
    args: dict[str, Any]
    files: list[UploadFile]
    inspected: list[tuple[str, str, int]]  # (sha256, format, size) of each upload
    request_hash: str
    idem: str | None
    base_url: str


def add_routes(app: FastAPI) -> None:
    """On the app itself, like ``routes_status.add_routes``."""
    app.add_api_route("/finetune", finetune_flux, methods=["POST"], **openapi.CREATE_ROUTE)


async def finetune_flux(
    request: Request,
    image_files: Annotated[
        list[UploadFile] | None,
        File(title="Image Files", description=openapi.IMAGE_FILES_DESCRIPTION),
    ] = None,
    image_urls: Annotated[
        list[str], Form(title="Image URLs", description=openapi.IMAGE_URLS_DESCRIPTION)
    ] = [],  # noqa: B006 - FastAPI copies defaults; the document shows this one
    num_iterations: Annotated[int, Form(title=openapi.NUM_ITERATIONS_TITLE)] = 0,
    option: Annotated[str, Form(title="Option", description=openapi.OPTION_DESCRIPTION)] = (
        "FluxFinetune"
    ),
    finetune_type: Annotated[
        str, Form(title="Finetune Type", description=openapi.FINETUNE_TYPE_DESCRIPTION)
    ] = "Auto",
    lora_prefix: Annotated[
        str, Form(title="Lora Prefix", description=openapi.LORA_PREFIX_DESCRIPTION)
    ] = "MYLORA",
    prompt: Annotated[
        str | None, Form(title="Prompt", description=openapi.PROMPT_DESCRIPTION)
    ] = None,
    webhook_url: Annotated[str | None, Form(title="Webhook Url")] = None,
    _api_key: ApiKey = None,
) -> Response:
    sandbox, account = caller(request)
    files = list(image_files or [])
    urls = [u for u in image_urls if u]
    args: dict[str, Any] = {
        "option": option,
        "finetune_type": finetune_type if uses_finetune_type(option) else None,
        "lora_prefix": lora_prefix,
        "num_iterations": num_iterations,
        "prompt": prompt if uses_prompt(option) else prompt or None,
        "image_count": len(files) or len(urls),
        "image_files": [f.filename or "" for f in files],
        "image_urls": [] if files else urls,
        "webhook_url": webhook_url or None,
    }
    validation.check(args)
    idem = request.headers.get("idempotency-key") if sandbox.config.idempotency else None
    idempotency.check_key(idem)
    inspected = await _inspect(sandbox, account, files)
    hashed = idempotency.request_hash(args, [digest for digest, _, _ in inspected])
    async with sandbox.locks.hold_if((account, idem) if idem else None):
        replayed = idempotency.replay(sandbox.store, account, idem, hashed, sandbox.clock())
        if replayed is not None:
            return replayed
        submission = Submission(
            account, args, files, inspected, hashed, idem, str(request.base_url)
        )
        return await _start_training(sandbox, submission)


async def _inspect(
    sandbox: Sandbox, account: str, files: list[UploadFile]
) -> list[tuple[str, str, int]]:
    if not files:
        return []
    sides: list[int] = []
    inspected = await run_in_threadpool(uploads.inspect, files, sides)
    if sides:
        sandbox.largest_side[account] = max(sandbox.largest_side.get(account, 0), *sides)
    return inspected


async def _start_training(sandbox: Sandbox, sub: Submission) -> Response:
    store, config = sandbox.store, sandbox.config
    # Quotas before credit, and before anything is written: answered 402, the documented
    # "this key cannot pay for more" (README "The sandbox", Exposing it).
    adding = sum(size for _, _, size in sub.inspected)
    refusal = sandbox.quota.refusal(*store.usage(sub.account), adding)
    if refusal:
        return message(402, refusal)
    balance = store.ledger(sub.account)["balance"]
    if balance is not None and balance < 1:
        return message(402, no_credit_message(balance))
    asset_id = training.new_asset_id()
    folder = config.state_dir / "uploads" / asset_id
    images: list[str] = []
    if sub.files:
        formats = [fmt for _, fmt, _ in sub.inspected]
        await run_in_threadpool(uploads.store, sub.files, formats, folder)
        images = sorted(str(p.relative_to(config.state_dir)) for p in folder.iterdir())
    new = _new_asset(sandbox, sub, asset_id, folder, images, adding)
    try:
        asset = store.create_asset(
            new, lambda: training.new_trigger_word(sub.args["lora_prefix"]), quota=sandbox.quota
        )
    except InsufficientCredit as exc:
        shutil.rmtree(folder, ignore_errors=True)
        return message(402, no_credit_message(exc.args[0]))
    except QuotaExceeded as exc:  # a concurrent request took the last of the quota
        shutil.rmtree(folder, ignore_errors=True)
        return message(402, str(exc.args[0]))
    body = json.dumps(dialects.post_answer(config.dialect, asset, sub.base_url)).encode()
    if sub.idem:
        store.put_idempotent(sub.account, sub.idem, sub.request_hash, 200, body, new.created_at)
    return Response(body, media_type="application/json")


def _new_asset(
    sandbox: Sandbox, sub: Submission, asset_id: str, folder: Path, images: list[str], size: int
) -> NewAsset:
    now = sandbox.clock()
    args = sub.args
    return NewAsset(
        id=asset_id,
        account=sub.account,
        args=args,
        created_at=now,
        duration=training.training_duration(
            sandbox.config.train_seconds, args["image_count"], args["num_iterations"]
        ),
        outcome=training.outcome_for(args["lora_prefix"]),
        status=training.QUEUED,
        history=[training.history_entry(training.QUEUED, now)],
        base_url=sub.base_url,
        image_dir=str(folder.relative_to(sandbox.config.state_dir)),
        images=images,
        webhook_url=args["webhook_url"],
        request_hash=sub.request_hash,
        stored_bytes=size,
    )
