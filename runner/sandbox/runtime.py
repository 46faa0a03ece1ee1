"""The state behind one sandbox app: store, clock, limiter, faults, webhooks, ticker.

``Sandbox`` is what the gate and the routes share: built once by ``create_app``, reached
from a route through ``caller(request)``, closed by the app's lifespan.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import Annotated

import anyio
import anyio.abc
from fastapi import Request, Security

from runner.sandbox import idempotency, training
from runner.sandbox.bandwidth import Link
from runner.sandbox.config import SandboxConfig
from runner.sandbox.faults import FaultInjector, RateLimiter
from runner.sandbox.openapi import api_key_header
from runner.sandbox.quota import Quota
from runner.sandbox.store import Store
from runner.sandbox.webhooks import WebhookSender

log = logging.getLogger("runner.sandbox")

TICK_SECONDS = 0.1
PURGE_SECONDS = 60.0


def account_of(api_key: str) -> str:
    """An account is the SHA-256 of its key: keys are never stored."""
    return hashlib.sha256(api_key.encode()).hexdigest()


class Sandbox:
    """Runtime state behind one app."""

    def __init__(self, config: SandboxConfig, clock: Callable[[], float]) -> None:
        self.config = config
        self.clock = clock
        config.state_dir.mkdir(parents=True, exist_ok=True)
        (config.state_dir / "uploads").mkdir(exist_ok=True)
        self.store = Store(config.state_dir / "sandbox.sqlite3")
        self.store.reset_balances(config.credits)
        self.faults = FaultInjector(config)
        self.limiter = RateLimiter(config.rate_limit, clock)
        self.locks = idempotency.KeyedLocks()
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

    def authenticate(self, key: str) -> str | None:
        """The account of ``key``, or None when the key is missing or not accepted."""
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

    async def run_ticker(self, task_group: anyio.abc.TaskGroup) -> None:
        """Finish due trainings and send due webhooks even when nobody polls."""
        last_purge = 0.0
        while True:
            try:
                now = self.clock()
                self._tick(now, task_group)
                if now - last_purge > PURGE_SECONDS:
                    self.store.purge_idempotent(now - idempotency.TTL)
                    last_purge = now
            except Exception:  # the ticker must outlive any one bad row
                log.exception("sandbox ticker error")
            await anyio.sleep(TICK_SECONDS)

    def _tick(self, now: float, task_group: anyio.abc.TaskGroup) -> None:
        for asset_id in self.store.due_asset_ids(now):
            asset = self.store.get_asset_by_id(asset_id)
            if asset is not None:
                training.advance(self.store, asset, now)
        for asset_id in self.webhooks.due():
            task_group.start_soon(self.webhooks.deliver, asset_id)


# Only documents X-Api-Key in the OpenAPI document: the gate has checked it already.
ApiKey = Annotated[str | None, Security(api_key_header)]


def caller(request: Request) -> tuple[Sandbox, str]:
    """The sandbox and the account the gate named for this request."""
    return sandbox_of(request), request.scope["state"]["sandbox_account"]


def sandbox_of(request: Request) -> Sandbox:
    sandbox: Sandbox = request.app.state.sandbox
    return sandbox
