"""The JSON Schemas themselves and the readable, positioned messages made from their errors."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator

from runner.manifest.loader import loads
from runner.manifest.schema import validate
from runner.models import FINETUNE_TYPES, OPTIONS
from runner.shipped_schemas import SCHEMA_NAMES, load_schema


def _diags(text: str) -> list[tuple[int, int, str, str]]:
    doc = loads(text)
    return [(d.line, d.col, d.path, d.message) for d in validate(doc.data, doc, "m.yaml")]


def _walk_properties(schema: Any, where: str = "") -> list[tuple[str, Any]]:
    found: list[tuple[str, Any]] = []
    if isinstance(schema, dict):
        for name, sub in schema.get("properties", {}).items():
            found.append((f"{where}.{name}", sub))
        for key, value in schema.items():
            found += _walk_properties(value, f"{where}/{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            found += _walk_properties(value, f"{where}[{i}]")
    return found


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schemas_are_valid_draft_2020_12(name: str) -> None:
    """Each shipped schema is itself a valid draft 2020-12 schema."""
    schema = load_schema(name)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_property_has_a_description(name: str) -> None:
    """Editors show descriptions, so every property in every schema has one."""
    missing = [where for where, sub in _walk_properties(load_schema(name)) if isinstance(sub, dict) and not sub.get("description")]
    assert missing == []


def test_manifest_schema_is_strict_everywhere() -> None:
    """Every object in the manifest schema forbids unknown keys."""
    loose: list[str] = []

    def walk(node: Any, where: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and node.get("additionalProperties") is not False:
                loose.append(where)
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}[{i}]")

    walk(load_schema("manifest"), "")
    assert loose == []


def test_enums_match_the_models() -> None:
    """option and finetune_type enums are exactly models.OPTIONS / FINETUNE_TYPES."""
    job = load_schema("manifest")["$defs"]["job"]["properties"]
    assert tuple(job["option"]["enum"]) == OPTIONS
    assert tuple(job["finetune_type"]["enum"]) == FINETUNE_TYPES


def test_unknown_key_suggests_closest() -> None:
    """An unknown key is placed at the key itself with a difflib suggestion."""
    diags = _diags("version: 1\njobs:\n  - name: a\n    image_urls: [https://x.example/a.jpg]\n    lora_prefx: A\n")
    assert diags == [(5, 5, "jobs[0].lora_prefx", "unknown key 'lora_prefx'; did you mean 'lora_prefix'?")]


def test_wrong_enum_lists_choices() -> None:
    """A bad option lists the valid ones and suggests the closest."""
    [(line, col, path, message)] = _diags(
        "version: 1\njobs:\n  - name: a\n    option: FluxFinetun\n    image_urls: [https://x.example/a]\n"
    )
    assert (line, col, path) == (4, 13, "jobs[0].option")
    assert "FluxKontextFinetune" in message and "did you mean 'FluxFinetune'" in message


def test_missing_required_and_version_const() -> None:
    """A missing ``jobs`` and a wrong ``version`` are both reported."""
    messages = {m for *_, m in _diags("version: 2\n")}
    assert "missing required key 'jobs'" in messages
    assert "must be 1, got 2" in messages


def test_type_error_names_expected_and_found() -> None:
    """A wrong type says what was expected and what was found."""
    [(_, _, path, message)] = _diags("version: 1\napi: {burst: many}\njobs: [{name: a, image_urls: ['https://x.example/a']}]\n")
    assert path == "api.burst"
    assert message == "expected an integer, got a string"


def test_pairs_object_branch_is_explained() -> None:
    """For ``pairs`` given as a mapping, the message comes from the mapping branch."""
    diags = _diags(
        "version: 1\njobs:\n  - name: k\n    option: FluxKontextFinetune\n    prompt: p\n"
        "    pairs: {start_dir: a}\n"
    )
    assert [(p, m) for _, _, p, m in diags] == [("jobs[0].pairs", "missing required key 'end_dir'")]


def test_pairs_list_item_missing_end() -> None:
    """A pair without ``end`` is reported at that pair with its index."""
    diags = _diags(
        "version: 1\njobs:\n  - name: k\n    option: FluxKontextFinetune\n    prompt: p\n"
        "    pairs:\n      - {start: a.jpg, end: b.jpg}\n      - {start: c.jpg}\n"
    )
    assert [(ln, p, m) for ln, _, p, m in diags] == [(8, "jobs[0].pairs[1]", "missing required key 'end'")]


def test_kontext_rules_in_schema() -> None:
    """A Kontext job without pairs and prompt, with images, gets three precise errors."""
    diags = _diags("version: 1\njobs:\n  - name: k\n    option: FluxKontextFinetune\n    images: x\n")
    messages = sorted(m for *_, m in diags)
    assert messages == [
        "missing required key 'pairs' (required when option is FluxKontextFinetune)",
        "missing required key 'prompt' (required when option is FluxKontextFinetune and defaults has no prompt)",
        "not allowed for FluxKontextFinetune jobs; use pairs",
    ]


def test_default_prompt_satisfies_kontext() -> None:
    """With ``defaults.prompt`` a Kontext job needs no prompt of its own."""
    diags = _diags(
        "version: 1\ndefaults: {prompt: p}\njobs:\n  - name: k\n    option: FluxKontextFinetune\n"
        "    pairs: [{start: a.jpg, end: b.jpg}]\n"
    )
    assert diags == []


def test_pairs_forbidden_for_explicit_non_kontext() -> None:
    """``pairs`` on a job whose own option is not Kontext is refused by the schema."""
    diags = _diags(
        "version: 1\njobs:\n  - name: a\n    option: FluxFinetune\n    images: x\n"
        "    pairs: [{start: a.jpg, end: b.jpg}]\n"
    )
    assert [(p, m) for _, _, p, m in diags] == [("jobs[0].pairs", "pairs are only for FluxKontextFinetune jobs; use images")]


def test_both_sources_refused() -> None:
    """images and image_urls together are one error on the job."""
    diags = _diags("version: 1\njobs:\n  - name: a\n    images: x\n    image_urls: ['https://x.example/a']\n")
    assert [(p, m) for _, _, p, m in diags] == [("jobs[0]", "give images or image_urls, not both")]


def test_bad_name_pattern_has_a_hint() -> None:
    """A bad job name says which characters are allowed."""
    [(_, _, path, message)] = _diags("version: 1\njobs: [{name: Bad Name, image_urls: ['https://x.example/a']}]\n")
    assert path == "jobs[0].name" and "lowercase letters" in message


def test_duration_error() -> None:
    """A malformed duration gets one readable message."""
    [(_, _, path, message)] = _diags("version: 1\napi: {poll_interval: soon}\njobs: [{name: a, image_urls: ['https://x.example/a']}]\n")
    assert path == "api.poll_interval" and message.startswith("must be a duration")


def test_non_http_url() -> None:
    """A non-http(s) image URL is refused at its index."""
    [(_, _, path, message)] = _diags("version: 1\njobs: [{name: a, image_urls: ['https://x.example/a', 'file:///etc/passwd']}]\n")
    assert path == "jobs[0].image_urls[1]" and "http" in message


def test_root_not_a_mapping() -> None:
    """A document that is a list is one clear error at the top."""
    assert _diags("- a\n- b\n") == [(1, 1, "", "expected a mapping, got a list")]


def test_lockfile_schema_accepts_design_example() -> None:
    """The lockfile example from DESIGN section 4 (plus attempt/serial) validates."""
    lock = {
        "version": 1,
        "serial": 3,
        "jobs": {
            "red-sneaker": {
                "fingerprint": "sha256:" + "a" * 64,
                "status": "succeeded",
                "attempt": 1,
                "idempotency_key": "k",
                "asset_id": "6650f0c1",
                "trigger_word": "SNKR_k2x9",
                "option": "FluxFinetune",
                "finetune_type": "Product",
                "images": 12,
                "results": ["https://x.example/sample_0.png"],
                "submitted_at": "2026-11-23T20:01:02Z",
                "finished_at": "2026-11-23T20:09:40Z",
                "error": None,
            }
        },
    }
    validator = Draft202012Validator(load_schema("lockfile"))
    assert list(validator.iter_errors(lock)) == []
    lock["jobs"]["red-sneaker"]["status"] = "done"
    lock["jobs"]["red-sneaker"]["error"] = {"status": "422"}
    assert len(list(validator.iter_errors(lock))) == 2


def test_plan_schema_accepts_design_example() -> None:
    """A plan like DESIGN section 5's validates; an orphan may have a null fingerprint."""
    actions = ["create", "replace", "resume", "retry", "blocked", "noop", "orphan"]
    plan = {
        "version": 1,
        "manifest": "examples/quickstart.yaml",
        "summary": dict.fromkeys(actions, 0) | {"create": 1, "orphan": 1},
        "jobs": [
            {"name": "a", "action": "create", "fingerprint": "sha256:" + "0" * 64, "reasons": []},
            {"name": "old", "action": "orphan", "fingerprint": None, "reasons": ["not in manifest"]},
        ],
    }
    validator = Draft202012Validator(load_schema("plan"))
    assert list(validator.iter_errors(plan)) == []
    plan["jobs"][0]["action"] = "destroy"
    assert len(list(validator.iter_errors(plan))) == 1
