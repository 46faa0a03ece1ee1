"""``Idempotency-Key``: a replayed POST gets the stored answer and never trains twice.

What makes two requests "the same" is the training's inputs (``request_hash``), not its
webhook or file names, so a client may replay after those change; the same key with other
inputs is a 400. Replays of one key run one after the other (``KeyedLocks``), so two
concurrent replays cannot both miss the stored answer. The echo of the key on every answer
is the gate's (``runner.sandbox.gate``); ``--no-idempotency`` turns all of it off.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import AsyncIterator, Hashable
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi.responses import Response

from runner.sandbox.messages import ClientMessage
from runner.sandbox.store import Store

TTL = 24 * 3600.0
MAX_KEY = 255
# The arguments that make a training what it is (with the images' contents).
HASHED_ARGS = ("option", "finetune_type", "lora_prefix", "num_iterations", "prompt", "image_urls")


def check_key(raw: str | None) -> None:
    if raw is None:
        return
    if not raw or len(raw) > MAX_KEY or not raw.isprintable():
        raise ClientMessage(400, f"Idempotency-Key must be 1 to {MAX_KEY} printable characters")


def request_hash(args: dict[str, Any], image_digests: list[str]) -> str:
    inputs = {k: args[k] for k in HASHED_ARGS} | {"images": image_digests}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def replay(store: Store, account: str, key: str | None, hashed: str, now: float) -> Response | None:
    """The stored answer to ``key``'s first request (counted as a replay), or None."""
    if not key:
        return None
    prior = store.get_idempotent(account, key, now - TTL)
    if prior is None:
        return None
    if prior.request_hash != hashed:
        raise ClientMessage(400, "Idempotency-Key was already used with a different request")
    store.count_replay(account)
    return Response(
        prior.body,
        status_code=prior.status_code,
        media_type="application/json",
        headers={"Idempotent-Replayed": "true"},
    )


class KeyedLocks:
    """One lock per key, forgotten when nobody holds or waits for it, so replays of the
    same ``Idempotency-Key`` run one after the other and never train twice."""

    def __init__(self) -> None:
        self._locks: dict[Hashable, tuple[anyio.Lock, int]] = {}

    def hold_if(self, key: Hashable | None) -> contextlib.AbstractAsyncContextManager[None]:
        """``hold(key)``, or nothing to hold when there is no key."""
        return contextlib.nullcontext() if key is None else self.hold(key)

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
