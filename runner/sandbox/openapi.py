"""The OpenAPI document: the published Vimmerse words, and the patching of FastAPI's output.

The finetune routes mirror the published document (titles, defaults, answers are copied
from ``vimmerse-finetune-openapi.json``, checked by ``tests/sandbox/test_sandbox_openapi.py``),
so that a schema-driven client or fuzzer sees the service's contract; the routes take their
words from here and stay readable.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.security import APIKeyHeader
from pydantic import BaseModel

TITLE = "runner sandbox: Vimmerse finetune API stand-in"
DESCRIPTION = (
    "A local stand-in for the Vimmerse finetune API, for development, tests and"
    " demos. Every asset says `app_name: sandbox`. Nothing here trains a model."
)
VERSION = "1.0.0"

_GAP47 = " " * 47
_GAP36 = " " * 36
IMAGE_FILES_DESCRIPTION = (
    "Images to be uploaded for training. For FluxFintune and FluxProFintune, providing a few"
    " images of the desired object/person/style will usually suffice." + _GAP47 + "In case of"
    " FluxKontextFinetune, images should be provided in pairs." + _GAP47 + "For each pair, the"
    " first image will be used as 'start' and the second image as 'end' for the training."
    " Where the 'end' image contains the desired" + _GAP47 + "outcome of applying the edit"
    " described in 'prompt' to the 'start' image."
)
IMAGE_URLS_DESCRIPTION = (
    "Alternatively you can provide URLs of the training image files. If you upload image"
    " files, this field will be ignored."
)
NUM_ITERATIONS_TITLE = (
    "Number of training iterations. Defaults to 0 for Auto. In Auto mode the actual values for "
)
OPTION_DESCRIPTION = (
    "Training option to finetune based on your images. Available values are"
    " `FluxFinetune, FluxProFinetune, FluxKontextFinetune`."
)
FINETUNE_TYPE_DESCRIPTION = (
    "Override finetune type. Finetune type can be `Auto`, `Character`, `Product`, or `Style`."
    " Choose `Auto` for automatic selection (default)." + _GAP36 + "This field is ignored when"
    " option is set to FluxKontextFinetune"
)
LORA_PREFIX_DESCRIPTION = "Prefix for the name of LoRA. Try to choose a unique string."
PROMPT_DESCRIPTION = (
    "Prompt describing the relationship between the start and end images in given image pairs"
    " when FluxKontextFinetune is used. It is ignored with other options." + _GAP47 + "For"
    " instance, if in the 'start' image is a blue car but the 'end' image is a red car the"
    " prompt can be 'turn the car red.'"
)
POST_EXAMPLE = {
    "data": {
        "id": "ASSET_ID",
        "customer_id": "CUSTOMER_ID",
        "primary_user_id": "CUSTOMER_ID",
        "args": {},
        "results": ["result_url1", "result_url2"],
        "thumbnails": [],
        "status": "success",
        "mime_type": "MIMETYPE",
        "app_name": "FUNCTION_NAME",
        "created_at": "2025-05-06 16:35:59.840508+00:00",
        "updated_at": "2025-05-06 16:35:59.840508+00:00",
        "history": [],
    }
}
GET_EXAMPLE = {
    "data": [{"URL": "https://dev-media.vimmerse.net/customer_id/ai_images/53c6eg9/output.png"}]
}

api_key_header = APIKeyHeader(name="X-Api-Key", auto_error=False)


class FailureResponseModel(BaseModel):
    """Failure Response Model"""

    message: str = "ERROR CODE"


_FAILURES: dict[int | str, dict[str, Any]] = {
    400: {"model": FailureResponseModel, "description": "Bad Request"},
    402: {"model": FailureResponseModel, "description": "Insufficient Credit"},
}
# Answers the published document leaves out but the sandbox really gives (and the service
# documents in prose, DESIGN section 1), so that a schema-driven client or fuzzer sees every
# status it can get. 403 is never sent by the sandbox (any accepted key may do everything)
# but is declared because the service documents it.
_RETRY_AFTER = {
    "Retry-After": {
        "description": "Whole seconds to wait before the next request with this key.",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}
_UNDOCUMENTED: dict[int | str, dict[str, Any]] = {
    401: {"model": FailureResponseModel, "description": "Missing or invalid X-Api-Key"},
    403: {"model": FailureResponseModel, "description": "Forbidden"},
    429: {
        "model": FailureResponseModel,
        "description": "Too Many Requests: above the key's rate limit",
        "headers": _RETRY_AFTER,
    },
}
_TOO_LARGE: dict[int | str, dict[str, Any]] = {
    413: {"model": FailureResponseModel, "description": "Upload larger than the limit"},
}


def _route(
    summary: str,
    description: str,
    answer: str,
    example: dict[str, Any],
    extra: dict[int | str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The documentation arguments of one finetune route's decorator."""
    ok = {"description": answer, "content": {"application/json": {"example": example}}}
    return {
        "response_model": dict[str, Any],
        "tags": ["Finetune"],
        "summary": summary,
        "description": description,
        "responses": {200: ok, **_FAILURES, **_UNDOCUMENTED, **(extra or {})},
    }


CREATE_ROUTE = _route(
    "Create Finetune",
    "This endpoint will start the training of a LoRA model for Flux Pro and returns"
    " its associated unique trigger word.",
    "Trigger word.",
    POST_EXAMPLE,
    _TOO_LARGE,
)
STATUS_ROUTE = _route(
    "Finetune Flux Pro/Dev",
    "This endpoint will report the status of training LoRA models for Flux Pro. If"
    " completed, it will also return sample outputs for the LoRA.",
    "Modified image url.",
    GET_EXAMPLE,
)


def document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, with Optional fields written the way the published (pydantic
    v1 era) document writes them: plain ``type`` and no ``default: null``."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    body = schema["components"]["schemas"].get("Body_finetune_flux_finetune_post", {})
    for prop in body.get("properties", {}).values():
        variants = prop.get("anyOf")
        if variants and {"type": "null"} in variants and len(variants) == 2:
            prop.pop("anyOf")
            other = next(v for v in variants if v != {"type": "null"})
            prop.update(other)
            if prop.get("default", 0) is None:
                prop.pop("default")
        items = prop.get("items", {})
        if items.get("contentMediaType") == "application/octet-stream":
            prop["items"] = {"type": "string", "format": "binary"}
    app.openapi_schema = schema
    return schema
