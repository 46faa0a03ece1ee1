"""The sandbox's OpenAPI document matches the published Vimmerse one for the finetune routes."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from runner.sandbox.app import create_app
from runner.sandbox.config import SandboxConfig

# A verbatim copy of the published document (shared/reference/), kept beside the tests so
# the comparison runs everywhere.
REFERENCE = Path(__file__).resolve().parent / "data" / "vimmerse-finetune-openapi.json"


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(REFERENCE.read_text())
    return doc


@pytest.fixture
def document(make_config: Callable[..., SandboxConfig]) -> dict[str, Any]:
    app = create_app(make_config())
    try:
        doc: dict[str, Any] = app.openapi()
        return doc
    finally:
        app.state.sandbox.close()


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    ref = schema.get("$ref")
    if ref:
        resolved: dict[str, Any] = doc["components"]["schemas"][ref.rsplit("/", 1)[-1]]
        return resolved
    return schema


def test_request_body_fields_match(reference: dict[str, Any], document: dict[str, Any]) -> None:
    """POST /finetune's multipart body has the same fields, types, titles, descriptions, defaults."""
    ours = document["paths"]["/finetune"]["post"]["requestBody"]
    theirs = reference["paths"]["/finetune"]["post"]["requestBody"]
    assert list(ours["content"]) == list(theirs["content"]) == ["multipart/form-data"]
    ours_schema = _resolve(document, ours["content"]["multipart/form-data"]["schema"])
    theirs_schema = _resolve(reference, theirs["content"]["multipart/form-data"]["schema"])
    assert list(ours_schema["properties"]) == list(theirs_schema["properties"])
    for name, expected in theirs_schema["properties"].items():
        assert ours_schema["properties"][name] == expected, name
    assert ours_schema.get("required", []) == theirs_schema.get("required", [])


@pytest.mark.parametrize(
    ("path", "method"), [("/finetune", "post"), ("/finetune/{trigger_word}", "get")]
)
def test_operations_match(
    reference: dict[str, Any], document: dict[str, Any], path: str, method: str
) -> None:
    """Both finetune routes have the same operation ids, summaries, tags, security and answers."""
    ours = document["paths"][path][method]
    theirs = reference["paths"][path][method]
    for key in ("operationId", "summary", "description", "tags", "security"):
        assert ours[key] == theirs[key], key
    assert sorted(ours["responses"]) == sorted(theirs["responses"])
    for code, expected in theirs["responses"].items():
        got = ours["responses"][code]
        assert got["description"] == expected["description"], code
        for media, content in expected["content"].items():
            schema = _resolve(document, got["content"][media]["schema"])
            assert schema == _resolve(reference, content["schema"]), code
            assert got["content"][media].get("example") == content.get("example"), code


def test_shared_components_match(reference: dict[str, Any], document: dict[str, Any]) -> None:
    """FailureResponseModel, the security scheme and the 422 shape's required fields match."""
    ours, theirs = document["components"], reference["components"]
    assert ours["schemas"]["FailureResponseModel"] == theirs["schemas"]["FailureResponseModel"]
    assert ours["securitySchemes"] == theirs["securitySchemes"]
    assert ours["schemas"]["HTTPValidationError"] == theirs["schemas"]["HTTPValidationError"]
    assert (
        ours["schemas"]["ValidationError"]["required"]
        == theirs["schemas"]["ValidationError"]["required"]
    )


def test_sandbox_routes_stay_out_of_the_document(document: dict[str, Any]) -> None:
    """Only the documented finetune routes appear; ledger and files are hidden."""
    assert set(document["paths"]) == {"/finetune", "/finetune/{trigger_word}"}
