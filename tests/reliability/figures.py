"""Figures for docs/RELIABILITY.md: tests append JSON lines to $RUNNER_FIGURES when it is set.

    RUNNER_FIGURES=/tmp/fig.jsonl python -m pytest tests/reliability --long
    python benchmarks/reliability_report.py /tmp/fig.jsonl
"""

from __future__ import annotations

import json
import os
from typing import Any


def record(test: str, **data: Any) -> None:
    path = os.environ.get("RUNNER_FIGURES")
    if not path:
        return
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"test": test, **data}) + "\n")
