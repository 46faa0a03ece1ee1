"""The sandbox's --no-idempotency mode behaves like the real service: keys ignored, not echoed."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
from PIL import Image

from runner.sandbox.config import SandboxConfig
from runner.sandbox.serve import start_server


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buf, "PNG")
    return buf.getvalue()


def test_keys_are_neither_honoured_nor_echoed(tmp_path: Path) -> None:
    """Two POSTs with one key train twice and no answer carries the header back."""
    with start_server(SandboxConfig(state_dir=tmp_path, idempotency=False)) as server:
        words = []
        for _ in range(2):
            r = httpx.post(
                f"{server.url}/finetune",
                headers={"X-Api-Key": "k", "Idempotency-Key": "same"},
                files=[("image_files", ("a.png", _png(), "image/png"))],
                data={"lora_prefix": "X"},
            )
            assert r.status_code == 200
            assert "idempotency-key" not in r.headers
            words.append(r.json()["data"]["trigger_word"])
        assert words[0] != words[1]
        ledger = httpx.get(f"{server.url}/_sandbox/ledger", headers={"X-Api-Key": "k"}).json()
        assert ledger["credits_charged"] == 2
