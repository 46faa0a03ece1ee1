"""Argument parsing and wiring only: ``main(argv) -> int``.

Each verb lives in ``runner/commands/<verb>.py`` and is imported only when it runs, so
``runner --version`` stays quick (no FastAPI, rich or Pillow at start-up).
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import traceback
from collections.abc import Sequence

from runner import __version__
from runner.errors import EXIT_BUG, EXIT_INPUT, EXIT_INTERRUPTED, RunnerError


def _global_options(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Global flags are accepted before and after the verb (``runner -v plan`` or ``runner plan -v``)."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--log-format",
        choices=["auto", "console", "json"],
        default=default if suppress else "auto",
        help="auto: console on a terminal, JSON lines when piped or in CI",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=default if suppress else 0, help="more detail"
    )
    parser.add_argument(
        "-q", "--quiet", action="count", default=default if suppress else 0, help="less output"
    )


def _lockfile_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lockfile", metavar="F", help="lockfile path (default: MANIFEST's .lock.yaml)")


def _links_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--allow-outside-links",
        action="store_true",
        help="follow symlinks that leave the manifest's folder (shared dataset mounts)",
    )


def _target_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target", action="append", default=[], metavar="NAME", help="limit to this job (repeatable)"
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, suppress=True)

    parser = argparse.ArgumentParser(
        prog="runner",
        description="Turn committed YAML manifests into trained LoRA models, the way terraform applies.",
    )
    parser.add_argument("--version", action="version", version=f"runner {__version__}")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("validate", parents=[common], help="schema + semantic checks; nothing is sent")
    p.add_argument("manifests", nargs="+", metavar="MANIFEST")
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    p.add_argument("--format", choices=["text", "json"], default="text")
    _links_opt(p)

    p = sub.add_parser("plan", parents=[common], help="show what apply would do")
    p.add_argument("manifests", nargs="+", metavar="MANIFEST")
    _lockfile_opt(p)
    _target_opt(p)
    p.add_argument("--format", choices=["text", "json", "markdown"], default="text")
    p.add_argument("--detailed-exitcode", action="store_true", help="exit 2 when there are changes")
    p.add_argument("--refresh", action="store_true", help="ask the API about jobs still training")
    p.add_argument(
        "--prune", action="store_true", help="show the orphaned lock entries apply --prune would drop"
    )
    _links_opt(p)

    p = sub.add_parser("apply", parents=[common], help="submit, follow and record the jobs")
    p.add_argument("manifests", nargs="+", metavar="MANIFEST")
    _lockfile_opt(p)
    _target_opt(p)
    p.add_argument("--parallelism", type=int, metavar="N", help="override api.max_in_flight")
    p.add_argument("--no-wait", action="store_true", help="submit and return; exit 3 if unfinished")
    p.add_argument("--resubmit-uncertain", action="store_true", help="resubmit jobs whose POST answer was lost")
    p.add_argument("--prune", action="store_true", help="drop lock entries whose job left the manifest")
    p.add_argument("--endpoint", metavar="URL", help="override api.endpoint")
    p.add_argument("--max-submissions", type=int, metavar="N", help="refuse plans starting more trainings")
    p.add_argument(
        "--auto-approve", action="store_true",
        help="do not ask 'yes' on a terminal before starting paid trainings (CI never asks)",
    )
    p.add_argument(
        "--allow-trust-change", action="store_true",
        help="send the key although the endpoint or api_key_env differs from the lockfile's (after review)",
    )
    p.add_argument(
        "--trace-http", metavar="FILE",
        help="write every request and answer as JSON lines (never the key); or RUNNER_TRACE_HTTP",
    )
    _links_opt(p)

    p = sub.add_parser("status", parents=[common], help="show the lockfile's jobs")
    p.add_argument("manifests", nargs="+", metavar="MANIFEST")
    _lockfile_opt(p)
    p.add_argument("--refresh", action="store_true", help="ask the API about jobs still training")
    p.add_argument("--format", choices=["text", "json"], default="text")
    _links_opt(p)

    p = sub.add_parser(
        "doctor", parents=[common], help="free checks of endpoint, key and API; trains nothing"
    )
    p.add_argument("manifest", nargs="?", metavar="MANIFEST", help="default: runner.yaml here")
    p.add_argument("--endpoint", metavar="URL", help="override api.endpoint")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument(
        "--allow-trust-change", action="store_true",
        help="send the key to an endpoint or from a variable the lockfile's entries were not made with",
    )
    p.add_argument(
        "--trace-http", metavar="FILE",
        help="write every request and answer as JSON lines (never the key); or RUNNER_TRACE_HTTP",
    )

    p = sub.add_parser("init", parents=[common], help="scaffold a manifest from folders of images")
    p.add_argument("dirs", nargs="+", metavar="DIR")
    p.add_argument("-o", "--output", metavar="MANIFEST", default="runner.yaml")
    p.add_argument("--force", action="store_true", help="overwrite an existing manifest")

    p = sub.add_parser("output", parents=[common], help="trigger words for downstream use")
    p.add_argument("manifest", metavar="MANIFEST")
    p.add_argument("name", nargs="?", metavar="NAME")
    _lockfile_opt(p)
    p.add_argument("--format", choices=["text", "json", "env"], default="text")

    p = sub.add_parser("report", parents=[common], help="self-contained HTML gallery of results")
    p.add_argument("manifests", nargs="+", metavar="MANIFEST")
    p.add_argument("-o", "--output", metavar="FILE", required=True)
    p.add_argument(
        "--image-size", type=int, default=512, metavar="PX", help="longest side of embedded samples"
    )
    _links_opt(p)
    p.add_argument(
        "--timeout", type=float, default=120.0, metavar="S",
        help="deadline for fetching every sample together (default 120 s); late ones are shown as timed out",
    )
    p.add_argument(
        "--image-timeout", type=float, default=20.0, metavar="S",
        help="deadline for one sample's download (default 20 s)",
    )
    p.add_argument(
        "--allow-host", action="append", default=[], metavar="HOST",
        help="also fetch https samples from HOST (or *.DOMAIN); repeatable",
    )

    p = sub.add_parser("schema", parents=[common], help="print a JSON Schema")
    p.add_argument("which", nargs="?", choices=["manifest", "lockfile", "plan"], default="manifest")

    p = sub.add_parser("sandbox", parents=[common], help="the local stand-in for the finetune API")
    sandbox_sub = p.add_subparsers(dest="sandbox_command", metavar="SUBCOMMAND", required=True)
    s = sandbox_sub.add_parser("serve", parents=[common], help="run the sandbox HTTP server")
    s.add_argument(
        "--host", default="127.0.0.1",
        help="beyond loopback (e.g. 0.0.0.0) needs --api-key; webhooks then never reach loopback",
    )
    s.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on start)")
    s.add_argument("--state-dir", default=".runner/sandbox", metavar="D")
    s.add_argument("--train-seconds", type=float, default=5.0, metavar="S")
    s.add_argument("--credits", type=int, default=None, metavar="N")
    s.add_argument("--rate-limit", type=float, default=None, metavar="R", help="requests/s per key")
    s.add_argument("--fault-rate", type=float, default=0.0, metavar="F")
    s.add_argument("--fault-delay", type=float, default=1.0, metavar="S")
    s.add_argument("--api-key", action="append", default=[], metavar="K")
    s.add_argument("--allow-external-webhooks", action="store_true")
    s.add_argument("--max-upload-mb", type=float, default=100.0, metavar="MB")
    s.add_argument(
        "--max-trainings-per-key", type=int, default=None, metavar="N",
        help="quota: trainings one key may start, then 402 (default: 1000 beyond loopback, else none)",
    )
    s.add_argument(
        "--max-stored-mb-per-key", type=float, default=None, metavar="MB",
        help="quota: uploads one key may keep on disk, then 402 (default: 1024 beyond loopback, else none)",
    )
    s.add_argument(
        "--fault-kinds",
        default=None,
        metavar="K,K",
        help=(
            "comma-separated faults to inject: 500,502,503,drop,slow,lost_post,gateway_timeout"
            " (default: all)"
        ),
    )
    s.add_argument("--seed", type=int, default=None, metavar="N", help="seed the fault RNG")
    s.add_argument(
        "--no-idempotency",
        action="store_true",
        help="ignore Idempotency-Key and never echo it, like the real service",
    )
    s.add_argument(
        "--dialect",
        default="envelope",
        metavar="D",
        help='answer shapes: envelope (default), args, bare or opaque (README "The sandbox")',
    )
    return parser


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


def _sigterm_as_interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: 2 for bad usage; the contract says 1
        code = exc.code if isinstance(exc.code, int) else EXIT_INPUT
        return EXIT_INPUT if code == 2 else code

    from runner import logsetup

    verbosity = (args.verbose or 0) - (args.quiet or 0)
    logsetup.configure(args.log_format or "auto", verbosity)
    signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    from runner.images import ALLOW_OUTSIDE_LINKS

    links = ALLOW_OUTSIDE_LINKS.set(bool(getattr(args, "allow_outside_links", False)))
    try:
        module = importlib.import_module(_MODULES[args.command])
        return int(module.run(args))
    except RunnerError as exc:
        print(logsetup.error_text(str(exc)), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        return 0
    except Exception:  # a bug: show it, but never with a secret in it
        print(
            "internal error (a bug in runner; please report it):\n"
            + logsetup.redact(traceback.format_exc()),
            file=sys.stderr,
        )
        return EXIT_BUG
    finally:
        ALLOW_OUTSIDE_LINKS.reset(links)
