"""The finetune API client: one method per route, retries and the rate limit.

What a request carries and what an answer means is ``runner.api.wire``'s business; this module
sends and retries, and with ``transport`` is the only importer of httpx, so everything above it
speaks ``ApiError`` and its subclasses (the tree is drawn in ``runner.errors``). One
exchange (the form, the deadline, the capped read) is ``runner.api.transport``'s.

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
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

import anyio
import httpx
import stamina

from runner import __version__, logsetup
from runner.api import wire
from runner.api.ratelimit import TokenBucket
from runner.api.transport import (
    GET_DEADLINE,
    Answer,
    Form,
    deadline_for,
    exchange,
    fields_form,
    is_name_error,
    job_form,
)
from runner.errors import (
    ApiError,
    Busy,
    InsufficientCredit,
    KeyRefused,
    NotReached,
    Replayable,
    Transient,
    Uncertain,
    Unreachable,
)
from runner.models import Job

if TYPE_CHECKING:
    from runner.manifest.resize import Resized

log = logsetup.get_logger("runner.api.client")

REACH_BUDGET = 25.0  # seconds to decide that an endpoint cannot be reached at all
REACH_TIMEOUT = httpx.Timeout(connect=8.0, read=10.0, write=10.0, pool=10.0)
DOCTOR_PREFIX = "runner-doctor-"


def idempotency_key(fingerprint: str, attempt: int) -> str:
    """Same job inputs and attempt -> same key, so replaying a lost POST cannot pay twice."""
    digest = hashlib.sha256(f"{fingerprint}:{attempt}".encode()).hexdigest()
    return f"runner-{digest[:40]}"


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
        """Send one request (after a token of the bucket) and read its whole answer.

        ``job``: the job's form, its images streamed (``resized``: the downscaled copies,
        ``transport.job_form``); ``fields``: a form of text fields only. Raises what
        ``transport.exchange`` raises.
        """
        await self.bucket.acquire()
        self.requests_sent += 1
        with contextlib.ExitStack() as stack:
            if job is not None:
                form = job_form(stack, job, resized or {})
            else:
                form = fields_form(fields) if fields is not None else Form()
            request = self.http.build_request(
                method, path, files=form.files, headers=self._headers(key),
                extensions=form.extensions,
                timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
            )
            return await exchange(
                self.http, request, host=self.host, job=job_name,
                deadline=deadline if deadline is not None else deadline_for(method, form.uploaded),
            )

    def _learn(self, answer: Answer, key: str) -> None:
        """An answer that echoes our key shows the API honours keys; one from the
        application itself (below 429) that does not, that it ignores them."""
        if answer.headers.get("Idempotency-Key") == key:
            self.honours_idempotency = True
        elif self.honours_idempotency is None and answer.status < 429:
            self.honours_idempotency = False

    def _busy(self, answer: Answer, job: str | None) -> Busy:
        retry_after = answer.retry_after()
        self.bucket.pause(retry_after if retry_after is not None else 1.0)
        return Busy(f"HTTP 429: {answer.message}", status=429, job=job, retry_after=retry_after)

    def _refusal(self, answer: Answer, job: str | None) -> ApiError:
        """The error for an answer that refuses the request (3xx and 4xx but 429)."""
        if answer.status in (401, 403):
            return KeyRefused(answer.message, status=answer.status, job=job)
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
                last_try = (isinstance(exc, NotReached) and is_name_error(exc) and tries >= 2)
                if last_try or spent + wait > budget:
                    raise Unreachable(
                        f"cannot reach the API at {self.base_url}: {exc.message}"
                        f" (tried {tries} times over {spent:.0f}s)"
                    ) from exc
                await anyio.sleep(wait)
                wait = min(wait * 2, 8.0)
                continue
            if answer.status in (401, 403):
                raise self._refusal(answer, None)
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
    ) -> wire.Submitted:
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
    ) -> wire.Submitted:
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
        self._learn(answer, key)
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
        return wire.read_submit(answer.body, job.lora_prefix)

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
            raise self._refusal(answer, job)
        if answer.status >= 300:
            return wire.Unreadable(f"HTTP {answer.status}: {answer.message}",
                                   wire.answer_text(answer.body), answer.status)
        return wire.read_status(answer.body)


def _transient_wait(exc: Exception) -> bool | float:
    if isinstance(exc, Transient):
        if exc.retry_after is not None:
            return max(exc.retry_after, 0.05)
        return True
    return False
