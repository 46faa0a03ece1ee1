"""Webhook delivery: POST the finished asset's envelope to its ``webhook_url``.

Delivery state lives in SQLite (``pending`` → ``delivered`` | ``failed`` | ``skipped``), so
a restart resumes retries. Retries back off exponentially from ``webhook_backoff``. Only
loopback hosts are called unless ``--allow-external-webhooks``: a sandbox that anyone can
point at arbitrary URLs would be a request-forgery tool; an external URL is recorded as
``skipped`` in the asset's history instead of failing the training.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from collections.abc import Callable
from urllib.parse import urlsplit

import anyio
import httpx

from runner.sandbox.config import SandboxConfig
from runner.sandbox.store import Store
from runner.sandbox.training import envelope

log = logging.getLogger("runner.sandbox.webhooks")


def _is_loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def is_loopback_url(url: str) -> bool:
    """True when every address the host resolves to is a loopback address."""
    host = urlsplit(url).hostname or ""
    if not host:
        return False
    if _is_loopback_ip(host):
        return True
    if host != "localhost" and not host.endswith(".localhost"):
        return False
    try:
        infos = await anyio.to_thread.run_sync(socket.getaddrinfo, host, None)
    except OSError:
        return False
    return bool(infos) and all(_is_loopback_ip(str(info[4][0])) for info in infos)


class WebhookSender:
    """Delivers due webhooks; one attempt per call, the ticker calls again for retries."""

    def __init__(self, store: Store, config: SandboxConfig, clock: Callable[[], float]) -> None:
        self._store = store
        self._config = config
        self._clock = clock
        self._in_flight: set[str] = set()
        self._client: httpx.AsyncClient | None = None

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def due(self) -> list[str]:
        ids = self._store.due_webhook_ids(self._clock())
        return [i for i in ids if i not in self._in_flight]

    async def deliver(self, asset_id: str) -> None:
        if asset_id in self._in_flight:
            return
        self._in_flight.add(asset_id)
        try:
            await self._attempt(asset_id)
        finally:
            self._in_flight.discard(asset_id)

    async def _attempt(self, asset_id: str) -> None:
        asset = self._store.get_asset_by_id(asset_id)
        if asset is None or asset.webhook_state != "pending" or not asset.webhook_url:
            return
        url = asset.webhook_url
        if not self._config.allow_external_webhooks and not await is_loopback_url(url):
            self._store.set_webhook(
                asset_id,
                state="skipped",
                attempts=asset.webhook_attempts,
                next_at=0,
                note="webhook not sent: not a loopback URL (start the sandbox with"
                " --allow-external-webhooks to allow it)",
            )
            return
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=5.0, follow_redirects=False)
        attempts = asset.webhook_attempts + 1
        body = json.dumps(envelope(asset, asset.base_url)).encode()
        error: str | None = None
        try:
            response = await self._client.post(
                url,
                content=body,
                headers={
                    "content-type": "application/json",
                    "x-sandbox-webhook-attempt": str(attempts),
                },
            )
            if not response.is_success:
                error = f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        if error is None:
            self._store.set_webhook(
                asset_id, state="delivered", attempts=attempts, next_at=0, note="webhook delivered"
            )
            return
        log.warning("webhook for %s failed (%s), attempt %d", asset.trigger_word, error, attempts)
        if attempts >= self._config.webhook_attempts:
            self._store.set_webhook(
                asset_id,
                state="failed",
                attempts=attempts,
                next_at=0,
                note=f"webhook gave up after {attempts} attempts: {error}",
            )
            return
        delay = self._config.webhook_backoff * 2 ** (attempts - 1)
        self._store.set_webhook(
            asset_id, state="pending", attempts=attempts, next_at=self._clock() + delay, note=None
        )
