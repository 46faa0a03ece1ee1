"""plan --format json documents validate against schemas/plan.schema.json (one and many)."""

from __future__ import annotations

import json
from pathlib import Path

from jsonschema import Draft202012Validator
from support.apply import runner
from support.manifests import write_manifest

from runner.shipped_schemas import load_schema


def test_single_and_catalog_plans_match_the_schema(tmp_path: Path) -> None:
    """Both the one-manifest plan and the many-manifest wrapper are valid plan documents."""
    write_manifest(tmp_path, n_jobs=2, url="sandbox", filename="a.yaml")
    write_manifest(tmp_path, n_jobs=1, url="sandbox", filename="b.yaml")
    validator = Draft202012Validator(load_schema("plan"))
    one = json.loads(runner("plan", "a.yaml", "--format", "json", cwd=tmp_path).stdout)
    many = json.loads(runner("plan", "a.yaml", "b.yaml", "--format", "json", cwd=tmp_path).stdout)
    assert list(validator.iter_errors(one)) == []
    assert list(validator.iter_errors(many)) == []
    assert len(many["manifests"]) == 2
    broken = {**one, "summary": {**one["summary"], "create": "two"}}
    assert list(validator.iter_errors(broken)) != []
