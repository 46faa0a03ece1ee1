"""The checks of a POST /finetune's fields, answered as the service would.

Field errors are 422 bodies built by hand in pydantic's own shape (``type``, ``loc``,
``msg``, ``input``, ``ctx``), because the fields are plain form strings in the route (so
the OpenAPI document keeps the published, pydantic v1 era, schema) while the answers must
read as if pydantic had checked enums and bounds. Kontext's rules (a prompt, images in
pairs) are the service's 400s.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from fastapi.exceptions import RequestValidationError

from runner.models import FINETUNE_TYPES, KONTEXT, OPTIONS, uses_finetune_type
from runner.sandbox.messages import ClientMessage

# Trigger words travel in URL paths and prompts: keep prefixes to a safe alphabet.
PREFIX_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_ITERATIONS = 100_000

Errors = list[dict[str, Any]]


def check(args: dict[str, Any]) -> None:
    """Raise the 422 for every bad field of ``args`` (the training's arguments, as the
    route builds them), then the 400 for a Kontext training that cannot be done."""
    option = args["option"]
    typed = uses_finetune_type(option)
    errors = [
        *_choice("option", option, OPTIONS),
        *(_choice("finetune_type", args["finetune_type"], FINETUNE_TYPES) if typed else []),
        *_iterations(args["num_iterations"]),
        *_prefix(args["lora_prefix"]),
        *([] if args["image_files"] else _image_urls(args["image_urls"])),
        *(_url(("body", "webhook_url"), args["webhook_url"]) if args["webhook_url"] else []),
    ]
    if errors:
        raise RequestValidationError(errors)
    if option == KONTEXT:
        _check_kontext(args["prompt"], args["image_count"])


def _error(
    loc: tuple[str | int, ...], type_: str, msg: str, value: Any, **ctx: Any
) -> dict[str, Any]:
    error: dict[str, Any] = {"type": type_, "loc": loc, "msg": msg, "input": value}
    if ctx:
        error["ctx"] = ctx
    return error


def _choice(field: str, value: str, allowed: Sequence[str]) -> Errors:
    if value in allowed:
        return []
    expected = ", ".join(f"'{a}'" for a in allowed[:-1]) + f" or '{allowed[-1]}'"
    msg = f"Input should be {expected}"
    return [_error(("body", field), "literal_error", msg, value, expected=expected)]


def _iterations(value: int) -> Errors:
    loc = ("body", "num_iterations")
    if value < 0:
        msg = "Input should be greater than or equal to 0"
        return [_error(loc, "greater_than_equal", msg, value, ge=0)]
    if value > MAX_ITERATIONS:
        msg = f"Input should be less than or equal to {MAX_ITERATIONS}"
        return [_error(loc, "less_than_equal", msg, value, le=MAX_ITERATIONS)]
    return []


def _prefix(value: str) -> Errors:
    if PREFIX_RE.match(value):
        return []
    msg = f"String should match pattern '{PREFIX_RE.pattern}'"
    loc = ("body", "lora_prefix")
    return [_error(loc, "string_pattern_mismatch", msg, value, pattern=PREFIX_RE.pattern)]


def _image_urls(urls: list[str]) -> Errors:
    """Without uploads: at least one URL, each an http(s) one."""
    errors: Errors = []
    if not urls:
        msg = "Field required: upload image_files or give image_urls"
        errors.append(_error(("body", "image_files"), "missing", msg, None))
    for index, url in enumerate(urls):
        errors.extend(_url(("body", "image_urls", index), url))
    return errors


def _url(loc: tuple[str | int, ...], url: str) -> Errors:
    if _is_http_url(url):
        return []
    msg = "URL scheme should be 'http' or 'https'"
    return [_error(loc, "url_scheme", msg, url, expected_schemes="'http' or 'https'")]


def _is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url)
        return parts.scheme in ("http", "https") and bool(parts.hostname) and parts.port != 0
    except ValueError:
        return False


def _check_kontext(prompt: str | None, count: int) -> None:
    if not prompt or not prompt.strip():
        raise ClientMessage(400, "FluxKontextFinetune needs a prompt describing the edit")
    if count < 2:
        raise ClientMessage(
            400, "FluxKontextFinetune needs at least one pair of images (start, end)"
        )
    if count % 2:
        raise ClientMessage(
            400, f"FluxKontextFinetune takes images in pairs (start, end); got {count} images"
        )
