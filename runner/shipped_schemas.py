"""Find the JSON Schemas shipped with runner: inside the wheel, or in a source checkout."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

SCHEMA_NAMES = ("manifest", "lockfile", "plan")


def schema_path(name: str) -> Path:
    """The wheel carries ``runner/_schemas``; an editable install or checkout has ``schemas/``."""
    if name not in SCHEMA_NAMES:
        raise ValueError(f"unknown schema {name!r}")
    filename = f"{name}.schema.json"
    here = Path(__file__).resolve().parent
    for folder in (here / "_schemas", here.parent / "schemas"):
        candidate = folder / filename
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"schema {filename} is not installed with runner")


@cache
def load_schema(name: str) -> dict[str, Any]:
    with schema_path(name).open(encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    return data
