"""The ledger's ``duplicate_trainings``: a training whose request repeats an earlier one's,
what a client that pays twice leaves behind."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sandbox_support import HEADERS, image_parts, png_bytes

from runner.sandbox.store import SCHEMA, Store

pytestmark = pytest.mark.anyio


async def duplicates(client: httpx.AsyncClient) -> int:
    count: int = (await client.get("/_sandbox/ledger", headers=HEADERS)).json()[
        "duplicate_trainings"
    ]
    return count


async def test_the_same_request_twice_is_one_duplicate(
    asgi: Callable[..., httpx.AsyncClient],
) -> None:
    """Same images and fields twice: one duplicate, though each got its own trigger word,
    even when the retry renamed its file parts or changed its webhook."""
    async with asgi() as client:
        parts = image_parts(2)
        renamed = [(name, (f"other{i}.png", *rest)) for i, (name, (_, *rest)) in enumerate(parts)]
        first = await client.post(
            "/finetune", headers=HEADERS, files=parts, data={"lora_prefix": "A"}
        )
        assert first.status_code == 200
        assert await duplicates(client) == 0
        again = await client.post(
            "/finetune",
            headers=HEADERS,
            files=renamed,
            data={"lora_prefix": "A", "webhook_url": "http://127.0.0.1:9/hook"},
        )
        assert again.status_code == 200
        assert again.json()["data"]["trigger_word"] != first.json()["data"]["trigger_word"]
        assert await duplicates(client) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"data": {"lora_prefix": "B"}},
        {"data": {"num_iterations": "500"}},
        {"files": [("image_files", ("img0.png", png_bytes((1, 2, 3)), "image/png"))] * 2},
    ],
)
async def test_another_request_is_no_duplicate(
    asgi: Callable[..., httpx.AsyncClient], change: dict[str, Any]
) -> None:
    """Another prefix, iteration count or other image contents is a new
    training, not a duplicate."""
    async with asgi() as client:
        base: dict[str, Any] = {"files": image_parts(2), "data": {"lora_prefix": "A"}}
        await client.post("/finetune", headers=HEADERS, **base)
        other = base | change
        other["data"] = base["data"] | change.get("data", {})
        assert (await client.post("/finetune", headers=HEADERS, **other)).status_code == 200
        assert await duplicates(client) == 0


def test_state_from_before_the_request_hash_still_counts_duplicates(tmp_path: Path) -> None:
    """A state dir written before assets had request_hash gains the column on open, and its
    old rows are compared by their args without the trigger word and webhook."""
    path = tmp_path / "sandbox.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(SCHEMA.replace(",\n    request_hash TEXT\n", "\n"))
    assert "request_hash" not in {r[1] for r in old.execute("PRAGMA table_info(assets)")}
    old.execute("INSERT INTO accounts (id, customer_id) VALUES ('acct', 'c')")
    for i, hook in enumerate([None, "http://127.0.0.1:9/a"]):
        args = {"lora_prefix": "A", "image_files": ["a.png"], "webhook_url": hook}
        old.execute(
            "INSERT INTO assets (id, account, trigger_word, args, created_at, duration, final_at,"
            " outcome, status, updated_at, history, base_url, image_dir, images)"
            " VALUES (?, 'acct', ?, ?, 0, 0, 0, 'success', 'success', 0, '[]', '', '', '[]')",
            (f"id{i}", f"A_word{i}", json.dumps(args | {"trigger_word": f"A_word{i}"})),
        )
    old.commit()
    old.close()
    store = Store(path)
    try:
        assert store.ledger("acct")["duplicate_trainings"] == 1
        asset = store.get_asset("acct", "A_word0")
        assert asset is not None and asset.request_hash is None
    finally:
        store.close()
