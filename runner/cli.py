"""Argument parsing and wiring only: ``main(argv) -> int``.

Each verb lives in ``runner/commands/<verb>.py`` and is imported only when it runs, so
``runner --version`` stays quick (no FastAPI, rich or Pillow at start-up).
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from runner.cli_args import UsageProblem, build_parser, fill_default_manifest
from runner.errors import EXIT_BUG, EXIT_INPUT, EXIT_INTERRUPTED, RunnerError

_MODULES = {
    "validate": "runner.commands.validate",
    "plan": "runner.commands.plan",
    "apply": "runner.commands.apply",
    "status": "runner.commands.status",
    "doctor": "runner.commands.doctor",
    "init": "runner.commands.init",
    "output": "runner.commands.output",
    "report": "runner.commands.report",
    "schema": "runner.commands.schema",
    "sandbox": "runner.sandbox.serve",
}


def _looks_like_manifest(text: str) -> bool:
    return text.endswith((".yaml", ".yml")) or any(ch in text for ch in "/*?[") or Path(text).is_file()


def _sigterm_as_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _json_requested(argv: Sequence[str]) -> bool:
    """Whether the logs of this invocation are JSON, read before its arguments are parsed."""
    from runner.logsetup import resolve_format

    fmt = "auto"
    for i, arg in enumerate(argv):
        if arg == "--log-format" and i + 1 < len(argv):
            fmt = argv[i + 1]
        elif arg.startswith("--log-format="):
            fmt = arg.split("=", 1)[1]
    return fmt in ("auto", "json") and resolve_format(fmt, sys.stderr) == "json"


def _error(
    message: str, code: int, *, json_logs: bool | None = None, prefix: str = "error: ", detail: str = ""
) -> int:
    """An error that ends the command: ``error: ...`` on a terminal; under JSON logs (DESIGN
    section 2) one JSON object per line of the message (a plan's validation errors are one
    event each), level ``error``, with ``exit_code``, and ``detail`` (a traceback) as
    ``exception``. Written here, not through structlog, so it reaches the stderr of now."""
    from runner import logsetup

    if json_logs is None:
        json_logs = logsetup.current_format == "json"
    if not json_logs:
        text = message + ("\n" + detail if detail else "")
        if prefix == "error: ":
            print(logsetup.error_text(text), file=sys.stderr)
        else:
            print(logsetup.guard(logsetup.clean_lines(logsetup.redact(prefix + text))), file=sys.stderr)
        return code
    import json  # only on an error: not on every start-up
    from datetime import UTC, datetime

    stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    lines = [line for line in logsetup.redact(message).split("\n") if line.strip()] or [message]
    for i, line in enumerate(lines):
        event: dict[str, object] = {"exit_code": code, "event": line, "level": "error", "timestamp": stamp}
        if detail and i == len(lines) - 1:
            event["exception"] = logsetup.redact(detail)
        print(logsetup.json_safe(json.dumps(event, ensure_ascii=False)), file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = parser.parse_args(argv)
    except UsageProblem as problem:  # argparse says 2 for bad usage; the contract says 1
        if _json_requested(argv):
            return _error(f"{problem.parser.prog}: {problem.message}", EXIT_INPUT, json_logs=True)
        problem.parser.print_usage(sys.stderr)
        print(f"{problem.parser.prog}: error: {problem.message}", file=sys.stderr)
        return EXIT_INPUT
    except SystemExit as exc:  # --help, --version
        code = exc.code if isinstance(exc.code, int) else EXIT_INPUT
        return EXIT_INPUT if code == 2 else code
    if args.command == "output" and args.name is None and args.manifest and not _looks_like_manifest(args.manifest):
        args.name, args.manifest = args.manifest, None  # runner output NAME: runner.yaml's job

    from runner import logsetup

    verbosity = (args.verbose or 0) - (args.quiet or 0)
    logsetup.configure(args.log_format or "auto", verbosity)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    from runner.manifest.image_paths import ALLOW_OUTSIDE_LINKS

    links = ALLOW_OUTSIDE_LINKS.set(bool(getattr(args, "allow_outside_links", False)))
    try:
        fill_default_manifest(args)
        module = importlib.import_module(_MODULES[args.command])
        return int(module.run(args))
    except RunnerError as exc:
        return _error(str(exc), exc.exit_code)
    except KeyboardInterrupt:
        return _error("interrupted", EXIT_INTERRUPTED, prefix="")
    except BrokenPipeError:
        return 0
    except Exception:  # a bug: show it, but never with a secret in it
        import traceback

        return _error(
            "internal error (a bug in runner; please report it):",
            EXIT_BUG,
            prefix="",
            detail=traceback.format_exc(),
        )
    finally:
        ALLOW_OUTSIDE_LINKS.reset(links)
