"""Webhook delivery: POST the finished asset's envelope to its ``webhook_url``.

Delivery state lives in SQLite (``pending`` → ``delivered`` | ``failed`` | ``skipped``), so
a restart resumes retries. Retries back off exponentially from ``webhook_backoff``. A
sandbox that anyone can point at arbitrary URLs would be a request-forgery tool, so:

- on loopback (the default), only loopback hosts are called unless
  ``--allow-external-webhooks``;
- bound beyond loopback (``config.exposed``), loopback is exactly what must not be called
  (the host's own services): without ``--allow-external-webhooks`` nothing is called, and
  with it only hosts whose every address is public (not loopback, private, link-local,
  reserved...), the connection pinned to the address that was checked, so a DNS answer
  that changes in between cannot point it back inside.

A URL refused is recorded as ``skipped`` in the asset's history instead of failing the
training.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import anyio
import httpx

from runner.sandbox.config import SandboxConfig
from runner.sandbox.store import Asset, Store
from runner.sandbox.training import envelope

log = logging.getLogger("runner.sandbox.webhooks")


def _is_loopback_ip(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def is_public_address(address: str) -> bool:
    """A global unicast address: not loopback, private, link-local, shared, reserved,
    multicast or unspecified (an IPv4-mapped IPv6 address is judged as its IPv4 one)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_global and not ip.is_multicast


async def public_address(url: str) -> str | None:
    """The address to call for ``url`` when every address its host resolves to is public;
    None otherwise (or when it does not resolve)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if not host:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        infos = await anyio.to_thread.run_sync(
            socket.getaddrinfo, host, port, 0, socket.SOCK_STREAM
        )
    except (OSError, ValueError, UnicodeError):
        return None
    addresses = [str(info[4][0]) for info in infos]
    if not addresses or not all(is_public_address(a) for a in addresses):
        return None
    return addresses[0]


EXPOSED_NOTE = (
    "webhook not sent: the sandbox listens beyond loopback, so it never calls loopback or"
    " private addresses"
)


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

    async def _route(self, url: str) -> tuple[str | None, str, dict[str, Any]]:
        """(why the URL is refused, or None; the URL to request; extra request options)."""
        allow_external = self._config.allow_external_webhooks
        if not self._config.exposed:
            if allow_external or await is_loopback_url(url):
                return None, url, {}
            return (
                "webhook not sent: not a loopback URL (start the sandbox with"
                " --allow-external-webhooks to allow it)",
                url,
                {},
            )
        if not allow_external:
            return EXPOSED_NOTE + " (and --allow-external-webhooks is off)", url, {}
        address = await public_address(url)
        if address is None:
            return EXPOSED_NOTE, url, {}
        parts = urlsplit(url)
        host = parts.hostname or ""
        shown = f"[{address}]" if ":" in address else address
        netloc = f"{shown}:{parts.port}" if parts.port else shown
        pinned = parts._replace(netloc=netloc).geturl()
        host_header = f"[{host}]" if ":" in host else host
        if parts.port:
            host_header += f":{parts.port}"
        extra: dict[str, Any] = {"headers": {"host": host_header}}
        if parts.scheme == "https":
            extra["extensions"] = {"sni_hostname": host}
        return None, pinned, extra

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
        refusal, request_url, extra = await self._route(asset.webhook_url)
        if refusal:
            self._store.set_webhook(
                asset_id,
                state="skipped",
                attempts=asset.webhook_attempts,
                next_at=0,
                note=refusal,
            )
            return
        attempts = asset.webhook_attempts + 1
        error = await self._post(asset, request_url, extra, attempts)
        self._record(asset, attempts, error)

    async def _post(
        self, asset: Asset, request_url: str, extra: dict[str, Any], attempts: int
    ) -> str | None:
        """One delivery; what went wrong, or None when the receiver took it (2xx)."""
        if self._client is None:
            # trust_env=False: a proxy from the environment would make the address check moot.
            self._client = httpx.AsyncClient(timeout=5.0, follow_redirects=False, trust_env=False)
        body = json.dumps(envelope(asset, asset.base_url)).encode()
        try:
            client = self._client
            if extra:  # pinned to an address: pooled connections are per address, not per
                # name, so each such delivery gets its own (right SNI and Host every time)
                client = httpx.AsyncClient(timeout=5.0, follow_redirects=False, trust_env=False)
            try:
                response = await client.post(
                    request_url,
                    content=body,
                    headers={
                        "content-type": "application/json",
                        "x-sandbox-webhook-attempt": str(attempts),
                        **extra.get("headers", {}),
                    },
                    extensions=extra.get("extensions", {}),
                )
            finally:
                if client is not self._client:
                    await client.aclose()
        except httpx.HTTPError as exc:
            return type(exc).__name__
        return None if response.is_success else f"HTTP {response.status_code}"

    def _record(self, asset: Asset, attempts: int, error: str | None) -> None:
        """Delivered, given up, or due again after the backoff."""
        if error is None:
            self._store.set_webhook(
                asset.id, state="delivered", attempts=attempts, next_at=0, note="webhook delivered"
            )
            return
        log.warning("webhook for %s failed (%s), attempt %d", asset.trigger_word, error, attempts)
        if attempts >= self._config.webhook_attempts:
            self._store.set_webhook(
                asset.id,
                state="failed",
                attempts=attempts,
                next_at=0,
                note=f"webhook gave up after {attempts} attempts: {error}",
            )
            return
        delay = self._config.webhook_backoff * 2 ** (attempts - 1)
        self._store.set_webhook(
            asset.id, state="pending", attempts=attempts, next_at=self._clock() + delay, note=None
        )
