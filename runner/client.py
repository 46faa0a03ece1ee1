"""The finetune API client: one method per endpoint, and the only importer of httpx errors.

Everything above this module speaks ``ApiError`` / ``InsufficientCredit`` / ``Uncertain``.
What the public docs leave open (status strings, where the trigger word sits, the shape of
an unfinished status answer) is read tolerantly in ``parse_submit`` and ``parse_status``:
one place to edit when the live service turns out to differ.

Retry rules (DESIGN section 6): connect errors, 429, 502, 503, 504 are retried with
exponential backoff and jitter; a 429's Retry-After pauses the whole token bucket. A POST
whose request may have reached the server but whose answer was lost is only retried when the
API has shown it honours ``Idempotency-Key`` (it echoes the header back); otherwise it
raises ``Uncertain`` and the job waits for ``--resubmit-uncertain``.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import httpx
import stamina

from runner import __version__, logsetup
from runner.errors import ApiError, InsufficientCredit
from runner.images import open_regular
from runner.models import Job
from runner.ratelimit import TokenBucket

log = logsetup.get_logger("runner.client")

RETRY_STATUSES = frozenset({429, 502, 503, 504})
SUCCESS_WORDS = frozenset({"success", "succeeded", "completed", "complete", "done", "finished"})
FAILURE_WORDS = frozenset({"fail", "failed", "failure", "error", "cancel", "canceled", "cancelled"})
RUNNING_WORDS = frozenset(
    {"queue_bullet", "processing_bullet", "queued", "queue", "processing", "pending",
     "running", "training", "starting", "in_progress", "submitted"}
)


class Transient(ApiError):
    """Worth retrying: the server was busy or unreachable and did nothing."""


class Uncertain(ApiError):
    """The POST may have reached the server, and its answer was lost."""


class BadAnswer(ApiError):
    """A 2xx whose body we cannot understand."""


def idempotency_key(fingerprint: str, attempt: int) -> str:
    """Same job inputs and attempt -> same key, so replaying a lost POST cannot pay twice."""
    digest = hashlib.sha256(f"{fingerprint}:{attempt}".encode()).hexdigest()
    return f"runner-{digest[:40]}"


@dataclass(frozen=True)
class SubmitResult:
    trigger_word: str | None
    asset_id: str | None
    status: str | None
    key_echoed: bool


@dataclass(frozen=True)
class StatusResult:
    state: Literal["running", "succeeded", "failed"]
    raw_status: str | None
    results: tuple[str, ...] = ()
    thumbnails: tuple[str, ...] = ()
    message: str | None = None


def _urls(items: Any) -> tuple[str, ...]:
    out: list[str] = []
    if isinstance(items, list):
        for item in items:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict):
                url = item.get("URL") or item.get("url")
                if isinstance(url, str):
                    out.append(url)
    return tuple(out)


def parse_submit(body: Any) -> tuple[str | None, str | None, str | None]:
    """(trigger_word, asset_id, status) from a POST /finetune 200 answer."""
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict):
        raise BadAnswer("the API's answer to POST /finetune has no 'data' object", status=200)
    trigger = data.get("trigger_word")
    if not isinstance(trigger, str) or not trigger:
        args = data.get("args")
        trigger = args.get("trigger_word") if isinstance(args, dict) else None
    asset_id = data.get("id")
    status = data.get("status")
    return (
        trigger if isinstance(trigger, str) and trigger else None,
        str(asset_id) if asset_id is not None else None,
        str(status) if status is not None else None,
    )


def parse_status(body: Any) -> StatusResult:
    """Read a GET /finetune/{trigger_word} answer in any of the shapes we know of.

    - ``{"data": [{"URL": ...}, ...]}`` (the documented example): completed, with samples.
    - ``{"data": {"status": ..., "results": [...], "thumbnails": [...]}}``: the envelope.
    Unknown status words are logged and treated as still running.
    """
    data = body.get("data") if isinstance(body, dict) else None
    if isinstance(data, list):
        return StatusResult("succeeded", "success", _urls(data))
    if not isinstance(data, dict):
        raise BadAnswer("the API's status answer has no 'data'", status=200)
    raw = data.get("status")
    word = str(raw).strip().lower() if raw is not None else ""
    results = _urls(data.get("results"))
    thumbs = _urls(data.get("thumbnails"))
    if word in SUCCESS_WORDS:
        return StatusResult("succeeded", str(raw), results, thumbs)
    if word in FAILURE_WORDS:
        message = data.get("message") or data.get("error") or f"training ended with status {raw}"
        return StatusResult("failed", str(raw), results, thumbs, str(message))
    if word not in RUNNING_WORDS:
        log.warning("unknown status from the API; treating it as still running", status=raw)
    return StatusResult("running", str(raw) if raw is not None else None, results, thumbs)


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        return text[:300] or response.reason_phrase
    if isinstance(body, dict):
        if isinstance(body.get("message"), str):
            return str(body["message"])
        detail = body.get("detail")
        if isinstance(detail, list):
            parts = []
            for item in detail[:5]:
                if isinstance(item, dict):
                    loc = ".".join(str(x) for x in item.get("loc", []) if x != "body")
                    parts.append(f"{loc}: {item.get('msg')}" if loc else str(item.get("msg")))
            if parts:
                return "; ".join(parts)
        if isinstance(detail, str):
            return detail
    return str(body)[:300]


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


@dataclass
class RetryPolicy:
    attempts: int = 8
    timeout: float = 300.0
    wait_initial: float = 0.5
    wait_max: float = 30.0
    wait_jitter: float = 1.0


@dataclass
class ApiClient:
    """Talks to one endpoint with one key. Create with ``async with ApiClient(...)``."""

    base_url: str
    api_key: str
    bucket: TokenBucket
    transport: httpx.AsyncBaseTransport | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    honours_idempotency: bool | None = None  # learnt from answers; None = not known yet
    requests_sent: int = 0
    _http: httpx.AsyncClient | None = None

    async def __aenter__(self) -> ApiClient:
        self._http = httpx.AsyncClient(
            base_url=self.base_url.rstrip("/"),
            transport=self.transport,
            headers={"User-Agent": f"runner/{__version__}"},
            timeout=httpx.Timeout(connect=15.0, read=120.0, write=300.0, pool=None),
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=32),
            # Certificates are loaded only for https: for the sandbox and other loopback
            # http endpoints no TLS is ever spoken (redirects are not followed), and loading
            # the CA bundle cost 50 ms of every apply's start-up.
            verify=self.base_url.lower().startswith("https://"),
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

    def _retrying(self, on: Callable[[Exception], bool | float]) -> Any:
        """One retry policy for every call: exponential backoff with jitter, capped."""
        return stamina.retry_context(
            on=on,
            attempts=self.retry.attempts,
            timeout=self.retry.timeout,
            wait_initial=self.retry.wait_initial,
            wait_max=self.retry.wait_max,
            wait_jitter=self.retry.wait_jitter,
        )

    def _backoff(self, exc: Exception) -> bool | float:
        if isinstance(exc, Transient):
            if exc.retry_after is not None:
                return max(exc.retry_after, 0.05)
            return True
        return False

    def _learn(self, response: httpx.Response, key: str | None) -> bool:
        echoed = bool(key) and response.headers.get("Idempotency-Key") == key
        if key and (echoed or response.status_code < 500):
            # An answer that came from the application itself tells us whether it honours keys.
            if echoed:
                self.honours_idempotency = True
            elif self.honours_idempotency is None and response.status_code < 429:
                self.honours_idempotency = False
        return echoed

    def _raise_for(self, response: httpx.Response, job: str | None) -> None:
        status = response.status_code
        if status < 400:
            return
        message = _error_message(response)
        if status == 402:
            raise InsufficientCredit(f"insufficient credit: {message}", status=402, job=job)
        if status in RETRY_STATUSES:
            retry_after = _retry_after(response)
            if status == 429:
                self.bucket.pause(retry_after if retry_after is not None else 1.0)
            raise Transient(f"HTTP {status}: {message}", status=status, job=job, retry_after=retry_after)
        raise ApiError(message, status=status, job=job)

    # ----- POST /finetune ---------------------------------------------------------------

    async def submit(self, job: Job, key: str) -> SubmitResult:
        """POST the job; retried per the rules above.

        If any attempt may have reached the server (its answer was lost) and the retries
        run out, the outcome is ``Uncertain``, never a failure: a failure would be retried
        under a new key and could pay twice.
        """
        maybe_sent: list[bool] = []
        try:
            async for attempt in self._retrying(self._backoff):
                with attempt:
                    return await self._submit_once(job, key, maybe_sent)
        except Transient as exc:
            if maybe_sent:
                raise Uncertain(
                    f"gave up replaying after lost answers: {exc.message}", status=exc.status, job=job.name
                ) from exc
            raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _submit_once(self, job: Job, key: str, maybe_sent: list[bool]) -> SubmitResult:
        await self.bucket.acquire()
        with _open_files(job.images) as files:
            data: dict[str, Any] = {
                "option": job.option,
                "lora_prefix": job.lora_prefix,
                "num_iterations": str(job.num_iterations),
            }
            if not job.is_kontext:
                data["finetune_type"] = job.finetune_type
            if job.prompt is not None and job.is_kontext:
                data["prompt"] = job.prompt
            if job.webhook_url:
                data["webhook_url"] = job.webhook_url
            if job.image_urls and not job.images:
                data["image_urls"] = list(job.image_urls)
            self.requests_sent += 1
            try:
                response = await self.http.post(
                    "/finetune", data=data, files=files, headers=self._headers(key)
                )
            except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as exc:
                raise Transient(f"cannot connect to the API: {type(exc).__name__}", job=job.name) from exc
            except httpx.TransportError as exc:
                if self.honours_idempotency:
                    maybe_sent.append(True)
                    raise Transient(
                        f"answer lost ({type(exc).__name__}); replaying with the same Idempotency-Key",
                        job=job.name,
                    ) from exc
                raise Uncertain(
                    f"the request was sent but its answer was lost ({type(exc).__name__})",
                    job=job.name,
                ) from exc
        echoed = self._learn(response, key)
        if response.status_code >= 500 and response.status_code not in RETRY_STATUSES:
            if self.honours_idempotency:
                maybe_sent.append(True)
                raise Transient(f"HTTP {response.status_code}: {_error_message(response)}",
                                status=response.status_code, job=job.name)
            raise Uncertain(
                f"HTTP {response.status_code} after the request was sent: {_error_message(response)}",
                status=response.status_code,
                job=job.name,
            )
        self._raise_for(response, job.name)
        try:
            body = response.json()
        except ValueError as exc:
            raise Uncertain("the API's 200 answer was not JSON", status=200, job=job.name) from exc
        try:
            trigger, asset_id, status = parse_submit(body)
        except BadAnswer as exc:
            raise Uncertain(exc.message, status=200, job=job.name) from exc
        return SubmitResult(trigger, asset_id, status, echoed)

    async def probe_idempotency(self) -> bool:
        """Learn, for free, whether the API honours Idempotency-Key.

        Sends a POST that cannot start a training (no images, an unknown option) with a
        throwaway key; the API answers 4xx, echoing the key only if it honours keys.
        """
        if self.honours_idempotency is not None:
            return self.honours_idempotency
        key = "runner-probe-" + secrets.token_hex(8)
        async for attempt in self._retrying(self._backoff):
            with attempt:
                await self.bucket.acquire()
                self.requests_sent += 1
                try:
                    response = await self.http.post(
                        "/finetune",
                        data={"option": "runner-idempotency-probe", "num_iterations": "not-a-number"},
                        headers=self._headers(key),
                    )
                except httpx.TransportError as exc:
                    raise Transient(f"idempotency probe: {type(exc).__name__}") from exc
                if response.status_code in RETRY_STATUSES or response.status_code >= 500:
                    raise Transient(f"idempotency probe: HTTP {response.status_code}",
                                    status=response.status_code, retry_after=_retry_after(response))
                if response.status_code in (401, 403):
                    self._raise_for(response, None)
                self.honours_idempotency = response.headers.get("Idempotency-Key") == key
        return bool(self.honours_idempotency)

    # ----- GET /finetune/{trigger_word} --------------------------------------------------

    async def status(self, trigger_word: str, *, job: str | None = None) -> StatusResult:
        async for attempt in self._retrying(lambda exc: isinstance(exc, BadAnswer) or self._backoff(exc)):
            with attempt:
                return await self._status_once(trigger_word, job)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _status_once(self, trigger_word: str, job: str | None) -> StatusResult:
        await self.bucket.acquire()
        self.requests_sent += 1
        try:
            response = await self.http.get(f"/finetune/{trigger_word}", headers=self._headers())
        except httpx.TransportError as exc:
            # A GET changes nothing: any transport failure is safe to retry.
            raise Transient(f"status request failed: {type(exc).__name__}", job=job) from exc
        if response.status_code >= 500 and response.status_code not in RETRY_STATUSES:
            raise Transient(f"HTTP {response.status_code}", status=response.status_code, job=job)
        self._raise_for(response, job)
        try:
            body = response.json()
        except ValueError as exc:
            raise BadAnswer("status answer was not JSON", status=200, job=job) from exc
        return parse_status(body)


@contextlib.contextmanager
def _open_files(paths: tuple[Path, ...]) -> Iterator[list[tuple[str, tuple[str, BinaryIO, str]]]]:
    """Open every image for streaming; httpx reads them in chunks, so memory stays flat."""
    with contextlib.ExitStack() as stack:
        files = []
        for path in paths:
            fh = stack.enter_context(open_regular(path))
            files.append(("image_files", (path.name, fh, _mime(path))))
        yield files


def _mime(path: Path) -> str:
    return {
        ".png": "image/png",
        ".webp": "image/webp",
        ".jpg": "image/jpeg",
        ".jpeg": "image/jpeg",
    }.get(path.suffix.lower(), "application/octet-stream")
