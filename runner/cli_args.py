"""The command line's grammar: every verb, flag and positional, with its help and examples.

Kept apart from ``runner.cli`` (which only parses and dispatches) so each verb's arguments
read as one short function; ``build_parser`` assembles them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import NoReturn

from runner import __version__
from runner.errors import UsageError


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is raised (not printed), so that under JSON logs it is a
    JSON line like every other error; subcommand parsers inherit the class."""

    def error(self, message: str) -> NoReturn:
        raise UsageProblem(self, message)


class UsageProblem(Exception):
    def __init__(self, parser: argparse.ArgumentParser, message: str) -> None:
        super().__init__(message)
        self.parser = parser
        self.message = message


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


def _contact_opts(p: argparse.ArgumentParser) -> None:
    """The flags of the commands that send the key (apply, doctor)."""
    p.add_argument(
        "--allow-trust-change", action="store_true",
        help="send the key although the endpoint or api_key_env differs from the lockfile's entries (after review)",
    )
    p.add_argument(
        "--trace-http", metavar="FILE",
        help="write every request and answer as JSON lines (never the key); or RUNNER_TRACE_HTTP",
    )


def _target_opt(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--target", action="append", default=[], metavar="NAME", help="limit to this job (repeatable)"
    )


DEFAULT_MANIFEST = "runner.yaml"  # what ``runner init`` writes; read when no MANIFEST is named


def _command(
    sub: argparse._SubParsersAction[Parser],
    name: str,
    summary: str,
    examples: str,
    parents: list[Parser],
) -> Parser:
    """A subcommand whose ``--help`` starts with ``summary`` and ends with ``examples``."""
    return sub.add_parser(
        name,
        parents=parents,
        help=summary,
        description=summary[0].upper() + summary[1:] + ".",
        epilog="examples:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _manifests_arg(p: argparse.ArgumentParser) -> None:
    """MANIFEST..., and ``--allow-outside-links``, which every command reading them has."""
    p.add_argument(
        "manifests", nargs="*", metavar="MANIFEST",
        help=f"manifest files or globs (default: {DEFAULT_MANIFEST} in the current folder)",
    )
    _links_opt(p)


def _format_opt(p: argparse.ArgumentParser, choices: list[str], what: str) -> None:
    p.add_argument(
        "--format", choices=choices, default="text",
        help=f"{what} (default: text)",
    )


def fill_default_manifest(args: argparse.Namespace) -> None:
    """No MANIFEST named: ``runner.yaml`` here (what ``runner init`` writes), or a clear error."""
    if getattr(args, "manifests", None) == [] or (args.command == "output" and args.manifest is None):
        if not Path(DEFAULT_MANIFEST).is_file():
            raise UsageError(
                f"no MANIFEST named and no {DEFAULT_MANIFEST} in {Path.cwd()}: name one "
                f"(runner {args.command} path/to/manifest.yaml) or write one with runner init DIR"
            )
        if args.command == "output":
            args.manifest = DEFAULT_MANIFEST
        else:
            args.manifests = [DEFAULT_MANIFEST]


def _validate_command(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    p = _command(
        sub, "validate", "schema + semantic checks of manifests; nothing is sent",
        """
runner validate runner.yaml
runner validate --strict --format json 'catalog/*.yaml'
""", [common],
    )
    _manifests_arg(p)
    p.add_argument("--strict", action="store_true", help="treat warnings as errors")
    _format_opt(p, ["text", "json"], "text: FILE:LINE:COL lines; json: one document for tools")


def _plan_command(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    p = _command(
        sub, "plan", "show what apply would do, against the lockfile; nothing is submitted",
        """
runner plan runner.yaml
runner plan --format markdown runner.yaml > plan.md    # a pull-request comment
runner plan --detailed-exitcode runner.yaml            # exit 2 when there are changes
""", [common],
    )
    _manifests_arg(p)
    _lockfile_opt(p)
    _target_opt(p)
    _format_opt(p, ["text", "json", "markdown"], "json: schemas/plan.schema.json; markdown: a table for a PR comment")
    p.add_argument("--detailed-exitcode", action="store_true", help="exit 2 when there are changes")
    p.add_argument("--refresh", action="store_true", help="ask the API about jobs still training")
    p.add_argument(
        "--prune", action="store_true", help="show the orphaned lock entries apply --prune would drop"
    )


def _apply_command(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    p = _command(
        sub, "apply", "submit, follow and record the jobs in the lockfile",
        """
runner apply runner.yaml
runner apply --target red-sneaker --no-wait runner.yaml
runner apply --prune runner.yaml                       # also drop orphaned lock entries
""", [common],
    )
    _manifests_arg(p)
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
    _contact_opts(p)


def _status_command(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    p = _command(
        sub, "status", "show the lockfile's jobs: status, trigger word, images",
        """
runner status runner.yaml
runner status --refresh --format json runner.yaml
""", [common],
    )
    _manifests_arg(p)
    p.add_argument("--refresh", action="store_true", help="ask the API about jobs still training")
    _lockfile_opt(p)
    _format_opt(p, ["text", "json"], "text: a table; json: the rows for tools")


def _doctor_command(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    p = _command(
        sub, "doctor", "free checks of endpoint, key and API; trains nothing",
        """
runner doctor runner.yaml
runner doctor --endpoint https://api.vimmerse.net --format json
""", [common],
    )
    p.add_argument("manifest", nargs="?", metavar="MANIFEST", help="default: runner.yaml here")
    p.add_argument("--endpoint", metavar="URL", help="override api.endpoint")
    _format_opt(p, ["text", "json"], "text: one line per check; json: the checks for tools")
    _contact_opts(p)
    _links_opt(p)


def _init_command(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    p = _command(
        sub, "init", "scaffold a manifest from folders of images",
        """
runner init my-loras -o my-loras/runner.yaml           # one job per sub-folder
runner init datasets/sneaker datasets/mug              # each folder one job
""", [common],
    )
    p.add_argument(
        "dirs", nargs="+", metavar="DIR",
        help="a folder of images (or with start/ and end/: Kontext), or a folder of such folders",
    )
    p.add_argument(
        "-o", "--output", metavar="MANIFEST", default="runner.yaml",
        help="the manifest to write (default: runner.yaml); image paths are relative to it",
    )
    p.add_argument("--force", action="store_true", help="overwrite an existing manifest")
    _links_opt(p)


def _output_command(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    p = _command(
        sub, "output", "trigger words for downstream use",
        """
runner output runner.yaml red-sneaker                  # one word, for scripts
runner output --format env runner.yaml >> "$GITHUB_ENV"
""", [common],
    )
    p.add_argument(
        "manifest", nargs="?", metavar="MANIFEST", help=f"the manifest (default: {DEFAULT_MANIFEST} here)"
    )
    p.add_argument("name", nargs="?", metavar="NAME", help="only this job's trigger word, alone on a line")
    _lockfile_opt(p)
    _format_opt(p, ["text", "json", "env"], "text: name and word; json: a document; env: NAME=word lines")


def _report_command(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    p = _command(
        sub, "report", "a self-contained HTML gallery of the results",
        """
runner report runner.yaml -o report.html
runner report 'catalog/*.yaml' -o catalog.html --image-size 768
""", [common],
    )
    _manifests_arg(p)
    p.add_argument("-o", "--output", metavar="FILE", required=True, help="the HTML file to write")
    p.add_argument(
        "--image-size", type=int, default=512, metavar="PX", help="longest side of embedded samples"
    )
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


def _schema_command(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    p = _command(
        sub, "schema", "print a JSON Schema (for editors and CI)",
        """
runner schema manifest > manifest.schema.json
runner schema plan
""", [common],
    )
    p.add_argument(
        "which", nargs="?", choices=["manifest", "lockfile", "plan"], default="manifest",
        help="which document's schema (default: manifest)",
    )


def _sandbox_command(sub: argparse._SubParsersAction[Parser], common: Parser) -> None:
    p = _command(
        sub, "sandbox", "the local stand-in for the finetune API",
        """
runner sandbox serve --port 0
""", [common],
    )
    sandbox_sub = p.add_subparsers(dest="sandbox_command", metavar="SUBCOMMAND", required=True)
    s = _command(
        sandbox_sub, "serve", "run the sandbox HTTP server",
        """
runner sandbox serve --port 8000 --train-seconds 2
runner sandbox serve --host 0.0.0.0 --api-key secret --fault-rate 0.1 --fault-kinds 503,drop
""", [common],
    )
    _serve_options(s)
    _fault_options(s)


def _serve_options(s: argparse.ArgumentParser) -> None:
    """Where the sandbox listens, what it keeps, and its limits."""
    s.add_argument(
        "--host", default="127.0.0.1",
        help="beyond loopback (e.g. 0.0.0.0) needs --api-key; webhooks then never reach loopback",
    )
    s.add_argument("--port", type=int, default=8000, help="0 picks a free port (printed on start)")
    s.add_argument(
        "--state-dir", default=".runner/sandbox", metavar="D",
        help="where jobs and uploads are kept (default: .runner/sandbox)",
    )
    s.add_argument(
        "--train-seconds", type=float, default=5.0, metavar="S", help="how long a training takes (default 5)"
    )
    s.add_argument(
        "--credits", type=int, default=None, metavar="N",
        help="trainings to allow before answering 402 (default: unlimited)",
    )
    s.add_argument("--rate-limit", type=float, default=None, metavar="R", help="requests/s per key")
    s.add_argument(
        "--api-key", action="append", default=[], metavar="K",
        help="accept only this key (repeatable; default: any key)",
    )
    s.add_argument(
        "--allow-external-webhooks", action="store_true",
        help="let webhook_url point beyond this machine",
    )
    s.add_argument(
        "--max-upload-mb", type=float, default=100.0, metavar="MB",
        help="refuse bigger requests with 413 (default 100)",
    )
    s.add_argument(
        "--bandwidth-mbps", type=float, default=None, metavar="N",
        help="read request bodies no faster than N megabits/s, shared by all requests, as a CI "
        "runner's uplink would send them (default: as fast as they come)",
    )
    s.add_argument(
        "--max-trainings-per-key", type=int, default=None, metavar="N",
        help="quota: trainings one key may start, then 402 (default: 1000 beyond loopback, else none)",
    )
    s.add_argument(
        "--max-stored-mb-per-key", type=float, default=None, metavar="MB",
        help="quota: uploads one key may keep on disk, then 402 (default: 1024 beyond loopback, else none)",
    )


def _fault_options(s: argparse.ArgumentParser) -> None:
    """The faults and answer shapes it can be told to produce."""
    s.add_argument(
        "--fault-rate", type=float, default=0.0, metavar="F",
        help="share of requests that get an injected fault, 0 to 1 (default 0)",
    )
    s.add_argument(
        "--fault-delay", type=float, default=1.0, metavar="S", help="seconds a 'slow' fault waits (default 1)"
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


def build_parser() -> argparse.ArgumentParser:
    common = Parser(add_help=False)
    _global_options(common, suppress=True)

    parser = Parser(
        prog="runner",
        description="Turn committed YAML manifests into trained LoRA models, the way terraform applies.",
        epilog=(
            "examples:\n"
            "  runner init my-loras -o my-loras/runner.yaml\n"
            "  runner validate my-loras/runner.yaml\n"
            "  runner plan my-loras/runner.yaml\n"
            "  runner apply my-loras/runner.yaml\n"
            "\n"
            "Where a command takes MANIFEST and none is named, it reads runner.yaml here.\n"
            "Run 'runner COMMAND --help' for a command's options."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"runner {__version__}")
    _global_options(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _validate_command(sub, common)
    _plan_command(sub, common)
    _apply_command(sub, common)
    _status_command(sub, common)
    _doctor_command(sub, common)
    _init_command(sub, common)
    _output_command(sub, common)
    _report_command(sub, common)
    _schema_command(sub, common)
    _sandbox_command(sub, common)
    return parser
