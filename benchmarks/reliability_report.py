"""Summarise the reliability suite's figures (JSON lines written by tests/reliability).

    RUNNER_FIGURES=/tmp/fig.jsonl python -m pytest tests/reliability --long
    python benchmarks/reliability_report.py /tmp/fig.jsonl
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


def main(path: str) -> None:
    rows: dict[str, list[dict]] = defaultdict(list)
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.strip():
                row = json.loads(line)
                rows[row.pop("test")].append(row)
    faults = sorted(rows.get("fault", []), key=lambda r: (r["rate"], r["kind"]))
    if faults:
        print("| fault rate | kind | jobs | succeeded | credits charged | replays | requests | wall s |")
        print("|---|---|---|---|---|---|---|---|")
        for r in faults:
            print(f"| {r['rate']} | {r['kind']} | {r['jobs']} | {r['succeeded']} | {r['charged']} | "
                  f"{r['replays']} | {r['requests']} | {r['wall_s']} |")
        double = sum(r["charged"] - r["jobs"] for r in faults)
        print(f"\ncells: {len(faults)}, jobs: {sum(r['jobs'] for r in faults)}, "
              f"succeeded: {sum(r['succeeded'] for r in faults)}, double charges: {double}\n")
    dialects = rows.get("dialect", [])
    if dialects:
        print("| dialect | faults | rate | API echoes key | jobs | succeeded | uncertain | credits charged "
              "| duplicates | replays | requests | wall s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in dialects:
            print(f"| {r['dialect']} | {r['fault']} | {r['rate']} | {'yes' if r['idempotency'] else 'no'} | "
                  f"{r['jobs']} | {r['succeeded']} | {r['uncertain']} | {r['charged']} | "
                  f"{r['duplicates']} | {r['replays']} | {r['requests']} | {r['wall_s']} |")
        print(f"\ncells: {len(dialects)}, jobs: {sum(r['jobs'] for r in dialects)}, "
              f"duplicate trainings: {sum(r['duplicates'] for r in dialects)}\n")
    for key in ("crash", "signals"):
        for r in rows.get(key, []):
            print(f"{key}: " + ", ".join(f"{k}={v}" for k, v in r.items()))
    for key in sorted(set(rows) - {"fault", "dialect", "crash", "signals"}):
        for r in rows[key]:
            print(f"{key}: " + ", ".join(f"{k}={v}" for k, v in r.items()))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/fig.jsonl")
