"""Simulated training: how long it takes, which status it shows when, and its outputs.

A training is never "run". Its status is a pure function of the clock (see ``phase_at``)
and is *materialized* into SQLite whenever someone looks (a GET) or the background ticker
passes by, so the sandbox needs no worker, survives restarts mid-training, and tests can
drive it with a fake clock.

Duration, with S = ``--train-seconds``, n = number of images (files, else URLs) and
i = ``num_iterations`` (0 = Auto, counted as 1000)::

    duration = S * max(1, n / 10) * (i or 1000) / 1000

so up to 10 images on Auto take exactly S seconds, 20 images take 2S, 2000 iterations 2S.
The first 10% of that is ``queue_bullet``, the rest ``processing_bullet``, then ``success``
(or ``fail`` when the lora_prefix contains ``FAIL``, so tests can get failures on demand).

Outputs are real PNGs rendered on first download and cached on disk: ``sample_0.png`` is a
contact sheet of the training images with the trigger word written on it, ``sample_1.png``
a captioned "sample" made from the first image, ``thumb_N.png`` their thumbnails.
"""

from __future__ import annotations

import io
import math
import os
import secrets
import string
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from runner.sandbox import files
from runner.sandbox.store import Asset, Store

QUEUED = "queue_bullet"
PROCESSING = "processing_bullet"
SUCCESS = "success"
FAIL = "fail"
FINAL = (SUCCESS, FAIL)

AUTO_ITERATIONS = 1000
IMAGES_PER_UNIT = 10
QUEUE_FRACTION = 0.1
FAIL_MARKER = "FAIL"
FAIL_MESSAGE = "the lora_prefix asks the sandbox to fail"
OUTPUT_NAMES = ("sample_0.png", "sample_1.png", "thumb_0.png", "thumb_1.png")
MIME_TYPE = "image/png"
APP_NAME = "sandbox"
# What rendering a sample may read of one training image: the formats the sandbox's own
# outputs and uploads use (never a format that runs a helper program, such as EPS), at most
# this many bytes and pixels (checked before decoding: 24 MP is 72 MB as RGB).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")
MAX_TILE_BYTES = 64 * 1024 * 1024
MAX_TILE_PIXELS = 24_000_000

_SUFFIX_ALPHABET = string.ascii_lowercase + string.digits


def training_duration(train_seconds: float, n_images: int, num_iterations: int) -> float:
    """The documented formula (module docstring); 0 when ``--train-seconds 0``."""
    units = max(1.0, n_images / IMAGES_PER_UNIT)
    iterations = num_iterations or AUTO_ITERATIONS
    return train_seconds * units * iterations / AUTO_ITERATIONS


def outcome_for(lora_prefix: str) -> str:
    return FAIL if FAIL_MARKER in lora_prefix else SUCCESS


def new_trigger_word(lora_prefix: str) -> str:
    """Prefix plus a short random suffix; uniqueness is enforced by the database."""
    return lora_prefix + "_" + "".join(secrets.choice(_SUFFIX_ALPHABET) for _ in range(6))


def new_asset_id() -> str:
    return secrets.token_hex(12)


def timestamp(ts: float) -> str:
    """The service's format: ``2025-05-06 16:35:59.840508+00:00``."""
    return datetime.fromtimestamp(ts, tz=UTC).isoformat(sep=" ", timespec="microseconds")


def transitions(asset: Asset) -> list[tuple[str, float]]:
    """Every status the training goes through, with the moment it enters it."""
    return [
        (QUEUED, asset.created_at),
        (PROCESSING, asset.created_at + QUEUE_FRACTION * asset.duration),
        (asset.outcome, asset.final_at),
    ]


def phase_at(asset: Asset, now: float) -> str:
    current = QUEUED
    for status, at in transitions(asset):
        if now >= at:
            current = status
    return current


def history_entry(status: str, at: float, message: str | None = None) -> dict[str, Any]:
    entry: dict[str, Any] = {"status": status, "created_at": timestamp(at)}
    if message:
        entry["message"] = message
    return entry


def advance(store: Store, asset: Asset, now: float) -> Asset:
    """Write the statuses the clock has passed into the store; returns the fresh row.

    The store's compare-and-set means concurrent callers cannot both record the final
    transition, so the webhook is scheduled exactly once.
    """
    if asset.status in FINAL:
        return asset
    target = phase_at(asset, now)
    if target == asset.status:
        return asset
    history = list(asset.history)
    passed = False
    updated_at = asset.updated_at
    for status, at in transitions(asset):
        if status == asset.status:
            passed = True
            continue
        if passed and at <= now:
            message = FAIL_MESSAGE if status == FAIL else None
            history.append(history_entry(status, at, message))
            updated_at = at
            if status == target:
                break
    webhook_state = None
    if target in FINAL and asset.webhook_url:
        webhook_state = "pending"
    store.advance_asset(
        asset.id,
        from_status=asset.status,
        status=target,
        updated_at=updated_at,
        history=history,
        webhook_state=webhook_state,
    )
    fresh = store.get_asset_by_id(asset.id)
    assert fresh is not None
    return fresh


def output_urls(asset: Asset, base_url: str) -> tuple[list[str], list[str]]:
    if asset.status != SUCCESS:
        return [], []
    base = f"{base_url.rstrip('/')}/_sandbox/files/{asset.id}"
    return [f"{base}/sample_0.png", f"{base}/sample_1.png"], [
        f"{base}/thumb_0.png",
        f"{base}/thumb_1.png",
    ]


def customer_id(account: str) -> str:
    return "sandbox_" + account[:16]


def envelope(asset: Asset, base_url: str) -> dict[str, Any]:
    """The documented ``{"data": {...}}`` asset, plus ``trigger_word`` at the top level."""
    results, thumbnails = output_urls(asset, base_url)
    return {
        "data": {
            "id": asset.id,
            "customer_id": customer_id(asset.account),
            "primary_user_id": customer_id(asset.account),
            "args": asset.args,
            "results": results,
            "thumbnails": thumbnails,
            "status": asset.status,
            "mime_type": MIME_TYPE,
            "app_name": APP_NAME,
            "created_at": timestamp(asset.created_at),
            "updated_at": timestamp(asset.updated_at),
            "history": asset.history,
            "trigger_word": asset.trigger_word,
        }
    }


# -- output rendering -----------------------------------------------------------------


def render_output(asset: Asset, name: str, state_dir: Path) -> Path:
    """Render (once) and return the PNG for ``name``; safe against concurrent callers
    because each writes a private temp file and renames it into place."""
    if name not in OUTPUT_NAMES:
        raise KeyError(name)
    out_dir = state_dir / "outputs" / asset.id
    path = out_dir / name
    if path.exists():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    image = _render(asset, name, state_dir)
    tmp = out_dir / f".{name}.{secrets.token_hex(4)}.tmp"
    image.save(tmp, format="PNG", optimize=False)
    os.replace(tmp, path)
    return path


def render_png(asset: Asset, name: str, state_dir: Path) -> bytes:
    """The PNG for ``name``, rendered in memory: nothing is written (``runner report``)."""
    if name not in OUTPUT_NAMES:
        raise KeyError(name)
    out = io.BytesIO()
    _render(asset, name, state_dir).save(out, format="PNG", optimize=False)
    return out.getvalue()


def _render(asset: Asset, name: str, state_dir: Path) -> Any:
    from PIL import Image

    image = _sample(asset, state_dir, int(name[-5]))
    if name.startswith("thumb_"):
        image.thumbnail((256, 256), Image.Resampling.LANCZOS)
    return image


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except Exception:  # Pillow without FreeType: the bitmap font still draws text
        return ImageFont.load_default()


def _tile(state_dir: Path, rel: str, cell: int) -> Any:
    """One training image as a square tile. Only the sandbox's own upload folder is read,
    as regular files (``files.open_beneath``), only in the formats it accepts, and an image
    with more than ``MAX_TILE_PIXELS`` is refused before it is decoded."""
    from PIL import Image, ImageOps

    parts = files.relative_parts(rel)
    if parts[0] != "uploads":
        raise files.Refused("not an upload")
    with files.open_beneath(state_dir, parts, MAX_TILE_BYTES) as fh, Image.open(
        fh, formats=IMAGE_FORMATS
    ) as im:
        width, height = im.size
        if width * height > MAX_TILE_PIXELS:
            raise files.Refused(f"too large ({width}x{height} pixels)")
        im.draft("RGB", (cell * 2, cell * 2))
        return ImageOps.fit(im.convert("RGB"), (cell, cell), Image.Resampling.BILINEAR)


def _tiles(asset: Asset, state_dir: Path, limit: int, cell: int) -> list[Any]:
    from PIL import Image, ImageDraw

    tiles = []
    for rel in asset.images[:limit]:
        try:
            tile = _tile(state_dir, rel, cell)
        except Exception:  # unreadable, refused or too large: a grey tile says so
            tile = Image.new("RGB", (cell, cell), (90, 90, 90))
        tiles.append(tile)
    urls = asset.args.get("image_urls") or []
    if not tiles:  # trained from URLs, which the sandbox never fetches: placeholders
        for i, url in enumerate(urls[:limit]):
            tile = Image.new("RGB", (cell, cell), (60 + 20 * (i % 8), 80, 120))
            draw = ImageDraw.Draw(tile)
            draw.text((8, 8), f"url {i}", fill="white", font=_font(16))
            draw.text((8, cell - 24), str(url)[-24:], fill="white", font=_font(11))
            tiles.append(tile)
    return tiles or [Image.new("RGB", (cell, cell), (90, 90, 90))]


def _sample(asset: Asset, state_dir: Path, index: int) -> Any:
    from PIL import Image, ImageDraw, ImageOps

    banner, footer = 56, 24
    if index == 0:
        cell = 160
        tiles = _tiles(asset, state_dir, 16, cell)
        cols = math.ceil(math.sqrt(len(tiles)))
        rows = math.ceil(len(tiles) / cols)
        sheet = Image.new(
            "RGB", (max(cols * cell, 480), rows * cell + banner + footer), (24, 24, 32)
        )
        for i, tile in enumerate(tiles):
            sheet.paste(tile, ((i % cols) * cell, banner + (i // cols) * cell))
    else:
        tile = _tiles(asset, state_dir, 1, 480)[0]
        tile = ImageOps.posterize(ImageOps.autocontrast(tile), 3)
        sheet = Image.new("RGB", (480, 480 + banner + footer), (24, 24, 32))
        sheet.paste(tile, (0, banner))
    draw = ImageDraw.Draw(sheet)
    draw.text((12, 10), asset.trigger_word, fill=(255, 214, 10), font=_font(28))
    draw.text(
        (12, sheet.height - footer + 5),
        f"runner sandbox · {asset.args.get('option', '')} · not a real LoRA",
        fill="white",
        font=_font(12),
    )
    return sheet
