"""The duration grammar is stated twice: ``parse_duration`` (what runner reads) and the
schema's pattern (what editors and validate check). They agree on a table of inputs."""

from __future__ import annotations

import re

import pytest

from runner.manifest.values import parse_duration
from runner.shipped_schemas import load_schema

INPUTS = [
    "10s", "500ms", "5m", "2h", "1h30m", "1.5h", " 10s ", "1h 30m", "0s", "10 s", "2h30m15s",
    "", " ", "10", "s", "10x", "-5s", "1.s", ".5s", "10sec", "1h30", "h1", "10s!", "1e3s", "١٠s", "\u00a010s",
]


def _patterns() -> list[str]:
    api = load_schema("manifest")["properties"]["api"]["properties"]
    return [
        branch["pattern"]
        for key in ("poll_interval", "job_timeout")
        for branch in api[key]["anyOf"]
        if "pattern" in branch
    ]


@pytest.mark.parametrize("text", INPUTS)
def test_schema_pattern_and_parse_duration_agree(text: str) -> None:
    """A string the schema accepts is one parse_duration reads, and no other."""
    patterns = _patterns()
    assert len(patterns) == 2 and len(set(patterns)) == 1
    # ECMA-262 (JSON Schema) and Python agree on these: [0-9] is ASCII, \s Unicode space.
    accepted = re.search(patterns[0], text) is not None
    assert accepted == (parse_duration(text) is not None), text
