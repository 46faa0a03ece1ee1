"""The sandbox HTTP app: ``create_app(config) -> FastAPI``.

The finetune routes mirror the published Vimmerse document (titles, defaults, answers are
copied from ``vimmerse-finetune-openapi.json``, checked by a test). Everything that is not
the API itself — key check, per-key rate limit, upload cap, ``Idempotency-Key`` echo and
fault injection — happens in one *gate* in front of FastAPI (``SandboxApp.__call__``):
it must run before the multipart body is parsed, and to drop a connection it needs
uvicorn's own ``send``, which Starlette middleware would only see wrapped.

Extra routes, outside the OpenAPI document:

- ``GET /_sandbox/ledger`` (same ``X-Api-Key``): ``{"credits_charged", "trainings",
  "posts", "replays", "balance", "stored_bytes", "duplicate_trainings", "status_checks",
  "largest_image_side"}`` for that key, so tests can prove "no double charge", count the
  polls a client spent, and see what its uploads really were (the bytes of the images its
  trainings kept; the longest image side it sent since start-up).
- ``GET /_sandbox/files/{asset_id}/{name}``: the sample PNGs (no key, like a CDN URL).
- ``GET /_sandbox/health``: ``{"ok": true}``, no key.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import re
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import anyio
from fastapi import FastAPI, File, Form, Request, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope, Send

from runner.sandbox import dialects, training
from runner.sandbox.bandwidth import Link
from runner.sandbox.config import POST_ONLY_FAULTS, SandboxConfig
from runner.sandbox.faults import STATUS_KINDS, FaultInjector, RateLimiter
from runner.sandbox.store import InsufficientCredit, Quota, QuotaExceeded, Store
from runner.sandbox.webhooks import WebhookSender

log = logging.getLogger("runner.sandbox")

OPTIONS = ("FluxFinetune", "FluxProFinetune", "FluxKontextFinetune")
KONTEXT = "FluxKontextFinetune"
FINETUNE_TYPES = ("Auto", "Character", "Product", "Style")
# Trigger words travel in URL paths and prompts: keep prefixes to a safe alphabet.
PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_ITERATIONS = 100_000
IDEMPOTENCY_TTL = 24 * 3600.0
MAX_IDEMPOTENCY_KEY = 255
TICK_SECONDS = 0.1
# After the cap is hit the rest of the body is still read (and thrown away) up to this
# much more, so the client gets its 413 instead of a reset connection mid-upload.
DRAIN_SLACK = 16 * 1024 * 1024
COPY_CHUNK = 1024 * 1024

_GAP47 = " " * 47
_GAP36 = " " * 36
IMAGE_FILES_DESCRIPTION = (
    "Images to be uploaded for training. For FluxFintune and FluxProFintune, providing a few"
    " images of the desired object/person/style will usually suffice." + _GAP47 + "In case of"
    " FluxKontextFinetune, images should be provided in pairs." + _GAP47 + "For each pair, the"
    " first image will be used as 'start' and the second image as 'end' for the training."
    " Where the 'end' image contains the desired" + _GAP47 + "outcome of applying the edit"
    " described in 'prompt' to the 'start' image."
)
IMAGE_URLS_DESCRIPTION = (
    "Alternatively you can provide URLs of the training image files. If you upload image"
    " files, this field will be ignored."
)
NUM_ITERATIONS_TITLE = (
    "Number of training iterations. Defaults to 0 for Auto. In Auto mode the actual values for "
)
OPTION_DESCRIPTION = (
    "Training option to finetune based on your images. Available values are"
    " `FluxFinetune, FluxProFinetune, FluxKontextFinetune`."
)
FINETUNE_TYPE_DESCRIPTION = (
    "Override finetune type. Finetune type can be `Auto`, `Character`, `Product`, or `Style`."
    " Choose `Auto` for automatic selection (default)." + _GAP36 + "This field is ignored when"
    " option is set to FluxKontextFinetune"
)
LORA_PREFIX_DESCRIPTION = "Prefix for the name of LoRA. Try to choose a unique string."
PROMPT_DESCRIPTION = (
    "Prompt describing the relationship between the start and end images in given image pairs"
    " when FluxKontextFinetune is used. It is ignored with other options." + _GAP47 + "For"
    " instance, if in the 'start' image is a blue car but the 'end' image is a red car the"
    " prompt can be 'turn the car red.'"
)
POST_EXAMPLE = {
    "data": {
        "id": "ASSET_ID",
        "customer_id": "CUSTOMER_ID",
        "primary_user_id": "CUSTOMER_ID",
        "args": {},
        "results": ["result_url1", "result_url2"],
        "thumbnails": [],
        "status": "success",
        "mime_type": "MIMETYPE",
        "app_name": "FUNCTION_NAME",
        "created_at": "2025-05-06 16:35:59.840508+00:00",
        "updated_at": "2025-05-06 16:35:59.840508+00:00",
        "history": [],
    }
}
GET_EXAMPLE = {
    "data": [{"URL": "https://dev-media.vimmerse.net/customer_id/ai_images/53c6eg9/output.png"}]
}


class FailureResponseModel(BaseModel):
    """Failure Response Model"""

    message: str = "ERROR CODE"


_FAILURES: dict[int | str, dict[str, Any]] = {
    400: {"model": FailureResponseModel, "description": "Bad Request"},
    402: {"model": FailureResponseModel, "description": "Insufficient Credit"},
}
# Answers the published document leaves out but the sandbox really gives (and the service
# documents in prose, DESIGN section 1), so that a schema-driven client or fuzzer sees every
# status it can get. 403 is never sent by the sandbox (any accepted key may do everything)
# but is declared because the service documents it.
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Whole seconds to wait before the next request with this key.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}
_UNDOCUMENTED: dict[int | str, dict[str, Any]] = {
    401: {"model": FailureResponseModel, "description": "Missing or invalid X-Api-Key"},
    403: {"model": FailureResponseModel, "description": "Forbidden"},
    429: {
        "model": FailureResponseModel,
        "description": "Too Many Requests: above the key's rate limit",
        "headers": _RETRY_AFTER,
    },
}
_TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"model": FailureResponseModel, "description": "Upload larger than the limit"},
}
GATEWAY_TIMEOUT_MESSAGE = (
    "sandbox fault injection: HTTP 504 Gateway Timeout (the request may have been processed)"
)

api_key_header = APIKeyHeader(name="X-Api-Key", auto_error=False)


class UploadTooLarge(HTTPException):
    """Raised from inside body reading; an HTTPException so FastAPI lets it through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"upload larger than the sandbox's limit of {limit} bytes")


class ClientMessage(Exception):
    """A 4xx with a ``{"message": ...}`` body, raised from deep inside the handler."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def account_of(api_key: str) -> str:
    return hashlib.sha256(api_key.encode()).hexdigest()


def _message(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status, headers=headers)


def _error(
    loc: tuple[str | int, ...], type_: str, msg: str, value: Any, **ctx: Any
) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type_, "loc": loc, "msg": msg, "input": value}
    if ctx:
        error["ctx"] = ctx
    return error


class KeyedLocks:
    """One lock per key, forgotten when nobody holds or waits for it, so replays of the
    same ``Idempotency-Key`` run one after the other and never train twice."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[anyio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, key: Hashable) -> AsyncIterator[None]:
        lock, users = self._locks.get(key, (anyio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class Sandbox:
    """Runtime state behind one app: store, clock, limiter, faults, webhooks, ticker."""

    def __init__(self, config: SandboxConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        config.state_dir.mkdir(parents=True, exist_ok=True)
        (config.state_dir / "uploads").mkdir(exist_ok=True)
        self.store = Store(config.state_dir / "sandbox.sqlite3")
        self.store.reset_balances(config.credits)
        self.faults = FaultInjector(config)
        self.limiter = RateLimiter(config.rate_limit, clock)
        self.locks = KeyedLocks()
        self.webhooks = WebhookSender(self.store, config, clock)
        self.quota = Quota(config.max_trainings_per_key, config.max_stored_bytes_per_key)
        self._keys = tuple(k.encode() for k in config.api_keys)
        self._known: set[str] = set()
        self._closed = False
        # Status answers per account since start-up (not persisted: a diagnostic, so tests
        # and benchmarks can count how many polls a client spent).
        self.status_checks: dict[str, int] = {}
        # --bandwidth-mbps: one link shared by every request body.
        self.link = Link(config.bandwidth_mbps) if config.bandwidth_mbps else None
        # The longest image side each account uploaded since start-up (a diagnostic, so
        # tests and benchmarks can see what a client's downscaling really sent).
        self.largest_side: dict[str, int] = {}

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.store.close()

    # -- the gate ---------------------------------------------------------------------

    def authenticate(self, key: str) -> str | None:
        if not key:
            return None
        if self._keys:
            raw = key.encode()
            if not any(hmac.compare_digest(raw, k) for k in self._keys):
                return None
        account = account_of(key)
        if account not in self._known:  # one write per new key, not per request
            self.store.ensure_account(account, training.customer_id(account), self.config.credits)
            self._known.add(account)
        return account

    async def gate(
        self, scope: Scope, receive: Receive, send: Send, app: Callable[..., Awaitable[None]]
    ) -> None:
        raw_send = send
        method = scope["method"]
        path: str = scope["path"]
        headers = dict(scope["headers"])
        idem = headers.get(b"idempotency-key") if method == "POST" else None
        if idem is not None and self.config.idempotency:
            send = _echo(send, idem)
        key = headers.get(b"x-api-key", b"").decode("latin-1")
        account = self.authenticate(key)
        if account is None:
            await self._drain(receive)
            await _message(401, "missing or invalid X-Api-Key")(scope, receive, send)
            return
        scope.setdefault("state", {})["sandbox_account"] = account
        if path.startswith("/_sandbox/"):
            await app(scope, receive, send)
            return
        is_post = method == "POST" and path == "/finetune"
        if is_post:
            self.store.count_post(account)
        retry_after = self.limiter.acquire(account)
        if retry_after is not None:
            await self._drain(receive)
            response = _message(
                429, "rate limit exceeded", headers={"Retry-After": str(retry_after)}
            )
            await response(scope, receive, send)
            return
        if is_post and not (idem is not None and self.config.idempotency):
            # A key whose quota is already spent is told so before its body is read (and
            # spooled to disk); a replay under an Idempotency-Key creates nothing, so it goes
            # on to get its stored answer.
            refusal = self.quota.refusal(*self.store.usage(account), 0)
            if refusal:
                await self._drain(receive)
                await _message(402, refusal)(scope, receive, send)
                return
        if method == "POST":
            limit = self.config.max_upload_bytes
            length = headers.get(b"content-length", b"")
            if length.isdigit() and int(length) > limit:
                if headers.get(b"expect", b"").lower() != b"100-continue":
                    await self._drain(receive)
                await _message(413, UploadTooLarge(limit).detail)(scope, receive, send)
                return
            receive = self._capped(receive, limit)
            if self.link is not None:
                receive = self.link.throttled(receive)
        fault = self.faults.draw(is_post=is_post)
        if fault in STATUS_KINDS:
            await self._drain(receive)
            status = STATUS_KINDS[fault]
            await _message(status, f"sandbox fault injection: HTTP {status}")(scope, receive, send)
            return
        if fault == "drop":
            await self._drain(receive)
            await _drop(raw_send)
            return
        if fault == "slow":
            await anyio.sleep(self.faults.slow_seconds())
        if fault in POST_ONLY_FAULTS:
            # Only a training that was created has an answer worth losing; a refused POST
            # (4xx, such as a client's free probe) is answered as usual.
            held: list[Message] = []

            async def hold(message: Message) -> None:
                held.append(message)

            await app(scope, receive, hold)
            start = held[0] if held else {}
            status = start.get("status", 500)
            replayed = any(
                name.lower() == b"idempotent-replayed" for name, _ in start.get("headers", [])
            )
            if 200 <= status < 300 and fault == "lost_post":
                await _drop(raw_send)
                return
            if 200 <= status < 300 and not replayed:
                # gateway_timeout. A replay created nothing, so it gets its stored 200:
                # that is how a client recovers the trigger word behind a 504.
                await _message(504, GATEWAY_TIMEOUT_MESSAGE)(scope, receive, send)
                return
            for message in held:
                await send(message)
            return
        await app(scope, receive, send)

    async def _drain(self, receive: Receive, budget: int | None = None) -> None:
        """Read and discard the rest of the body so the client sees our answer, not a
        reset connection; bounded, because a client may lie about what it sends."""
        budget = self.config.max_upload_bytes + DRAIN_SLACK if budget is None else budget
        while budget > 0:
            message = await receive()
            if message["type"] != "http.request":
                return
            budget -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    def _capped(self, receive: Receive, limit: int) -> Receive:
        seen = 0

        async def capped() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    if message.get("more_body", False):
                        await self._drain(receive, DRAIN_SLACK)
                    raise UploadTooLarge(limit)
            return message

        return capped

    # -- background ---------------------------------------------------------------------

    async def run_ticker(self, task_group: anyio.abc.TaskGroup) -> None:
        """Finish due trainings and send due webhooks even when nobody polls."""
        last_purge = 0.0
        while True:
            try:
                now = self.clock()
                for asset_id in self.store.due_asset_ids(now):
                    asset = self.store.get_asset_by_id(asset_id)
                    if asset is not None:
                        training.advance(self.store, asset, now)
                for asset_id in self.webhooks.due():
                    task_group.start_soon(self.webhooks.deliver, asset_id)
                if now - last_purge > 60:
                    self.store.purge_idempotent(now - IDEMPOTENCY_TTL)
                    last_purge = now
            except Exception:  # the ticker must outlive any one bad row
                log.exception("sandbox ticker error")
            await anyio.sleep(TICK_SECONDS)


def _echo(send: Send, value: bytes) -> Send:
    async def echo(message: Message) -> None:
        if message["type"] == "http.response.start":
            headers = list(message.get("headers", []))
            if not any(name.lower() == b"idempotency-key" for name, _ in headers):
                headers.append((b"idempotency-key", value))
            message = {**message, "headers": headers}
        await send(message)

    return echo


async def _drop(send: Send) -> None:
    """Close the connection without an answer.

    Under uvicorn, ``send`` is a bound method of the request cycle that owns the socket's
    transport; aborting it is what a crashed proxy looks like to the client. In-process
    (``httpx.ASGITransport``) there is no socket, so raise what httpx raises for a real drop.
    """
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    if transport is not None and hasattr(transport, "abort"):
        transport.abort()
        # Let the loop run connection_lost, so uvicorn sees a disconnect, not a bug.
        await anyio.sleep(0)
        await anyio.sleep(0)
        return
    import httpx

    raise httpx.RemoteProtocolError("Server disconnected without sending a response.")


class SandboxApp(FastAPI):
    """FastAPI with the gate in front; ``sandbox`` holds the runtime state."""

    sandbox: Sandbox

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _guarded(scope["path"]):
            await self.sandbox.gate(scope, receive, send, super().__call__)
        else:
            await super().__call__(scope, receive, send)


def _guarded(path: str) -> bool:
    return path == "/finetune" or path.startswith("/finetune/") or path == "/_sandbox/ledger"


# -- request checks ---------------------------------------------------------------------


def _inspect_uploads(
    files: list[UploadFile], sides: list[int] | None = None
) -> list[tuple[str, str, int]]:
    """(sha256, image format, size in bytes) for each upload, read from the spooled parts in
    chunks; runs in a worker thread. Raises ClientMessage(400) for empty or non-image files.
    ``sides`` receives each image's longer side in pixels (from its header)."""
    from PIL import Image

    out = []
    for index, upload in enumerate(files):
        upload.file.seek(0)
        digest = hashlib.sha256()
        size = 0
        while chunk := upload.file.read(COPY_CHUNK):
            digest.update(chunk)
            size += len(chunk)
        name = upload.filename or ""
        if size == 0:
            raise ClientMessage(400, f"image_files[{index}] ({name!r}) is empty")
        upload.file.seek(0)
        try:
            with Image.open(upload.file) as im:
                fmt = (im.format or "").lower()
                if sides is not None:
                    sides.append(max(im.size))
        except Exception:
            raise ClientMessage(
                400, f"image_files[{index}] ({name!r}) is not an image the sandbox can read"
            ) from None
        out.append((digest.hexdigest(), fmt or "bin", size))
    return out


def _store_uploads(files: list[UploadFile], formats: list[str], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for index, (upload, fmt) in enumerate(zip(files, formats, strict=True)):
        upload.file.seek(0)
        ext = {"jpeg": "jpg"}.get(fmt, fmt)
        with open(folder / f"{index:03d}.{ext}", "wb") as out:
            shutil.copyfileobj(upload.file, out, COPY_CHUNK)


def _check_fields(
    *,
    option: str,
    finetune_type: str,
    num_iterations: int,
    lora_prefix: str,
    has_files: bool,
    image_urls: list[str],
    webhook_url: str | None,
) -> None:
    errors: list[dict[str, Any]] = []
    if option not in OPTIONS:
        expected = ", ".join(f"'{o}'" for o in OPTIONS[:-1]) + f" or '{OPTIONS[-1]}'"
        errors.append(
            _error(
                ("body", "option"),
                "literal_error",
                f"Input should be {expected}",
                option,
                expected=expected,
            )
        )
    if option != KONTEXT and finetune_type not in FINETUNE_TYPES:
        expected = ", ".join(f"'{t}'" for t in FINETUNE_TYPES[:-1]) + f" or '{FINETUNE_TYPES[-1]}'"
        errors.append(
            _error(
                ("body", "finetune_type"),
                "literal_error",
                f"Input should be {expected}",
                finetune_type,
                expected=expected,
            )
        )
    if num_iterations < 0:
        errors.append(
            _error(
                ("body", "num_iterations"),
                "greater_than_equal",
                "Input should be greater than or equal to 0",
                num_iterations,
                ge=0,
            )
        )
    elif num_iterations > MAX_ITERATIONS:
        errors.append(
            _error(
                ("body", "num_iterations"),
                "less_than_equal",
                f"Input should be less than or equal to {MAX_ITERATIONS}",
                num_iterations,
                le=MAX_ITERATIONS,
            )
        )
    if not PREFIX_RE.match(lora_prefix):
        errors.append(
            _error(
                ("body", "lora_prefix"),
                "string_pattern_mismatch",
                f"String should match pattern '{PREFIX_RE.pattern}'",
                lora_prefix,
                pattern=PREFIX_RE.pattern,
            )
        )
    if not has_files:
        if not image_urls:
            errors.append(
                _error(
                    ("body", "image_files"),
                    "missing",
                    "Field required: upload image_files or give image_urls",
                    None,
                )
            )
        for index, url in enumerate(image_urls):
            if not _is_http_url(url):
                errors.append(
                    _error(
                        ("body", "image_urls", index),
                        "url_scheme",
                        "URL scheme should be 'http' or 'https'",
                        url,
                        expected_schemes="'http' or 'https'",
                    )
                )
    if webhook_url and not _is_http_url(webhook_url):
        errors.append(
            _error(
                ("body", "webhook_url"),
                "url_scheme",
                "URL scheme should be 'http' or 'https'",
                webhook_url,
                expected_schemes="'http' or 'https'",
            )
        )
    if errors:
        raise RequestValidationError(errors)


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:
        return False


def _check_kontext(option: str, prompt: str | None, count: int) -> None:
    if option != KONTEXT:
        return
    if not prompt or not prompt.strip():
        raise ClientMessage(400, "FluxKontextFinetune needs a prompt describing the edit")
    if count < 2:
        raise ClientMessage(
            400, "FluxKontextFinetune needs at least one pair of images (start, end)"
        )
    if count % 2:
        raise ClientMessage(
            400, f"FluxKontextFinetune takes images in pairs (start, end); got {count} images"
        )


def _check_idempotency_key(raw: str | None) -> None:
    if raw is None:
        return
    if not raw or len(raw) > MAX_IDEMPOTENCY_KEY or not raw.isprintable():
        raise ClientMessage(
            400, f"Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} printable characters"
        )


# -- the app ------------------------------------------------------------------------------


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
        title="runner sandbox: Vimmerse finetune API stand-in",
        description=(
            "A local stand-in for the Vimmerse finetune API, for development, tests and"
            " demos. Every asset says `app_name: sandbox`. Nothing here trains a model."
        ),
        version="1.0.0",
        lifespan=lifespan,
    )
    app.sandbox = sandbox
    app.state.sandbox = sandbox

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException) -> Response:
        if exc.status_code in (204, 304):
            return Response(status_code=exc.status_code, headers=exc.headers)
        return _message(exc.status_code, str(exc.detail), headers=dict(exc.headers or {}))

    @app.exception_handler(ClientMessage)
    async def client_message(_request: Request, exc: ClientMessage) -> Response:
        return _message(exc.status, exc.message)

    @app.post(
        "/finetune",
        response_model=dict[str, Any],
        tags=["Finetune"],
        summary="Create Finetune",
        description=(
            "This endpoint will start the training of a LoRA model for Flux Pro and returns"
            " its associated unique trigger word."
        ),
        responses={
            200: {
                "description": "Trigger word.",
                "content": {"application/json": {"example": POST_EXAMPLE}},
            },
            **_FAILURES,
            **_UNDOCUMENTED,
            **_TOO_LARGE,
        },
    )
    async def finetune_flux(
        request: Request,
        image_files: Annotated[
            list[UploadFile] | None,
            File(title="Image Files", description=IMAGE_FILES_DESCRIPTION),
        ] = None,
        image_urls: Annotated[
            list[str], Form(title="Image URLs", description=IMAGE_URLS_DESCRIPTION)
        ] = [],  # noqa: B006 - FastAPI copies defaults; the document shows this one
        num_iterations: Annotated[int, Form(title=NUM_ITERATIONS_TITLE)] = 0,
        option: Annotated[str, Form(title="Option", description=OPTION_DESCRIPTION)] = (
            "FluxFinetune"
        ),
        finetune_type: Annotated[
            str, Form(title="Finetune Type", description=FINETUNE_TYPE_DESCRIPTION)
        ] = "Auto",
        lora_prefix: Annotated[
            str, Form(title="Lora Prefix", description=LORA_PREFIX_DESCRIPTION)
        ] = "MYLORA",
        prompt: Annotated[str | None, Form(title="Prompt", description=PROMPT_DESCRIPTION)] = None,
        webhook_url: Annotated[str | None, Form(title="Webhook Url")] = None,
        _api_key: Annotated[str | None, Security(api_key_header)] = None,
    ) -> Response:
        account: str = request.scope["state"]["sandbox_account"]
        files = list(image_files or [])
        image_urls = [u for u in image_urls if u]
        webhook_url = webhook_url or None
        _check_fields(
            option=option,
            finetune_type=finetune_type,
            num_iterations=num_iterations,
            lora_prefix=lora_prefix,
            has_files=bool(files),
            image_urls=image_urls,
            webhook_url=webhook_url,
        )
        count = len(files) or len(image_urls)
        _check_kontext(option, prompt, count)
        idem = request.headers.get("idempotency-key") if sandbox.config.idempotency else None
        _check_idempotency_key(idem)
        sides: list[int] = []
        inspected = await run_in_threadpool(_inspect_uploads, files, sides) if files else []
        if sides:
            sandbox.largest_side[account] = max(sandbox.largest_side.get(account, 0), *sides)
        args: dict[str, Any] = {
            "option": option,
            "finetune_type": finetune_type if option != KONTEXT else None,
            "lora_prefix": lora_prefix,
            "num_iterations": num_iterations,
            "prompt": prompt if option == KONTEXT else prompt or None,
            "image_count": count,
            "image_files": [f.filename or "" for f in files],
            "image_urls": [] if files else image_urls,
            "webhook_url": webhook_url,
        }
        # What makes two requests "the same" for Idempotency-Key: the training's inputs,
        # not its webhook or file names, so a client may replay after those change.
        request_hash = hashlib.sha256(
            json.dumps(
                {
                    k: args[k]
                    for k in (
                        "option",
                        "finetune_type",
                        "lora_prefix",
                        "num_iterations",
                        "prompt",
                        "image_urls",
                    )
                }
                | {"images": [d for d, _, _ in inspected]},
                sort_keys=True,
            ).encode()
        ).hexdigest()
        hold = sandbox.locks.hold((account, idem)) if idem else contextlib.nullcontext()
        async with hold:
            if idem:
                prior = sandbox.store.get_idempotent(
                    account, idem, sandbox.clock() - IDEMPOTENCY_TTL
                )
                if prior is not None:
                    if prior.request_hash != request_hash:
                        raise ClientMessage(
                            400,
                            "Idempotency-Key was already used with a different request",
                        )
                    sandbox.store.count_replay(account)
                    return Response(
                        prior.body,
                        status_code=prior.status_code,
                        media_type="application/json",
                        headers={"Idempotent-Replayed": "true"},
                    )
            return await _start_training(
                sandbox, request, account, args, files, inspected, request_hash, idem
            )

    @app.get(
        "/finetune/{trigger_word}",
        response_model=dict[str, Any],
        tags=["Finetune"],
        summary="Finetune Flux Pro/Dev",
        description=(
            "This endpoint will report the status of training LoRA models for Flux Pro. If"
            " completed, it will also return sample outputs for the LoRA."
        ),
        responses={
            200: {
                "description": "Modified image url.",
                "content": {"application/json": {"example": GET_EXAMPLE}},
            },
            **_FAILURES,
            **_UNDOCUMENTED,
        },
    )
    async def finetune_flux_status(
        trigger_word: str,
        request: Request,
        _api_key: Annotated[str | None, Security(api_key_header)] = None,
    ) -> Response:
        account: str = request.scope["state"]["sandbox_account"]
        sandbox.status_checks[account] = sandbox.status_checks.get(account, 0) + 1
        asset = sandbox.store.get_asset(account, trigger_word)
        if asset is None:
            # 400, not 404: the route documents 400 (and no 404) for a bad request.
            return _message(400, f"no finetune {trigger_word!r} for this API key")
        now = sandbox.clock()
        asset = training.advance(sandbox.store, asset, now)
        body = dialects.status_answer(config.dialect, asset, str(request.base_url), now)
        return JSONResponse(body)

    @app.get("/_sandbox/ledger", include_in_schema=False)
    async def sandbox_ledger(request: Request) -> dict[str, Any]:
        account: str = request.scope["state"]["sandbox_account"]
        return {
            **sandbox.store.ledger(account),
            "status_checks": sandbox.status_checks.get(account, 0),
            "largest_image_side": sandbox.largest_side.get(account, 0),
        }

    @app.get("/_sandbox/health", include_in_schema=False)
    async def sandbox_health() -> dict[str, Any]:
        return {"ok": True, "app_name": training.APP_NAME}

    @app.get("/_sandbox/files/{asset_id}/{name}", include_in_schema=False)
    async def sandbox_file(asset_id: str, name: str) -> Response:
        asset = sandbox.store.get_asset_by_id(asset_id)
        if asset is None or name not in training.OUTPUT_NAMES:
            return _message(404, "no such file")
        asset = training.advance(sandbox.store, asset, sandbox.clock())
        if asset.status != training.SUCCESS:
            return _message(404, "no such file (the training has not succeeded)")
        path = await run_in_threadpool(training.render_output, asset, name, config.state_dir)
        return FileResponse(path, media_type="image/png")

    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


async def _start_training(
    sandbox: Sandbox,
    request: Request,
    account: str,
    args: dict[str, Any],
    files: list[UploadFile],
    inspected: list[tuple[str, str, int]],
    request_hash: str,
    idem: str | None,
) -> Response:
    store = sandbox.store
    config = sandbox.config
    # Quotas before credit, and before anything is written: answered 402, the documented
    # "this key cannot pay for more" (README "The sandbox", Exposing it).
    quota = sandbox.quota
    adding = sum(size for _, _, size in inspected)
    refusal = quota.refusal(*store.usage(account), adding)
    if refusal:
        return _message(402, refusal)
    balance = store.ledger(account)["balance"]
    if balance is not None and balance < 1:
        return _message(402, f"Insufficient credit: this key has {balance} credits left")
    asset_id = training.new_asset_id()
    folder = config.state_dir / "uploads" / asset_id
    images: list[str] = []
    if files:
        await run_in_threadpool(_store_uploads, files, [f for _, f, _ in inspected], folder)
        images = sorted(str(p.relative_to(config.state_dir)) for p in folder.iterdir())
    now = sandbox.clock()
    try:
        asset = store.create_asset(
            make_trigger_word=lambda: training.new_trigger_word(args["lora_prefix"]),
            cost=1,
            asset_id=asset_id,
            account=account,
            args=args,
            created_at=now,
            duration=training.training_duration(
                config.train_seconds, args["image_count"], args["num_iterations"]
            ),
            outcome=training.outcome_for(args["lora_prefix"]),
            status=training.QUEUED,
            history=[training.history_entry(training.QUEUED, now)],
            base_url=str(request.base_url),
            image_dir=str(folder.relative_to(config.state_dir)),
            images=images,
            webhook_url=args["webhook_url"],
            request_hash=request_hash,
            stored_bytes=adding,
            quota=quota,
        )
    except InsufficientCredit as exc:
        shutil.rmtree(folder, ignore_errors=True)
        return _message(402, f"Insufficient credit: this key has {exc.args[0]} credits left")
    except QuotaExceeded as exc:  # a concurrent request took the last of the quota
        shutil.rmtree(folder, ignore_errors=True)
        return _message(402, str(exc.args[0]))
    answer = dialects.post_answer(config.dialect, asset, str(request.base_url))
    body = json.dumps(answer).encode()
    if idem:
        store.put_idempotent(account, idem, request_hash, 200, body, now)
    return Response(body, media_type="application/json")


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with Optional fields written the way the published (pydantic
    v1 era) document writes them: plain ``type`` and no ``default: null``."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    body = schema["components"]["schemas"].get("Body_finetune_flux_finetune_post", {})
    for prop in body.get("properties", {}).values():
        variants = prop.get("anyOf")
        if variants and {"type": "null"} in variants and len(variants) == 2:
            prop.pop("anyOf")
            other = next(v for v in variants if v != {"type": "null"})
            prop.update(other)
            if prop.get("default", 0) is None:
                prop.pop("default")
        items = prop.get("items", {})
        if items.get("contentMediaType") == "application/octet-stream":
            prop["items"] = {"type": "string", "format": "binary"}
    app.openapi_schema = schema
    return schema
