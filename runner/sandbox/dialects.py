"""The shapes the sandbox answers in (``--dialect``; DESIGN section 7).

The live service's POST and status answers are not documented (DESIGN section 1), so the
sandbox can speak each plausible shape and ``runner`` is tested against all of them. This
module owns those shapes; the app only asks it for a body.

| dialect    | POST 200                                   | status while training                     |
|------------|--------------------------------------------|-------------------------------------------|
| envelope   | envelope with ``data.trigger_word``        | envelope (``status``)                     |
| args       | envelope, trigger word only in             | ``{"data": {"processing_status",          |
|            | ``data.args.trigger_word``                 | "progress_percentage"}}``                 |
| bare       | the trigger word as a JSON string          | ``{"data": []}``                          |
| opaque     | envelope with the asset id and no trigger  | as ``args`` (asked by asset id)           |
|            | word anywhere                              |                                           |

When done, every dialect but ``envelope`` answers the documented ``{"data": [{"URL": ...}]}``
and a failure ``{"data": {"processing_status": "fail", "progress_percentage": 100,
"message": ...}}``. Every envelope keeps ``app_name: sandbox``.
"""

from __future__ import annotations

from typing import Any

from runner.sandbox import training
from runner.sandbox.store import Asset

# Put in place of any string of an opaque answer that would give the trigger word away; it
# has no "_", so it can never start with "<lora_prefix>_" itself.
REDACTED = "redacted"


def post_answer(dialect: str, asset: Asset, base_url: str) -> Any:
    """The JSON value of the 200 to the POST that created ``asset``."""
    if dialect == "bare":
        return asset.trigger_word
    body = training.envelope(asset, base_url)
    if dialect == "envelope":
        return body
    data = body["data"]
    del data["trigger_word"]
    if dialect == "args":
        return body
    # opaque: what the published example shows (an asset, its id), and nothing that a
    # client could read the trigger word from, not even by searching every string.
    data["args"] = {k: v for k, v in data["args"].items() if k != "trigger_word"}
    return _scrub(body, str(asset.args.get("lora_prefix", "")) + "_")


def status_answer(dialect: str, asset: Asset, base_url: str, now: float) -> Any:
    """The JSON value of the 200 to a status request for ``asset`` (already advanced)."""
    if dialect == "envelope":
        return training.envelope(asset, base_url)
    if asset.status == training.SUCCESS:
        results, _thumbnails = training.output_urls(asset, base_url)
        return {"data": [{"URL": url} for url in results]}
    if asset.status == training.FAIL:
        return {
            "data": {
                "processing_status": training.FAIL,
                "progress_percentage": 100,
                "message": _fail_message(asset),
            }
        }
    if dialect == "bare":
        return {"data": []}
    return {
        "data": {
            "processing_status": asset.status,
            "progress_percentage": progress(asset, now),
        }
    }


def progress(asset: Asset, now: float) -> int:
    """Whole percent of the training's time that has passed, 0 to 99 while it runs."""
    if asset.duration <= 0:
        return 99
    return max(0, min(99, int(100 * (now - asset.created_at) / asset.duration)))


def _fail_message(asset: Asset) -> str:
    for entry in reversed(asset.history):
        if entry.get("status") == training.FAIL and entry.get("message"):
            return str(entry["message"])
    return training.FAIL_MESSAGE


def _scrub(value: Any, needle: str) -> Any:
    """``value`` with every string containing ``needle`` (any case) replaced by REDACTED.

    Needed beyond dropping ``trigger_word``: user input (file names, a prompt) or the
    sandbox's own words (``customer_id`` is ``sandbox_...``, statuses are ``queue_bullet``)
    may contain ``<lora_prefix>_`` for some prefixes. Keys are the documented field names
    and are left alone.
    """
    if isinstance(value, str):
        return REDACTED if needle.lower() in value.lower() else value
    if isinstance(value, dict):
        return {k: _scrub(v, needle) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, needle) for v in value]
    return value
