"""Every documented answer of the sandbox, in-process through ``httpx.ASGITransport``."""

from __future__ import annotations

import asyncio
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sandbox_support import HEADERS, KEY, OTHER_KEY, data, image_parts, png_bytes
from support.clock import FakeClock

from runner.sandbox import training

pytestmark = pytest.mark.anyio

ENVELOPE_FIELDS = {
    "id",
    "customer_id",
    "primary_user_id",
    "args",
    "results",
    "thumbnails",
    "status",
    "mime_type",
    "app_name",
    "created_at",
    "updated_at",
    "history",
    "trigger_word",
}


async def post(
    client: httpx.AsyncClient, count: int = 3, headers: dict[str, str] | None = None, **fields: Any
) -> httpx.Response:
    return await client.post(
        "/finetune",
        headers=headers or HEADERS,
        files=image_parts(count) if count else None,
        data=fields,
    )


async def test_post_answers_the_documented_envelope(client: httpx.AsyncClient) -> None:
    """A valid POST answers 200 with every envelope field, app_name sandbox and a queued status."""
    response = await post(client, lora_prefix="SNKR")
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"data"}
    asset = body["data"]
    assert set(asset) == ENVELOPE_FIELDS
    assert asset["app_name"] == "sandbox"
    assert asset["status"] == "queue_bullet"
    assert asset["results"] == [] and asset["thumbnails"] == []
    assert re.fullmatch(r"SNKR_[a-z0-9]{6}", asset["trigger_word"])
    assert asset["args"]["trigger_word"] == asset["trigger_word"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}\+00:00", asset["created_at"])
    assert KEY not in response.text


async def test_post_defaults_match_the_documented_defaults(client: httpx.AsyncClient) -> None:
    """Fields left out take the documented defaults (FluxFinetune, Auto, MYLORA, 0 iterations)."""
    args = data(await post(client))["args"]
    assert args["option"] == "FluxFinetune"
    assert args["finetune_type"] == "Auto"
    assert args["lora_prefix"] == "MYLORA"
    assert args["num_iterations"] == 0
    assert args["image_count"] == 3
    assert data(await post(client))["trigger_word"].startswith("MYLORA_")


async def test_trigger_words_are_unique(client: httpx.AsyncClient) -> None:
    """Many trainings with the same prefix all get distinct trigger words and asset ids."""
    answers = [data(await post(client, count=1, lora_prefix="SAME")) for _ in range(25)]
    assert len({a["trigger_word"] for a in answers}) == 25
    assert len({a["id"] for a in answers}) == 25


async def test_status_moves_through_the_phases_on_the_clock(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """GET shows queue_bullet, then processing_bullet, then success, full envelope each time."""
    trigger = data(await post(client))["trigger_word"]  # 3 images, Auto: exactly 1.0 s
    seen = []
    for step in (0.05, 0.1, 0.5, 0.34, 0.02):
        clock.advance(step)
        response = await client.get(f"/finetune/{trigger}", headers=HEADERS)
        assert response.status_code == 200
        asset = data(response)
        assert set(asset) == ENVELOPE_FIELDS
        seen.append(asset["status"])
    assert seen == [
        "queue_bullet",
        "processing_bullet",
        "processing_bullet",
        "processing_bullet",
        "success",
    ]
    assert [h["status"] for h in asset["history"]] == [
        "queue_bullet",
        "processing_bullet",
        "success",
    ]


async def test_success_has_absolute_png_urls_on_the_request_base(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """On success results/thumbnails are absolute URLs on the caller's base URL serving real PNGs."""
    trigger = data(await post(client, lora_prefix="PNG"))["trigger_word"]
    clock.advance(5)
    asset = data(await client.get(f"/finetune/{trigger}", headers=HEADERS))
    assert asset["status"] == "success"
    assert len(asset["results"]) == 2 and len(asset["thumbnails"]) == 2
    for url in asset["results"] + asset["thumbnails"]:
        assert url.startswith("http://sandbox.test/_sandbox/files/")
        response = await client.get(url)
        assert response.status_code == 200
        assert response.headers["content-type"] == "image/png"
        with Image.open(io.BytesIO(response.content)) as image:
            assert image.format == "PNG"
            assert image.width >= 64
    with Image.open(io.BytesIO((await client.get(asset["thumbnails"][0])).content)) as thumb:
        assert max(thumb.size) <= 256


async def test_get_accepts_the_asset_id(client: httpx.AsyncClient) -> None:
    """The status route answers for the asset id as well as for the trigger word."""
    created = data(await post(client))
    by_id = data(await client.get(f"/finetune/{created['id']}", headers=HEADERS))
    assert by_id["trigger_word"] == created["trigger_word"]


async def test_fail_on_demand(client: httpx.AsyncClient, clock: FakeClock) -> None:
    """A lora_prefix containing FAIL ends in status fail, without results."""
    trigger = data(await post(client, lora_prefix="PLEASE_FAIL"))["trigger_word"]
    clock.advance(2)
    asset = data(await client.get(f"/finetune/{trigger}", headers=HEADERS))
    assert asset["status"] == "fail"
    assert asset["results"] == [] and asset["thumbnails"] == []
    assert asset["history"][-1]["status"] == "fail"


async def test_train_seconds_zero_succeeds_on_first_get(
    asgi: Callable[..., httpx.AsyncClient],
) -> None:
    """With --train-seconds 0 the first GET already says success, without advancing the clock."""
    async with asgi(train_seconds=0) as client:
        trigger = data(await post(client))["trigger_word"]
        assert (
            data(await client.get(f"/finetune/{trigger}", headers=HEADERS))["status"] == "success"
        )


@pytest.mark.parametrize(
    ("count", "iterations", "seconds"),
    [(3, 0, 1.0), (10, 0, 1.0), (20, 0, 2.0), (3, 2000, 2.0), (3, 500, 0.5)],
)
async def test_training_length_follows_images_and_iterations(
    asgi: Callable[..., httpx.AsyncClient],
    clock: FakeClock,
    count: int,
    iterations: int,
    seconds: float,
) -> None:
    """Training lasts S * max(1, n/10) * (iterations or 1000)/1000: not done just before, done at it."""
    async with asgi(train_seconds=1.0) as client:
        trigger = data(await post(client, count=count, num_iterations=iterations))["trigger_word"]
        clock.advance(seconds - 0.01)
        assert (
            data(await client.get(f"/finetune/{trigger}", headers=HEADERS))["status"]
            == "processing_bullet"
        )
        clock.advance(0.01)
        assert (
            data(await client.get(f"/finetune/{trigger}", headers=HEADERS))["status"] == "success"
        )


async def test_missing_key_is_401(client: httpx.AsyncClient) -> None:
    """No X-Api-Key (or an empty one) is 401 on both finetune routes and the ledger."""
    assert (await client.post("/finetune", files=image_parts(1))).status_code == 401
    assert (
        await client.post("/finetune", files=image_parts(1), headers={"X-Api-Key": ""})
    ).status_code == 401
    assert (await client.get("/finetune/ANY_x")).status_code == 401
    assert (await client.get("/_sandbox/ledger")).status_code == 401


async def test_unknown_key_is_401_when_keys_are_configured(
    asgi: Callable[..., httpx.AsyncClient],
) -> None:
    """With --api-key given, only those keys are accepted."""
    async with asgi(api_keys=(KEY,)) as client:
        assert (await post(client)).status_code == 200
        response = await post(client, headers={"X-Api-Key": "not-a-key"})
        assert response.status_code == 401
        assert "message" in response.json()


async def test_keys_are_isolated(client: httpx.AsyncClient) -> None:
    """Another key gets 400 for an asset, by trigger word and by id, and has its own ledger."""
    created = data(await post(client))
    other = {"X-Api-Key": OTHER_KEY}
    assert (
        await client.get(f"/finetune/{created['trigger_word']}", headers=other)
    ).status_code == 400
    assert (await client.get(f"/finetune/{created['id']}", headers=other)).status_code == 400
    assert (await client.get("/_sandbox/ledger", headers=other)).json()["trainings"] == 0
    assert data(await post(client, headers=other))["customer_id"] != created["customer_id"]


async def test_credits_run_out_with_402(asgi: Callable[..., httpx.AsyncClient]) -> None:
    """With --credits 2 the third training is refused with 402 {"message"}; each key has its own."""
    async with asgi(credits=2) as client:
        assert (await post(client)).status_code == 200
        assert (await post(client)).status_code == 200
        refused = await post(client)
        assert refused.status_code == 402
        assert set(refused.json()) == {"message"}
        ledger = (await client.get("/_sandbox/ledger", headers=HEADERS)).json()
        assert ledger == {
            "credits_charged": 2,
            "trainings": 2,
            "posts": 3,
            "replays": 0,
            "balance": 0,
            "duplicate_trainings": 1,  # the same request (images, fields) trained twice
            "status_checks": 0,
            "stored_bytes": ledger["stored_bytes"],
            "largest_image_side": 48,  # sandbox_support's images
        }
        assert ledger["stored_bytes"] > 0
        assert (await post(client, headers={"X-Api-Key": OTHER_KEY})).status_code == 200


async def test_ledger_counts_status_checks_per_key(asgi: Callable[..., httpx.AsyncClient]) -> None:
    """Every status request (a 400 too) counts for the key that sent it, and only for it."""
    async with asgi() as client:
        word = data(await post(client))["trigger_word"]
        for ident in (word, word, "NOPE_123456"):
            await client.get(f"/finetune/{ident}", headers=HEADERS)
        await client.get(f"/finetune/{word}", headers={"X-Api-Key": OTHER_KEY})
        mine = (await client.get("/_sandbox/ledger", headers=HEADERS)).json()
        other = (await client.get("/_sandbox/ledger", headers={"X-Api-Key": OTHER_KEY})).json()
        assert (mine["status_checks"], other["status_checks"]) == (3, 1)


@pytest.mark.parametrize(
    ("count", "prompt", "needle"),
    [
        (3, "turn it red", "pairs"),
        (1, "turn it red", "at least one pair"),
        (2, None, "prompt"),
        (2, "  ", "prompt"),
    ],
)
async def test_broken_kontext_input_is_400(
    client: httpx.AsyncClient, count: int, prompt: str | None, needle: str
) -> None:
    """Kontext with an odd count, no full pair or no prompt is 400 {"message"}."""
    fields = {"option": "FluxKontextFinetune"} | ({"prompt": prompt} if prompt is not None else {})
    response = await post(client, count=count, **fields)
    assert response.status_code == 400
    assert set(response.json()) == {"message"}
    assert needle in response.json()["message"]


async def test_kontext_pairs_are_accepted(client: httpx.AsyncClient) -> None:
    """Kontext with two pairs and a prompt starts a training, finetune_type being ignored."""
    response = await post(
        client,
        count=4,
        option="FluxKontextFinetune",
        prompt="turn the car red",
        finetune_type="Bogus",
    )
    assert response.status_code == 200
    assert data(response)["args"]["prompt"] == "turn the car red"


async def test_non_image_upload_is_400(client: httpx.AsyncClient) -> None:
    """A file that is not an image is refused with 400 naming the part."""
    files = [*image_parts(1), ("image_files", ("notes.txt", b"hello, not an image", "text/plain"))]
    response = await client.post("/finetune", headers=HEADERS, files=files)
    assert response.status_code == 400
    assert "image_files[1]" in response.json()["message"]


@pytest.mark.parametrize(
    ("fields", "count", "loc"),
    [
        ({"option": "FluxUltraFinetune"}, 3, ["body", "option"]),
        ({"finetune_type": "Landscape"}, 3, ["body", "finetune_type"]),
        ({"num_iterations": "many"}, 3, ["body", "num_iterations"]),
        ({"num_iterations": "-5"}, 3, ["body", "num_iterations"]),
        ({"lora_prefix": "has space"}, 3, ["body", "lora_prefix"]),
        ({}, 0, ["body", "image_files"]),
        ({"image_urls": ["ftp://x/a.png"]}, 0, ["body", "image_urls", 0]),
        ({"webhook_url": "not a url"}, 3, ["body", "webhook_url"]),
    ],
)
async def test_invalid_fields_are_422_in_fastapi_shape(
    client: httpx.AsyncClient, fields: dict[str, Any], count: int, loc: list[Any]
) -> None:
    """Invalid fields answer 422 {"detail": [{"loc", "msg", "type"}]} pointing at the field."""
    response = await post(client, count=count, **fields)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail
    assert all({"loc", "msg", "type"} <= set(d) for d in detail)
    assert loc in [d["loc"] for d in detail]


async def test_image_urls_train_without_files(client: httpx.AsyncClient, clock: FakeClock) -> None:
    """image_urls alone start a training (never fetched) whose samples are still PNGs."""
    urls = ["https://example.com/a.jpg", "https://example.com/b.jpg"]
    response = await post(client, count=0, image_urls=urls)
    assert response.status_code == 200
    asset = data(response)
    assert asset["args"]["image_urls"] == urls
    clock.advance(2)
    done = data(await client.get(f"/finetune/{asset['trigger_word']}", headers=HEADERS))
    picture = await client.get(done["results"][0])
    assert picture.status_code == 200 and picture.content.startswith(b"\x89PNG")


async def test_oversized_upload_is_413(asgi: Callable[..., httpx.AsyncClient]) -> None:
    """A body above max_upload_bytes is refused with 413 and nothing is trained."""
    async with asgi(max_upload_bytes=20_000) as client:
        big = ("image_files", ("big.png", png_bytes(size=16) + b"\0" * 50_000, "image/png"))
        response = await client.post("/finetune", headers=HEADERS, files=[big])
        assert response.status_code == 413
        assert (await client.get("/_sandbox/ledger", headers=HEADERS)).json()["trainings"] == 0


async def test_oversized_streamed_upload_is_413(asgi: Callable[..., httpx.AsyncClient]) -> None:
    """A chunked body with no Content-Length is cut off at the cap with 413 too."""

    async def chunks() -> Any:
        yield (
            b'--zzz\r\nContent-Disposition: form-data; name="image_files"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n"
        )
        for _ in range(10):
            yield b"x" * 10_000
        yield b"\r\n--zzz--\r\n"

    async with asgi(max_upload_bytes=20_000) as client:
        response = await client.post(
            "/finetune",
            headers=HEADERS | {"content-type": "multipart/form-data; boundary=zzz"},
            content=chunks(),
        )
        assert response.status_code == 413


async def test_uploads_are_stored_under_the_state_dir(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Uploaded images land as files under state_dir/uploads/<asset id>/, byte for byte."""
    parts = image_parts(3)
    asset = data(await client.post("/finetune", headers=HEADERS, files=parts))
    stored = sorted((tmp_path / "state" / "uploads" / asset["id"]).iterdir())
    assert [p.read_bytes() for p in stored] == [part[1][1] for part in parts]


async def test_rate_limit_answers_429_with_retry_after(
    asgi: Callable[..., httpx.AsyncClient], clock: FakeClock
) -> None:
    """Above --rate-limit a key gets 429 with an integer Retry-After >= 1; other keys are unaffected."""
    async with asgi(rate_limit=1.0) as client:
        assert (await post(client)).status_code == 200
        limited = await post(client)
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) >= 1
        assert (await client.get("/finetune/x_y", headers=HEADERS)).status_code == 429
        assert (await post(client, headers={"X-Api-Key": OTHER_KEY})).status_code == 200
        clock.advance(1.0)
        assert (await post(client)).status_code == 200


async def test_slow_rate_limit_retry_after_is_whole_seconds(
    asgi: Callable[..., httpx.AsyncClient],
) -> None:
    """At 0.25 requests/s the second request is told to wait 4 seconds."""
    async with asgi(rate_limit=0.25) as client:
        assert (await post(client)).status_code == 200
        assert (await post(client)).headers["Retry-After"] == "4"


async def test_idempotency_key_is_echoed_on_every_answer(
    asgi: Callable[..., httpx.AsyncClient],
) -> None:
    """200, 400, 401, 402, 422 and 429 answers to a POST all echo the Idempotency-Key."""
    async with asgi(credits=1, rate_limit=100) as client:
        h = HEADERS | {"Idempotency-Key": "k-200"}
        assert (await post(client, headers=h)).headers["idempotency-key"] == "k-200"
        cases = [
            (await post(client, headers=HEADERS | {"Idempotency-Key": "k-402"}), 402),
            (await post(client, headers=HEADERS | {"Idempotency-Key": "k-422"}, option="x"), 422),
            (
                await post(
                    client,
                    1,
                    headers=HEADERS | {"Idempotency-Key": "k-400"},
                    option="FluxKontextFinetune",
                    prompt="p",
                ),
                400,
            ),
            (await post(client, headers={"Idempotency-Key": "k-401"}), 401),
        ]
        for response, status in cases:
            assert response.status_code == status
            assert (
                response.headers["idempotency-key"] == response.request.headers["idempotency-key"]
            )


async def test_idempotency_key_is_echoed_on_429(asgi: Callable[..., httpx.AsyncClient]) -> None:
    """A rate-limited POST still echoes its Idempotency-Key, so the client knows it may replay."""
    async with asgi(rate_limit=0.1) as client:
        await post(client)
        response = await post(client, headers=HEADERS | {"Idempotency-Key": "k-429"})
        assert response.status_code == 429 and response.headers["idempotency-key"] == "k-429"


async def test_get_does_not_echo_without_a_key(client: httpx.AsyncClient) -> None:
    """Answers to requests without Idempotency-Key carry no such header."""
    response = await post(client)
    assert "idempotency-key" not in response.headers


async def test_idempotent_replay_returns_first_answer_and_charges_once(
    client: httpx.AsyncClient,
) -> None:
    """A replay with the same key returns the first answer byte for byte, with one charge."""
    h = HEADERS | {"Idempotency-Key": "job-1:attempt-1"}
    parts = image_parts(3)
    first = await client.post("/finetune", headers=h, files=parts)
    second = await client.post("/finetune", headers=h, files=parts)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    assert second.headers["idempotent-replayed"] == "true"
    ledger = (await client.get("/_sandbox/ledger", headers=HEADERS)).json()
    assert ledger["credits_charged"] == 1 and ledger["trainings"] == 1 and ledger["posts"] == 2
    third = await client.post(
        "/finetune", headers=HEADERS | {"Idempotency-Key": "job-1:attempt-2"}, files=parts
    )
    assert data(third)["trigger_word"] != data(first)["trigger_word"]


async def test_concurrent_idempotent_replays_create_one_training(client: httpx.AsyncClient) -> None:
    """Eight simultaneous POSTs with one Idempotency-Key make one training and one charge."""
    h = HEADERS | {"Idempotency-Key": "concurrent"}
    parts = image_parts(3)
    answers = await asyncio.gather(
        *(client.post("/finetune", headers=h, files=parts) for _ in range(8))
    )
    assert {a.status_code for a in answers} == {200}
    assert len({data(a)["trigger_word"] for a in answers}) == 1
    ledger = (await client.get("/_sandbox/ledger", headers=HEADERS)).json()
    assert ledger["trainings"] == 1 and ledger["credits_charged"] == 1 and ledger["replays"] == 7


async def test_idempotency_key_reused_for_another_request_is_400(client: httpx.AsyncClient) -> None:
    """Reusing a key with different training inputs is refused, not silently replayed."""
    h = HEADERS | {"Idempotency-Key": "reused"}
    assert (await post(client, headers=h, lora_prefix="ONE")).status_code == 200
    response = await post(client, headers=h, lora_prefix="TWO")
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()["message"]


async def test_idempotency_expires_after_24_hours(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    """After 24 h the same key starts (and charges) a new training."""
    h = HEADERS | {"Idempotency-Key": "old"}
    parts = image_parts(2)
    first = data(await client.post("/finetune", headers=h, files=parts))
    clock.advance(24 * 3600 - 1)
    assert data(await client.post("/finetune", headers=h, files=parts))["id"] == first["id"]
    clock.advance(2)
    assert data(await client.post("/finetune", headers=h, files=parts))["id"] != first["id"]


async def test_errors_are_not_remembered_under_the_key(
    asgi: Callable[..., httpx.AsyncClient],
) -> None:
    """A 422 under a key is not replayed: fixing the request under the same key trains."""
    async with asgi() as client:
        h = HEADERS | {"Idempotency-Key": "fixme"}
        assert (await post(client, headers=h, option="nope")).status_code == 422
        assert (await post(client, headers=h)).status_code == 200


async def test_unknown_asset_is_400_with_message(client: httpx.AsyncClient) -> None:
    """GET of a trigger word or asset id nobody created is 400 {"message"} (documented), not 404."""
    for ident in ("NOPE_abcdef", "0123456789abcdef01234567"):
        response = await client.get(f"/finetune/{ident}", headers=HEADERS)
        assert response.status_code == 400
        assert set(response.json()) == {"message"}
        assert ident in response.json()["message"]


async def test_files_of_unfinished_training_are_404(client: httpx.AsyncClient) -> None:
    """Sample URLs do not exist before success, nor for made-up names."""
    asset = data(await post(client))
    base = f"/_sandbox/files/{asset['id']}"
    assert (await client.get(f"{base}/sample_0.png")).status_code == 404
    assert (await client.get(f"{base}/../../etc/passwd")).status_code == 404
    assert (await client.get("/_sandbox/files/nope/sample_0.png")).status_code == 404


def test_duration_formula() -> None:
    """The documented formula: S for up to 10 images on Auto, proportionally more beyond."""
    assert training.training_duration(5, 1, 0) == 5
    assert training.training_duration(5, 10, 0) == 5
    assert training.training_duration(5, 25, 0) == 12.5
    assert training.training_duration(5, 10, 3000) == 15
    assert training.training_duration(0, 100, 5000) == 0
