"""``--trace-http FILE``: every request and answer as one JSON line, never the key.

``TraceTransport`` wraps the transport ``ApiClient`` sends through. It changes nothing the
caller sees: the request goes out as it came, the answer comes back with the same status,
headers and bytes (its body is recorded while the caller reads it, through a stream that
hands on every chunk), and an exception is re-raised as it came. The file is opened in
append mode (created ``0600``: it holds URLs, file names and webhook URLs) and each line
is one ``write`` of the whole line, so concurrent tasks never interleave.

One line per exchange, written when the answer has been read to its end (or closed, or
failed), so lines follow the order answers finished in, not the order requests started::

    {"trace": 1,
     "time": "2026-05-09T07:35:25.123Z",          request start, UTC
     "method": "POST",
     "url": "https://api.vimmerse.net/finetune",
     "request": {
       "headers": {"user-agent": "runner/0.9.0", "idempotency-key": "runner-...", ...},
       "form": {                                  job POSTs (and the idempotency probe)
         "fields": [["option", "FluxFinetune"], ["lora_prefix", "SNKR"], ...],
         "files": [{"field": "image_files", "filename": "001.png", "size": 1234,
                    "sha256": "9f86d0..."}]},
       "body": "...", "body_bytes": 12, "body_truncated": false   any other request
     },
     "response": {                                null when no answer came
       "status": 200,
       "headers": {"content-type": "application/json", ...},
       "body": "{\"data\": ...}",                 text, up to 64 KiB, decoded (gzip...)
       "body_bytes": 412,                         bytes received (as sent, before decoding)
       "body_truncated": false,                   the body holds only the first 64 KiB
       "body_complete": true                      false when reading stopped early
     },
     "error": null,                               or {"type": "ConnectError", "message": "..."}
     "elapsed_ms": 41.7}                          request start to the answer's end

Never written: the ``X-Api-Key`` header (dropped), its value anywhere else (masked), the
values of ``Authorization``, ``Cookie`` and ``Set-Cookie`` (masked), any secret registered
with ``runner.logsetup`` (masked as ``***`` by ``logsetup.redact``: expanded manifest
variables, keys), and the contents of uploaded files (name, size and sha256 only). A file
part whose file cannot be read has ``"error"`` in place of its size and digest. A request
body that is streamed (not known in advance) is ``null`` with a ``body_note``.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import threading
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx

from runner import logsetup
from runner.errors import UsageError

TRACE_FORMAT = 1
MAX_BODY = 64 * 1024  # bytes of a body kept in the trace (request or answer)
FORM_EXTENSION = "runner.form"
DROPPED_HEADERS = frozenset({"x-api-key"})
MASKED_HEADERS = frozenset({"authorization", "proxy-authorization", "cookie", "set-cookie"})

log = logsetup.get_logger("runner.api.trace")


class TraceFile:
    """An append-only JSON-lines file; ``write`` is one ``os.write`` per line, under a lock."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        try:
            self._fd: int | None = os.open(self.path, flags, 0o600)
        except OSError as exc:
            raise UsageError(f"cannot write the HTTP trace {self.path}: {exc.strerror or exc}") from exc
        self._lock = threading.Lock()
        self.lines = 0
        self._warned = False

    def write(self, record: dict[str, Any]) -> None:
        data = (json.dumps(record, ensure_ascii=False, separators=(", ", ": ")) + "\n").encode()
        with self._lock:
            if self._fd is None:
                return
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self._fd, view):]
                self.lines += 1
            except OSError as exc:
                # A trace is a diagnostic: a full disk must not stop an apply that has
                # trainings in flight. Say so once; the apply goes on.
                if not self._warned:
                    self._warned = True
                    log.warning("cannot write the HTTP trace", path=str(self.path), error=str(exc))

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _headers(headers: httpx.Headers) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in headers.multi_items():
        lower = name.lower()
        if lower in DROPPED_HEADERS:
            continue
        if lower in MASKED_HEADERS:
            value = logsetup.REDACTED
        out[lower] = f"{out[lower]}, {value}" if lower in out else value
    return out


def _text(data: bytes, final: bool) -> str:
    """UTF-8 with replacement characters; a character cut at the end of a kept prefix is
    dropped rather than shown as a replacement."""
    return codecs.getincrementaldecoder("utf-8")("replace").decode(data, final=final)


def _file_facts(path: str) -> dict[str, Any]:
    try:
        digest = hashlib.sha256()
        size = 0
        with open(path, "rb") as fh:
            while chunk := fh.read(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
    except OSError as exc:
        return {"error": f"{type(exc).__name__}: {exc.strerror or exc}"}
    return {"size": size, "sha256": digest.hexdigest()}


async def _request_record(request: httpx.Request) -> dict[str, Any]:
    record: dict[str, Any] = {"headers": _headers(request.headers)}
    form = request.extensions.get(FORM_EXTENSION)
    if form is not None:
        files = []
        for part in form.get("files", []):
            facts = await anyio.to_thread.run_sync(_file_facts, str(part["path"]))
            files.append({"field": part.get("field", "image_files"),
                          "filename": part.get("filename"), **facts})
        record["form"] = {"fields": [list(f) for f in form.get("fields", [])], "files": files}
        return record
    try:
        content = request.content
    except httpx.RequestNotRead:
        record.update(body=None, body_note="streamed request body, not recorded")
        return record
    record.update(
        body=_text(content[:MAX_BODY], final=len(content) <= MAX_BODY),
        body_bytes=len(content),
        body_truncated=len(content) > MAX_BODY,
    )
    return record


def _masker(key: str | None) -> Callable[[Any], Any]:
    def mask(value: Any) -> Any:
        if isinstance(value, str):
            if key and key in value:
                value = value.replace(key, logsetup.REDACTED)
            return logsetup.redact(value)
        if isinstance(value, dict):
            return {mask(k): mask(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [mask(v) for v in value]
        return value

    return mask


def _error(exc: BaseException) -> dict[str, str]:
    return {"type": type(exc).__name__, "message": str(exc)}


class _Exchange:
    """One request in flight: what is known of it so far, written once."""

    def __init__(self, file: TraceFile, record: dict[str, Any], key: str | None, started: float) -> None:
        self.file = file
        self.record = record
        self.key = key
        self.started = started
        self.done = False

    def finish(self, response: dict[str, Any] | None, error: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        self.record["response"] = response
        self.record["error"] = _error(error) if error is not None else None
        self.record["elapsed_ms"] = round((time.perf_counter() - self.started) * 1000, 1)
        try:
            self.file.write(_masker(self.key)(self.record))
        except Exception as exc:  # never let the trace change what the caller sees
            log.warning("cannot record an HTTP exchange", error=f"{type(exc).__name__}: {exc}")


class _TeeStream(httpx.AsyncByteStream):
    """Hands on every chunk of the answer as it came, keeping the first 64 KiB (decoded as
    the caller will decode it) for the trace; writes the line at the end or at close."""

    def __init__(self, inner: httpx.AsyncByteStream, exchange: _Exchange, status: int,
                 headers: httpx.Headers) -> None:
        self._inner = inner
        self._exchange = exchange
        self._status = status
        self._headers = headers
        self._raw_bytes = 0
        self._kept = bytearray()
        self._decoder: Any = None
        self._decode_error: str | None = None
        try:
            # A throwaway Response: its decoder must not be the one the caller uses.
            self._decoder = httpx.Response(status, headers=headers)._get_content_decoder()
        except Exception:  # a private httpx API; without it keep the bytes as they came
            self._decoder = None

    def _keep(self, chunk: bytes) -> None:
        self._raw_bytes += len(chunk)
        if len(self._kept) > MAX_BODY or self._decode_error is not None:
            return  # enough kept, or a body that would not decode: count bytes only
        try:
            decoded = self._decoder.decode(chunk) if self._decoder is not None else chunk
        except Exception as exc:
            self._decode_error = f"{type(exc).__name__}: {exc}"
            return
        self._kept += decoded[: MAX_BODY + 1 - len(self._kept)]

    def _finish(self, complete: bool, error: BaseException | None) -> None:
        if self._exchange.done:
            return
        if (complete and self._decoder is not None and self._decode_error is None
                and len(self._kept) <= MAX_BODY):
            try:
                self._kept += self._decoder.flush()[: MAX_BODY + 1 - len(self._kept)]
            except Exception as exc:
                self._decode_error = f"{type(exc).__name__}: {exc}"
        truncated = len(self._kept) > MAX_BODY
        answer: dict[str, Any] = {
            "status": self._status,
            "headers": _headers(self._headers),
            "body": _text(bytes(self._kept[:MAX_BODY]), final=not truncated),
            "body_bytes": self._raw_bytes,
            "body_truncated": truncated,
            "body_complete": complete,
        }
        if self._decode_error is not None:
            answer["body_note"] = self._decode_error
        elif self._decoder is None and self._headers.get("content-encoding", "identity") != "identity":
            answer["body_note"] = "not decoded: the bytes as they came"
        self._exchange.finish(answer, error)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                self._keep(chunk)
                yield chunk
        except GeneratorExit:  # the caller stopped reading; aclose records that
            raise
        except BaseException as exc:
            self._finish(False, exc)
            raise
        self._finish(True, None)

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._finish(False, None)


class TraceTransport(httpx.AsyncBaseTransport):
    """Records every exchange through ``inner`` to ``path`` (see the module docstring)."""

    def __init__(self, inner: httpx.AsyncBaseTransport, path: Path) -> None:
        self.inner = inner
        self.file = TraceFile(path)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        started = time.perf_counter()
        key = request.headers.get("X-Api-Key")
        record: dict[str, Any] = {"trace": TRACE_FORMAT, "time": _now(), "method": request.method,
                                  "url": str(request.url)}
        try:
            record["request"] = await _request_record(request)
        except Exception as exc:  # the trace must not stop the request
            record["request"] = {"error": _error(exc)}
        exchange = _Exchange(self.file, record, key, started)
        try:
            response = await self.inner.handle_async_request(request)
        except BaseException as exc:
            exchange.finish(None, exc)
            raise
        stream = response.stream
        if not isinstance(stream, httpx.AsyncByteStream):  # pragma: no cover - not from httpx
            exchange.finish({"status": response.status_code, "headers": _headers(response.headers),
                             "body": None, "body_note": "not an async stream, not recorded"}, None)
            return response
        return httpx.Response(
            response.status_code,
            headers=response.headers.raw,
            stream=_TeeStream(stream, exchange, response.status_code, response.headers),
            extensions=response.extensions,
        )

    async def aclose(self) -> None:
        try:
            await self.inner.aclose()
        finally:
            self.file.close()
