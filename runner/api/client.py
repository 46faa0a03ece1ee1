"""The finetune API client: transport, retries and the rate limit; the only importer of httpx.

What a request carries and what an answer means is ``runner.api.wire``'s business; this module
sends, retries and translates httpx's exceptions at one boundary, so everything above it
speaks ``ApiError`` and its subclasses::

    ApiError                 an answer (status) or no answer (status 0)
    ├── InsufficientCredit   402
    ├── Uncertain            a POST that may have started a paid training; its answer lost
    ├── Unreachable          nothing reached the server (name, refused, TLS, timeout)
    └── Transient            internal: worth another try (kept inside the retry loops)

Retry rules (DESIGN section 6):
- A request that never reached the server (name resolution, refused, TLS, connect timeout)
  and a 429 are retried with exponential backoff and jitter; a 429's Retry-After pauses the
  whole token bucket.
- A status request is also retried on 5xx and lost answers (a GET changes nothing).
- A POST answered with a 5xx, or whose answer was lost, may have started a paid training (a
  gateway answers 504 after the service began). It is ``Uncertain``, unless the API is known
  to honour ``Idempotency-Key`` (its answers echo the header): then it is replayed under the
  same key, with backoff, until the job's own time runs out.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import socket
import ssl
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import anyio
import httpx
import stamina

from runner import __version__, logsetup
from runner.api import wire
from runner.api.ratelimit import TokenBucket
from runner.errors import ApiError, InsufficientCredit
from runner.manifest.images import open_regular
from runner.models import Job

if TYPE_CHECKING:
    from runner.manifest.resize import Resized

log = logsetup.get_logger("runner.api.client")

REACH_BUDGET = 25.0  # seconds to decide that an endpoint cannot be reached at all
MAX_RETRY_AFTER = 120.0  # a server's Retry-After is obeyed up to this many seconds
# Whole-exchange deadlines: httpx's timeouts are per read, so an answer dripping one byte
# every few seconds would otherwise hold a request (and its job slot) for ever.
GET_DEADLINE = 120.0
POST_DEADLINE = 900.0  # plus one second per UPLOAD_RATE bytes uploaded
UPLOAD_RATE = 256 * 1024
REACH_TIMEOUT = httpx.Timeout(connect=8.0, read=10.0, write=10.0, pool=10.0)
DOCTOR_PREFIX = "runner-doctor-"


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


class Uncertain(ApiError):
    """The POST may have started a paid training, and we cannot know: never retried blindly."""

    def __init__(self, message: str, *, status: int = 0, job: str | None = None,
                 answer: str | None = None) -> None:
        super().__init__(message, status=status, job=job)
        self.answer = answer


class Unreachable(ApiError):
    """The endpoint could not be reached at all; ``message`` names the host and the cause."""


def idempotency_key(fingerprint: str, attempt: int) -> str:
    """Same job inputs and attempt -> same key, so replaying a lost POST cannot pay twice."""
    digest = hashlib.sha256(f"{fingerprint}:{attempt}".encode()).hexdigest()
    return f"runner-{digest[:40]}"


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, body read in full (up to ``wire.MAX_ANSWER_BYTES`` and a chunk)."""

    status: int
    headers: httpx.Headers
    body: bytes

    @property
    def message(self) -> str:
        return wire.error_message(self.body, f"HTTP {self.status}")


@dataclass(frozen=True)
class SubmitResult:
    submitted: wire.Submitted
    key_echoed: bool

    @property
    def trigger_word(self) -> str | None:
        return self.submitted.trigger_word

    @property
    def asset_id(self) -> str | None:
        return self.submitted.asset_id


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


def _is_name_error(exc: BaseException) -> bool:
    return any(isinstance(c, socket.gaierror) for c in _causes(exc))


@dataclass
class RetryPolicy:
    attempts: int = 8
    timeout: float = 300.0
    wait_initial: float = 0.5
    wait_max: float = 30.0
    wait_jitter: float = 1.0


@dataclass
class ApiClient:
    """Talks to one endpoint with one key. Create with ``async with ApiClient(...)``.

    ``trace``: a file to write every request and answer to (``--trace-http``).
    """

    base_url: str
    api_key: str
    bucket: TokenBucket
    transport: httpx.AsyncBaseTransport | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    honours_idempotency: bool | None = None  # learnt from answers; None = not known yet
    requests_sent: int = 0
    trace: Path | None = None
    clock: Callable[[], float] = time.monotonic
    probe_answer: Answer | None = None  # the idempotency probe's last answer (for doctor)
    _http: httpx.AsyncClient | None = None

    @property
    def host(self) -> str:
        parts = urlsplit(self.base_url)
        return parts.netloc or self.base_url

    async def __aenter__(self) -> ApiClient:
        # Certificates are loaded only for https: for the sandbox and other loopback http
        # endpoints no TLS is ever spoken (redirects are not followed), and loading the CA
        # bundle cost 50 ms of every apply's start-up.
        verify = self.base_url.lower().startswith("https://")
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        transport = self.transport
        if self.trace is not None:
            from runner.api.trace import TraceTransport

            inner = transport or httpx.AsyncHTTPTransport(verify=verify, limits=limits)
            transport = TraceTransport(inner, self.trace)
        self._http = httpx.AsyncClient(
            base_url=self.base_url.rstrip("/"),
            transport=transport,
            headers={"User-Agent": f"runner/{__version__}"},
            timeout=httpx.Timeout(connect=15.0, read=120.0, write=300.0, pool=None),
            limits=limits,
            verify=verify,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.aclose()

    @property
    def http(self) -> httpx.AsyncClient:
        assert self._http is not None, "use ApiClient as an async context manager"
        return self._http

    def _headers(self, key: str | None = None) -> dict[str, str]:
        headers = {"X-Api-Key": self.api_key}
        if key:
            headers["Idempotency-Key"] = key
        return headers

    # ----- one exchange ------------------------------------------------------------------

    async def _send(
        self,
        method: str,
        path: str,
        *,
        job: Job | None = None,
        fields: list[tuple[str, str]] | None = None,
        key: str | None = None,
        timeout: httpx.Timeout | None = None,
        job_name: str | None = None,
        deadline: float | None = None,
        resized: Mapping[Path, Resized] | None = None,
    ) -> Answer:
        """Send one request and read its whole answer.

        ``resized``: images sent as their downscaled copy (``upload.max_side``), each opened
        and checked against its cache record (``resize.open_verified``, which raises
        ``StaleResize`` before anything is sent when it does not match).

        Raises ``NotReached`` when nothing reached the server, ``Transient`` (status 0)
        when the request may have arrived but its answer was lost.
        """
        await self.bucket.acquire()
        self.requests_sent += 1
        with contextlib.ExitStack() as stack:
            files: list[tuple[str, Any]] | None = None
            extensions: dict[str, Any] = {}
            uploaded = 0  # bytes of the files, from the open handles: no second stat
            if job is not None:
                # Always multipart/form-data, as documented, also for URL-only jobs: text
                # fields as parts without a file name, then every image streamed from disk.
                fields = wire.form_fields(job)
                parts = wire.file_parts(job)
                files = [(name, (None, value)) for name, value in fields]
                smaller = resized or {}
                for part in parts:
                    small = smaller.get(part.path)
                    if small is None:
                        fh = stack.enter_context(open_regular(part.path))
                    else:
                        from runner.manifest.resize import open_verified

                        fh = stack.enter_context(open_verified(small))
                    uploaded += os.fstat(fh.fileno()).st_size
                    files.append(("image_files", (part.filename, fh, part.mime)))
                extensions["runner.form"] = {
                    "fields": fields,
                    "files": [_traced(p, smaller) for p in parts],
                }
            elif fields is not None:
                files = [(name, (None, value)) for name, value in fields]
                extensions["runner.form"] = {"fields": fields, "files": []}
            if deadline is None:
                deadline = GET_DEADLINE
                if method == "POST":
                    deadline = POST_DEADLINE + uploaded / UPLOAD_RATE
            request = self.http.build_request(
                method, path, files=files, headers=self._headers(key),
                extensions=extensions or None,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
            sent = False
            try:
                with anyio.fail_after(deadline):
                    try:
                        response = await self.http.send(request, stream=True)
                    except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                        raise NotReached(describe_transport_error(exc, self.host), job=job_name) from exc
                    except httpx.TransportError as exc:
                        raise Transient(
                            f"the answer from {self.host} was lost ({type(exc).__name__})", job=job_name
                        ) from exc
                    sent = True
                    try:
                        body = await _read_capped(response)
                    except httpx.TransportError as exc:
                        raise Transient(
                            f"the answer from {self.host} was cut off ({type(exc).__name__})", job=job_name
                        ) from exc
                    finally:
                        await response.aclose()
            except TimeoutError as exc:
                what = "its answer" if sent else "an answer"
                raise Transient(
                    f"{self.host} did not finish {what} within {deadline:.0f}s", job=job_name
                ) from exc
        return Answer(response.status_code, response.headers, body)

    def _learn(self, answer: Answer, key: str | None) -> bool:
        """Whether this answer echoed our key; an answer from the application itself tells
        us whether the API honours keys at all."""
        echoed = bool(key) and answer.headers.get("Idempotency-Key") == key
        if key:
            if echoed:
                self.honours_idempotency = True
            elif self.honours_idempotency is None and answer.status < 429:
                self.honours_idempotency = False
        return echoed

    def _busy(self, answer: Answer, job: str | None) -> Busy:
        retry_after = _retry_after(answer)
        self.bucket.pause(retry_after if retry_after is not None else 1.0)
        return Busy(f"HTTP 429: {answer.message}", status=429, job=job, retry_after=retry_after)

    def _refusal(self, answer: Answer, job: str | None) -> ApiError:
        if answer.status == 402:
            return InsufficientCredit(f"insufficient credit: {answer.message}", status=402, job=job)
        if answer.status in (301, 302, 303, 307, 308):
            where = answer.headers.get("Location", "elsewhere")
            return ApiError(
                f"HTTP {answer.status}: {self.host} redirects to {where}; set api.endpoint to the final URL",
                status=answer.status, job=job,
            )
        return ApiError(answer.message, status=answer.status, job=job)

    # ----- reachability ------------------------------------------------------------------

    async def reach(self, budget: float = REACH_BUDGET) -> Answer:
        """A free status request for a trigger word that cannot exist.

        Proves name resolution, connection, TLS and the key within ``budget`` seconds;
        raises ``Unreachable`` (naming the host and the cause) or ``ApiError`` 401/403.
        """
        ref = DOCTOR_PREFIX + secrets.token_hex(6)
        started = self.clock()
        tries = 0
        wait = 0.5
        while True:
            tries += 1
            try:
                answer = await self._send(
                    "GET", f"/finetune/{ref}", timeout=REACH_TIMEOUT,
                    deadline=max(1.0, min(GET_DEADLINE, budget - (self.clock() - started))),
                )
            except Transient as exc:
                spent = self.clock() - started
                last_try = (isinstance(exc, NotReached) and _is_name_error(exc) and tries >= 2)
                if last_try or spent + wait > budget:
                    raise Unreachable(
                        f"cannot reach the API at {self.base_url}: {exc.message}"
                        f" (tried {tries} times over {spent:.0f}s)"
                    ) from exc
                await anyio.sleep(wait)
                wait = min(wait * 2, 8.0)
                continue
            if answer.status in (401, 403):
                raise ApiError(
                    f"the API refused the key (HTTP {answer.status}): {answer.message}",
                    status=answer.status,
                )
            return answer

    async def is_sandbox(self) -> bool:
        """Whether a loopback endpoint is a runner sandbox (its health route says
        ``app_name: sandbox``), so entries are recorded as the sandbox's even when an answer
        that would have said so was lost. Sent without the key; never to a remote API."""
        try:
            response = await self.http.get("/_sandbox/health", timeout=5.0)
            data = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return False
        return isinstance(data, dict) and data.get("app_name") == "sandbox"

    # ----- POST /finetune ------------------------------------------------------------------

    async def submit(
        self, job: Job, key: str, *, replay_for: float = 3600.0,
        resized: Mapping[Path, Resized] | None = None,
    ) -> SubmitResult:
        """POST the job once, retrying only what is safe (module docstring).

        ``replay_for`` bounds the replays under an echoed key (the job's timeout).
        ``resized``: the job's downscaled images (see ``_send``); a replay sends the same.
        Raises ``Uncertain`` when a training may have started and we cannot know,
        ``Unreachable`` when nothing reached the server, ``ApiError`` for a refusal.
        """
        started = self.clock()
        counts = {"not_reached": 0, "replays": 0}

        def on(exc: Exception) -> bool | float:
            if isinstance(exc, NotReached):
                counts["not_reached"] += 1
                spent = self.clock() - started
                return counts["not_reached"] < self.retry.attempts and spent < self.retry.timeout
            if isinstance(exc, Busy):
                return max(exc.retry_after, 0.05) if exc.retry_after is not None else True
            if isinstance(exc, Replayable):
                counts["replays"] += 1
                return True
            return False

        try:
            async for attempt in stamina.retry_context(
                on=on, attempts=None, timeout=max(1.0, replay_for),
                wait_initial=self.retry.wait_initial, wait_max=self.retry.wait_max,
                wait_jitter=self.retry.wait_jitter,
            ):
                with attempt:
                    return await self._submit_once(job, key, resized)
        except Replayable as exc:
            spent = self.clock() - started
            raise Uncertain(
                f"replayed {counts['replays']} times under the same Idempotency-Key over "
                f"{spent:.0f}s without an answer ({exc.message})",
                status=exc.status, job=job.name, answer=exc.answer,
            ) from exc
        except NotReached as exc:
            raise Unreachable(exc.message, job=job.name) from exc
        except Busy as exc:
            raise Unreachable(f"{self.host} kept answering 429 (rate limited): {exc.message}",
                              status=429, job=job.name) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _submit_once(
        self, job: Job, key: str, resized: Mapping[Path, Resized] | None = None
    ) -> SubmitResult:
        try:
            answer = await self._send(
                "POST", "/finetune", job=job, key=key, job_name=job.name, resized=resized
            )
        except NotReached:
            raise
        except Transient as exc:
            # Sent, perhaps in full, and no answer: the training may have started.
            if self.honours_idempotency:
                raise Replayable(exc.message, job=job.name) from exc
            raise Uncertain(
                f"the request was sent but its answer was lost: {exc.message}", job=job.name
            ) from exc
        echoed = self._learn(answer, key)
        if answer.status == 429:
            raise self._busy(answer, job.name)
        if answer.status >= 500:
            text = wire.answer_text(answer.body) if answer.body else None
            if self.honours_idempotency:
                raise Replayable(f"HTTP {answer.status}: {answer.message}", status=answer.status,
                                 job=job.name, answer=text)
            raise Uncertain(
                f"HTTP {answer.status} after the request was sent ({answer.message}); "
                "the API may have started the training",
                status=answer.status, job=job.name, answer=text,
            )
        if answer.status >= 300:
            raise self._refusal(answer, job.name)
        return SubmitResult(wire.read_submit(answer.body, job.lora_prefix), echoed)

    async def probe_idempotency(self) -> bool:
        """Learn, for free, whether the API honours Idempotency-Key.

        Sends a POST that cannot start a training (no images, an unknown option, a
        non-number for num_iterations) with a throwaway key; the API refuses it with a 4xx,
        echoing the key only if it honours keys. Anything else (5xx, lost) teaches nothing:
        keys are then not trusted, so a lost answer stays uncertain.
        """
        if self.honours_idempotency is not None:
            return self.honours_idempotency
        key = "runner-probe-" + secrets.token_hex(8)
        fields = [("option", "runner-idempotency-probe"), ("num_iterations", "not-a-number")]
        for _ in range(3):
            try:
                answer = await self._send("POST", "/finetune", fields=fields, key=key)
            except Transient as exc:
                log.debug("idempotency probe got no answer", error=exc.message)
                continue
            self.probe_answer = answer
            if answer.status == 429:
                self._busy(answer, None)
                continue
            if answer.status in (401, 403):
                raise self._refusal(answer, None)
            if 400 <= answer.status < 500:
                self.honours_idempotency = answer.headers.get("Idempotency-Key") == key
                return self.honours_idempotency
            if answer.headers.get("Idempotency-Key") == key:
                self.honours_idempotency = True
                return True
            log.warning("unexpected answer to the idempotency probe", status=answer.status)
            break
        return False

    # ----- GET /finetune/{trigger_word} ----------------------------------------------------

    async def status(self, ref: str, *, job: str | None = None) -> wire.Status | wire.Unreadable:
        """Ask about one training. 5xx, 429 and lost answers are retried per the policy and
        then raised as ``Transient``; 401/403 raise ``ApiError``; any other answer is read
        by ``wire`` (a 4xx is ``Unreadable``: a status we do not understand)."""
        async for attempt in stamina.retry_context(
            on=lambda exc: _transient_wait(exc),
            attempts=self.retry.attempts, timeout=self.retry.timeout,
            wait_initial=self.retry.wait_initial, wait_max=self.retry.wait_max,
            wait_jitter=self.retry.wait_jitter,
        ):
            with attempt:
                return await self._status_once(ref, job)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _status_once(self, ref: str, job: str | None) -> wire.Status | wire.Unreadable:
        answer = await self._send("GET", f"/finetune/{quote(ref, safe='')}", job_name=job)
        if answer.status == 429:
            raise self._busy(answer, job)
        if answer.status >= 500:
            raise Transient(f"HTTP {answer.status}: {answer.message}", status=answer.status, job=job)
        if answer.status in (401, 403):
            raise ApiError(f"the API refused the key (HTTP {answer.status}): {answer.message}",
                           status=answer.status, job=job)
        if answer.status >= 300:
            return wire.Unreadable(f"HTTP {answer.status}: {answer.message}",
                                   wire.answer_text(answer.body), answer.status)
        return wire.read_status(answer.body)


def _traced(part: wire.FilePart, resized: Mapping[Path, Resized]) -> dict[str, Any]:
    """A file part as ``--trace-http`` records it: the file actually sent, and for a
    downscaled image also the original it was made from."""
    small = resized.get(part.path)
    out: dict[str, Any] = {"field": "image_files", "filename": part.filename,
                           "path": str(part.path if small is None else small.path)}
    if small is not None:
        out["source"] = str(part.path)
    return out


def _transient_wait(exc: Exception) -> bool | float:
    if isinstance(exc, Transient):
        if exc.retry_after is not None:
            return max(exc.retry_after, 0.05)
        return True
    return False


def _retry_after(answer: Answer) -> float | None:
    """The server's Retry-After in seconds, clamped: a hostile or broken server must not be
    able to park every request for days (the job's own timeout still bounds the total)."""
    value = answer.headers.get("Retry-After")
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    if seconds != seconds:  # NaN
        return None
    return min(max(0.0, seconds), MAX_RETRY_AFTER)



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
