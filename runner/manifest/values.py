"""Rules for single manifest values that JSON Schema cannot state: durations, the endpoint
(plain http only to this machine), image URLs, init's placeholder prompt, and which values
are good enough to build a Job from (the schema reports the others)."""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import SplitResult, urlsplit

from runner.models import FINETUNE_TYPES, OPTIONS

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
MIN_MAX_SIDE = 256  # upload.max_side's minimum in the schema
# ``runner init`` writes a Kontext prompt starting with this: an error until edited.
PLACEHOLDER_MARK = "TODO:"
# What ``runner init`` wrote before it marked the placeholder: still a placeholder.
OLD_PLACEHOLDER = "describe the edit that turns each start image into its end image"
PLACEHOLDER_MESSAGE = "placeholder prompt from runner init: write the edit these pairs teach (e.g. 'turn the car red')"


def is_placeholder_prompt(prompt: str) -> bool:
    text = prompt.strip()
    return text.upper().startswith(PLACEHOLDER_MARK) or text == OLD_PLACEHOLDER


def parse_duration(value: object) -> float | None:
    """``10s``, ``500ms``, ``5m``, ``2h``, ``1h30m`` or a number of seconds -> seconds."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if value >= 0 else None
    if not isinstance(value, str):
        return None
    text = value.strip()
    parts = _DURATION_PART.findall(text)
    if not parts or re.sub(r"\s+", "", _DURATION_PART.sub("", text)):
        return None
    return sum(float(n) * _DURATION_UNITS[unit] for n, unit in parts)


PLAIN_HTTP = "http:// is only allowed to this machine (127.0.0.1, localhost, [::1]); use https://"


def is_loopback(host: str) -> bool:
    """A literal loopback address (``127.0.0.0/8``, ``::1``, ``::ffff:127.0.0.1``), or the
    name ``localhost`` itself. Not ``*.localhost`` nor ``localhost.``: those go to the
    system resolver like any other name, and it may send them anywhere."""
    host = host.lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is 127.0.0.1
    return address.is_loopback or (mapped is not None and mapped.is_loopback)


def endpoint_problem(endpoint: str) -> str | None:
    """``sandbox``, any https:// URL, or http:// to loopback only (a key must not go in clear).

    The one statement of the rule: validate reports it at the key, and the API layer
    (``runner.api.endpoint``) applies it to ``--endpoint`` and ``RUNNER_ENDPOINT`` too.
    """
    if endpoint == "sandbox":
        return None
    parts, problem = _split(endpoint)
    if parts is None:
        return problem
    host = parts.hostname
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not host:
        return 'must be "sandbox", an https:// URL, or an http:// URL to this machine'
    if scheme == "http" and not is_loopback(host):
        return PLAIN_HTTP
    return None


def url_problem(url: str) -> str | None:
    """None for a well-formed http(s) URL with a host."""
    parts, problem = _split(url)
    if parts is None:
        return problem
    if parts.scheme.lower() not in ("http", "https"):
        return "must be an http:// or https:// URL"
    if not parts.hostname:
        return "URL has no host"
    return None


def _split(url: str) -> tuple[SplitResult | None, str | None]:
    """The URL's parts, or why it has none (a bad port or IPv6 literal raises only when read)."""
    try:
        parts = urlsplit(url)
        _ = parts.hostname, parts.port
    except ValueError as exc:
        return None, f"invalid URL ({exc})"
    return parts, None


def clip(message: str, limit: int = 400) -> str:
    """Keep a message that quotes a huge value (a 4 MB path) readable: its head and tail."""
    if len(message) <= limit:
        return message
    cut = len(message) - (limit - 100)
    return f"{message[: limit - 200]}...[{cut} characters]...{message[-100:]}"


def valid_upload(upload: object) -> dict[str, Any]:
    """The ``upload`` keys whose value is right (the schema reports the others); an explicit
    ``max_side: null`` is kept, so a job can turn off a default's downscaling."""
    if not isinstance(upload, dict):
        return {}
    out: dict[str, Any] = {}
    side = upload.get("max_side")
    if "max_side" in upload and (side is None or (is_int(side) and int(side) >= MIN_MAX_SIDE)):
        out["max_side"] = side
    quality = upload.get("jpeg_quality")
    if isinstance(quality, int) and not isinstance(quality, bool) and 1 <= quality <= 100:
        out["jpeg_quality"] = quality
    return out


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def valid_field(key: str, value: object) -> bool:
    """Is an inherited field's value of the right kind to build a Job (schema-checked)?"""
    if key == "option":
        return value in OPTIONS
    if key == "finetune_type":
        return value in FINETUNE_TYPES
    if key == "num_iterations":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if key == "lora_prefix":
        return isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_]{0,31}", value) is not None
    if key in ("prompt", "webhook_url"):
        return isinstance(value, str) and bool(value)
    return False
