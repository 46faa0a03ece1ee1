"""``runner schema [manifest|lockfile|plan]``: print a JSON Schema for editors and CI."""

from __future__ import annotations

import argparse
import sys

from runner.shipped_schemas import schema_path


def run(args: argparse.Namespace) -> int:
    sys.stdout.write(schema_path(args.which).read_text(encoding="utf-8"))
    return 0
