"""One HTTP exchange: the multipart form on the wire, the whole-exchange deadline, the capped
read, and httpx's exceptions translated at this one boundary.

What a form holds and what an answer means is ``runner.api.wire``'s business; when to try
again is ``runner.api.client``'s. This module only sends one request and reads its answer,
raising ``NotReached`` when nothing reached the server and ``Transient`` (status 0) when the
request may have arrived but its answer was lost.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import httpx

from runner.api import wire
from runner.errors import NotReached, Transient
from runner.manifest.images import open_regular
from runner.models import Job

if TYPE_CHECKING:
    from runner.manifest.resize import Resized

MAX_RETRY_AFTER = 120.0  # a server's Retry-After is obeyed up to this many seconds
# Whole-exchange deadlines: httpx's timeouts are per read, so an answer dripping one byte
# every few seconds would otherwise hold a request (and its job slot) for ever.
GET_DEADLINE = 120.0
POST_DEADLINE = 900.0  # plus one second per UPLOAD_RATE bytes uploaded
UPLOAD_RATE = 256 * 1024

Files = list[tuple[str, Any]]


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, body read in full (up to ``wire.MAX_ANSWER_BYTES`` and a chunk)."""

    status: int
    headers: httpx.Headers
    body: bytes

    @property
    def message(self) -> str:
        return wire.error_message(self.body, f"HTTP {self.status}")

    def retry_after(self) -> float | None:
        """The server's Retry-After in seconds, clamped: a hostile or broken server must not
        be able to park every request for days (the job's own timeout still bounds the total)."""
        value = self.headers.get("Retry-After")
        if value is None:
            return None
        try:
            seconds = float(value)
        except ValueError:
            return None
        if seconds != seconds:  # NaN
            return None
        return min(max(0.0, seconds), MAX_RETRY_AFTER)


@dataclass
class Form:
    """A request's multipart parts, what ``--trace-http`` records of them, and the bytes of
    the files (from the open handles: no second stat)."""

    files: Files | None = None
    extensions: dict[str, Any] | None = None
    uploaded: int = 0


def job_form(stack: contextlib.ExitStack, job: Job, resized: Mapping[Path, Resized]) -> Form:
    """Always multipart/form-data, as documented, also for URL-only jobs: text fields as parts
    without a file name, then every image streamed from disk (its downscaled copy when
    ``resized`` has one, checked against its cache record by ``resize.open_verified``, which
    raises ``StaleResize`` before anything is sent when it does not match)."""
    fields = wire.form_fields(job)
    parts = wire.file_parts(job)
    files: Files = [(name, (None, value)) for name, value in fields]
    uploaded = 0
    for part in parts:
        small = resized.get(part.path)
        if small is None:
            fh = stack.enter_context(open_regular(part.path))
        else:
            from runner.manifest.resize import open_verified

            fh = stack.enter_context(open_verified(small))
        uploaded += os.fstat(fh.fileno()).st_size
        files.append(("image_files", (part.filename, fh, part.mime)))
    traced = {"fields": fields, "files": [_traced(p, resized) for p in parts]}
    return Form(files, {"runner.form": traced}, uploaded)


def fields_form(fields: list[tuple[str, str]]) -> Form:
    """A form of text fields only (the idempotency probe)."""
    files: Files = [(name, (None, value)) for name, value in fields]
    return Form(files, {"runner.form": {"fields": fields, "files": []}})


def _traced(part: wire.FilePart, resized: Mapping[Path, Resized]) -> dict[str, Any]:
    """A file part as ``--trace-http`` records it: the file actually sent, and for a
    downscaled image also the original it was made from."""
    small = resized.get(part.path)
    out: dict[str, Any] = {"field": "image_files", "filename": part.filename,
                           "path": str(part.path if small is None else small.path)}
    if small is not None:
        out["source"] = str(part.path)
    return out


def deadline_for(method: str, uploaded: int) -> float:
    """The whole exchange's deadline: a POST gets more, and time for its upload."""
    return POST_DEADLINE + uploaded / UPLOAD_RATE if method == "POST" else GET_DEADLINE


async def exchange(
    http: httpx.AsyncClient, request: httpx.Request, *, deadline: float, host: str, job: str | None
) -> Answer:
    """Send ``request`` and read its whole answer within ``deadline`` seconds."""
    sent = False
    try:
        with anyio.fail_after(deadline):
            try:
                response = await http.send(request, stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                raise NotReached(describe_transport_error(exc, host), job=job) from exc
            except httpx.TransportError as exc:
                raise Transient(f"the answer from {host} was lost ({type(exc).__name__})", job=job) from exc
            sent = True
            try:
                body = await _read_capped(response)
            except httpx.TransportError as exc:
                raise Transient(f"the answer from {host} was cut off ({type(exc).__name__})", job=job) from exc
            finally:
                await response.aclose()
    except TimeoutError as exc:
        what = "its answer" if sent else "an answer"
        raise Transient(f"{host} did not finish {what} within {deadline:.0f}s", job=job) from exc
    return Answer(response.status_code, response.headers, body)


async def _read_capped(response: httpx.Response) -> bytes:
    """The body, but no more than ``wire.MAX_ANSWER_BYTES`` and one chunk: an answer larger
    than that is unreadable anyway, and must not fill the memory of a CI runner."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.aiter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > wire.MAX_ANSWER_BYTES:
            break
    return b"".join(chunks)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception, its causes and contexts, and the members of exception groups."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        for nxt in (current.__cause__, current.__context__):
            if nxt is not None:
                todo.append(nxt)


def describe_transport_error(exc: BaseException, host: str) -> str:
    """Name the host and the cause in words a user can act on."""
    causes = list(_causes(exc))
    for cause in causes:
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve the host name {host} (name resolution failed: {cause.strerror or cause})"
    for cause in causes:
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"TLS: the certificate of {host} could not be verified ({cause.verify_message or cause.reason})"
        if isinstance(cause, ssl.SSLError):
            return f"TLS handshake with {host} failed ({cause.reason or cause})"
    for cause in causes:
        if isinstance(cause, ConnectionRefusedError):
            return f"{host} refused the connection (nothing listens there)"
    if isinstance(exc, httpx.ConnectTimeout | httpx.PoolTimeout) or any(
        isinstance(c, TimeoutError) for c in causes
    ):
        return f"connecting to {host} timed out"
    for cause in causes:
        text = str(cause)
        if "SSL" in text or "TLS" in text or "CERTIFICATE" in text:
            return f"TLS with {host} failed ({text})"
    return f"cannot connect to {host} ({type(exc).__name__}: {exc})"


def is_name_error(exc: BaseException) -> bool:
    """Whether name resolution failed (no point trying many times)."""
    return any(isinstance(c, socket.gaierror) for c in _causes(exc))
