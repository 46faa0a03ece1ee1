"""The gate: everything in front of the API that is not the API itself.

Key check (401), per-key rate limit (429), a spent quota (402), the upload cap (413), the
``--bandwidth-mbps`` link, the ``Idempotency-Key`` echo and fault injection all happen here,
as raw ASGI in front of FastAPI (``SandboxApp.__call__``): they must run before the
multipart body is parsed, and to drop a connection the gate needs uvicorn's own ``send``,
which Starlette middleware would only see wrapped.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope, Send

from runner.sandbox.config import POST_ONLY_FAULTS
from runner.sandbox.faults import STATUS_KINDS
from runner.sandbox.messages import message
from runner.sandbox.runtime import Sandbox

# After the cap is hit the rest of the body is still read (and thrown away) up to this
# much more, so the client gets its 413 instead of a reset connection mid-upload.
DRAIN_SLACK = 16 * 1024 * 1024
GATEWAY_TIMEOUT_MESSAGE = (
    "sandbox fault injection: HTTP 504 Gateway Timeout (the request may have been processed)"
)

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class UploadTooLarge(HTTPException):
    """Raised from inside body reading; an HTTPException so FastAPI lets it through."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"upload larger than the sandbox's limit of {limit} bytes")


@dataclass(frozen=True)
class Refusal:
    """An answer the gate gives instead of the app's; ``drain`` reads the body first."""

    status: int
    text: str
    headers: dict[str, str] | None = None
    drain: bool = True


def guarded(path: str) -> bool:
    """The paths behind the gate: the API, and the ledger (which needs the key)."""
    return path == "/finetune" or path.startswith("/finetune/") or path == "/_sandbox/ledger"


async def gate(sandbox: Sandbox, scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
    raw_send = send
    headers = dict(scope["headers"])
    # With idempotency off the key is ignored: neither echoed nor a reason to skip a check.
    idem = headers.get(b"idempotency-key") if scope["method"] == "POST" else None
    if idem is not None and sandbox.config.idempotency:
        send = _echo(send, idem)
    else:
        idem = None
    account = sandbox.authenticate(headers.get(b"x-api-key", b"").decode("latin-1"))
    if account is None:
        await _refuse(sandbox, Refusal(401, "missing or invalid X-Api-Key"), scope, receive, send)
        return
    scope.setdefault("state", {})["sandbox_account"] = account
    if scope["path"].startswith("/_sandbox/"):
        await app(scope, receive, send)
        return
    is_post = scope["method"] == "POST" and scope["path"] == "/finetune"
    refusal = _refusal(sandbox, account, scope["method"], headers, is_post, idem is not None)
    if refusal is not None:
        await _refuse(sandbox, refusal, scope, receive, send)
        return
    if scope["method"] == "POST":
        receive = _capped(sandbox, receive, sandbox.config.max_upload_bytes)
        if sandbox.link is not None:
            receive = sandbox.link.throttled(receive)
    await _with_fault(sandbox, is_post, scope, receive, send, raw_send, app)


def _refusal(
    sandbox: Sandbox,
    account: str,
    method: str,
    headers: dict[bytes, bytes],
    is_post: bool,
    replayable: bool,
) -> Refusal | None:
    """Why the request is answered before its body is read, if it is."""
    if is_post:
        sandbox.store.count_post(account)
    retry_after = sandbox.limiter.acquire(account)
    if retry_after is not None:
        return Refusal(429, "rate limit exceeded", {"Retry-After": str(retry_after)})
    if is_post and not replayable:
        # A key whose quota is already spent is told so before its body is read (and
        # spooled to disk); a replay under an Idempotency-Key creates nothing, so it goes
        # on to get its stored answer.
        quota = sandbox.quota.refusal(*sandbox.store.usage(account), 0)
        if quota:
            return Refusal(402, quota)
    limit = sandbox.config.max_upload_bytes
    length = headers.get(b"content-length", b"")
    if method == "POST" and length.isdigit() and int(length) > limit:
        expecting = headers.get(b"expect", b"").lower() == b"100-continue"
        return Refusal(413, UploadTooLarge(limit).detail, drain=not expecting)
    return None


async def _refuse(
    sandbox: Sandbox, refusal: Refusal, scope: Scope, receive: Receive, send: Send
) -> None:
    if refusal.drain:
        await _drain(sandbox, receive)
    await message(refusal.status, refusal.text, refusal.headers)(scope, receive, send)


async def _with_fault(
    sandbox: Sandbox,
    is_post: bool,
    scope: Scope,
    receive: Receive,
    send: Send,
    raw_send: Send,
    app: ASGIApp,
) -> None:
    """The app's answer, unless the fault drawn for this request replaces it."""
    fault = sandbox.faults.draw(is_post=is_post)
    if fault in STATUS_KINDS:
        status = STATUS_KINDS[fault]
        refusal = Refusal(status, f"sandbox fault injection: HTTP {status}")
        await _refuse(sandbox, refusal, scope, receive, send)
    elif fault == "drop":
        await _drain(sandbox, receive)
        await _drop(raw_send)
    elif fault in POST_ONLY_FAULTS:
        await _lose_answer(fault, scope, receive, send, raw_send, app)
    else:
        if fault == "slow":
            await anyio.sleep(sandbox.faults.slow_seconds())
        await app(scope, receive, send)


async def _lose_answer(
    fault: str, scope: Scope, receive: Receive, send: Send, raw_send: Send, app: ASGIApp
) -> None:
    """``lost_post`` and ``gateway_timeout``: only a training that was created has an
    answer worth losing; a refused POST (4xx, such as a client's free probe) is answered
    as usual."""
    held: list[Message] = []

    async def hold(message: Message) -> None:
        held.append(message)

    await app(scope, receive, hold)
    start = held[0] if held else {}
    status = start.get("status", 500)
    replayed = any(name.lower() == b"idempotent-replayed" for name, _ in start.get("headers", []))
    if 200 <= status < 300 and fault == "lost_post":
        await _drop(raw_send)
    elif 200 <= status < 300 and not replayed:
        # gateway_timeout. A replay created nothing, so it gets its stored 200: that is
        # how a client recovers the trigger word behind a 504.
        await message(504, GATEWAY_TIMEOUT_MESSAGE)(scope, receive, send)
    else:
        for held_message in held:
            await send(held_message)


async def _drain(sandbox: Sandbox, receive: Receive, budget: int | None = None) -> None:
    """Read and discard the rest of the body so the client sees our answer, not a
    reset connection; bounded, because a client may lie about what it sends."""
    budget = sandbox.config.max_upload_bytes + DRAIN_SLACK if budget is None else budget
    while budget > 0:
        message = await receive()
        if message["type"] != "http.request":
            return
        budget -= len(message.get("body", b""))
        if not message.get("more_body", False):
            return


def _capped(sandbox: Sandbox, receive: Receive, limit: int) -> Receive:
    """``receive`` that raises UploadTooLarge (a 413) once the body passes ``limit``."""
    seen = 0

    async def capped() -> Message:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                if message.get("more_body", False):
                    await _drain(sandbox, receive, DRAIN_SLACK)
                raise UploadTooLarge(limit)
        return message

    return capped


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
