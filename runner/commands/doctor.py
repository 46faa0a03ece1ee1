"""``runner doctor [MANIFEST] [--endpoint URL]``: free checks of endpoint, key and API.

Nothing is trained or paid for. Two requests are sent: a status request for a trigger
word that cannot exist (``ApiClient.reach``: name resolution, connection, TLS and the key;
401/403 means the key was refused) and a POST the API refuses for free
(``ApiClient.probe_idempotency``: whether answers echo ``Idempotency-Key``). What the API
answered to both is shown as status, shape and message (``wire.describe_shape``), so a
first contact with a new API already says which shapes it speaks.

The endpoint and key are chosen as ``apply`` chooses them (``--endpoint``,
``RUNNER_ENDPOINT``, ``api.endpoint``; the variable named by ``api.api_key_env``). Without
a manifest (none named and no ``runner.yaml`` here) an endpoint must be given. The
embedded sandbox runs on a throwaway state folder: doctor leaves nothing behind.

Each check is one line, ``ok``, ``FAIL``, ``warn`` or ``skip`` with its detail; exit 0 when
none failed, 1 otherwise. ``--format json`` prints ``{"endpoint", "api", "embedded", "ok",
"checks": [{"name", "status", "detail", ...}]}``. The key is never printed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.to_thread

from runner import logsetup
from runner.api import wire
from runner.api.client import DOCTOR_PREFIX, ApiClient
from runner.api.endpoint import SANDBOX, api_identity, api_key_for, choose_endpoint, connect
from runner.api.ratelimit import TokenBucket
from runner.api.transport import Answer
from runner.errors import ApiError, Unreachable, UsageError
from runner.models import Manifest

DEFAULT_MANIFEST = "runner.yaml"
# A refused port or a dead name is decided within a few seconds; apply's 25 s budget is
# for riding out a blip at the start of a long run, doctor reports how things are now.
REACH_BUDGET = 6.0
RESOLVE_TIMEOUT = 10.0
NO_KEY = "runner-doctor-no-key"  # sent when no key is set, to still learn about the endpoint


@dataclass
class Check:
    name: str
    status: str  # ok | FAIL | warn | skip
    detail: str
    extra: dict[str, Any] = field(default_factory=dict)

    def doc(self) -> dict[str, Any]:
        return {"name": self.name, "status": self.status, "ok": self.status != "FAIL",
                "detail": self.detail, **self.extra}


@dataclass
class Report:
    endpoint: str
    api: str
    embedded: bool
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, status: str, detail: str, **extra: Any) -> Check:
        check = Check(name, status, logsetup.redact(detail), extra)
        self.checks.append(check)
        return check

    @property
    def ok(self) -> bool:
        return all(c.status != "FAIL" for c in self.checks)


def run(args: argparse.Namespace) -> int:
    manifest, manifest_note = _manifest(args)
    endpoint = choose_endpoint(manifest, args.endpoint, os.environ)
    source = _endpoint_source(args, manifest_note)
    key_var = manifest.api.api_key_env
    if manifest_note is not None and not getattr(args, "allow_trust_change", False):
        _trust_guard(manifest, manifest_note, endpoint)
    key_problem: str | None = None
    try:
        api_key_for(manifest, endpoint, os.environ)
    except UsageError as exc:
        key_problem = str(exc)
    if endpoint == SANDBOX:
        with tempfile.TemporaryDirectory(prefix="runner-doctor-") as scratch:
            throwaway = dataclasses.replace(manifest, path=Path(scratch) / "runner.yaml")
            with connect(throwaway, args.endpoint, os.environ) as conn:
                report = Report(conn.url, SANDBOX, True)
                report.add("endpoint", "ok", f"the embedded sandbox, in this process at {conn.url} ({source})")
                key_detail = (f"from {key_var}" if os.environ.get(key_var, "").strip()
                              else "the embedded sandbox needs none")
                report.add("key", "ok", key_detail)
                report.add("name resolution", "skip", "the embedded sandbox listens on loopback")
                anyio.run(_online, report, manifest, conn.url, conn.api_key, _trace(args), False)
    else:
        report = Report(endpoint, api_identity(endpoint), False)
        report.add("endpoint", "ok", f"{endpoint} ({source})")
        if key_problem:
            report.add("key", "FAIL", key_problem)
        else:
            report.add("key", "ok", f"from {key_var} (not shown)")
        key = NO_KEY if key_problem else api_key_for(manifest, endpoint, os.environ)
        anyio.run(_resolve_then_online, report, manifest, endpoint, key, _trace(args), bool(key_problem))
    if args.format == "json":
        doc = {"endpoint": report.endpoint, "api": report.api, "embedded": report.embedded,
               "ok": report.ok, "checks": [c.doc() for c in report.checks]}
        sys.stdout.write(logsetup.redact(json.dumps(doc, indent=2, ensure_ascii=False)) + "\n")
    else:
        sys.stdout.write(logsetup.redact(render(report)))
    return 0 if report.ok else 1


def _manifest(args: argparse.Namespace) -> tuple[Manifest, str | None]:
    """The manifest (loaded as apply loads it), or defaults when none exists but an
    endpoint was given; the second value names the manifest file for messages."""
    from runner.engine.pipeline import load

    if args.manifest:
        return load(args.manifest), Path(args.manifest).name
    if Path(DEFAULT_MANIFEST).is_file():
        return load(DEFAULT_MANIFEST), DEFAULT_MANIFEST
    if args.endpoint or os.environ.get("RUNNER_ENDPOINT"):
        return Manifest(path=Path(DEFAULT_MANIFEST).absolute()), None
    raise UsageError(
        f"no manifest: name one, or run doctor where {DEFAULT_MANIFEST} is; "
        "or give the endpoint with --endpoint URL (or RUNNER_ENDPOINT)"
    )


def _trust_guard(manifest: Manifest, display: str, endpoint: str) -> None:
    """doctor sends the key too: like apply, it refuses an endpoint or key variable the
    lockfile's entries were not made with, when the key would leave this machine, until a
    person passes --allow-trust-change (a pull request's pipeline must not run it to leak
    the key to a host the PR chose)."""
    from runner.engine.trust import assess, refuse
    from runner.state.lockfile import read_lockfile

    entries = read_lockfile(manifest.default_lockfile()).entries
    target = "sandbox" if endpoint == SANDBOX else api_identity(endpoint)
    refuse(assess(target, manifest.api.api_key_env, entries), display, "doctor")


def _endpoint_source(args: argparse.Namespace, manifest_note: str | None) -> str:
    if args.endpoint:
        return "from --endpoint"
    if os.environ.get("RUNNER_ENDPOINT"):
        return "from RUNNER_ENDPOINT"
    if manifest_note:
        return f"api.endpoint in {manifest_note}"
    return "the default"  # pragma: no cover - an endpoint is required without a manifest


def _trace(args: argparse.Namespace) -> Path | None:
    value = getattr(args, "trace_http", None) or os.environ.get("RUNNER_TRACE_HTTP")
    return Path(value) if value else None


async def _resolve_then_online(report: Report, manifest: Manifest, url: str, key: str,
                               trace: Path | None, no_key: bool) -> None:
    await _resolve(report, url)
    await _online(report, manifest, url, key, trace, no_key)


async def _resolve(report: Report, url: str) -> None:
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with anyio.fail_after(RESOLVE_TIMEOUT):
            infos = await anyio.to_thread.run_sync(
                lambda: socket.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                abandon_on_cancel=True,
            )
    except TimeoutError:
        report.add("name resolution", "FAIL", f"resolving {host} took more than {RESOLVE_TIMEOUT:.0f}s")
        return
    except OSError as exc:
        report.add("name resolution", "FAIL",
                   f"cannot resolve the host name {host} ({getattr(exc, 'strerror', None) or exc})")
        return
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    shown = ", ".join(addresses[:4]) + (f" and {len(addresses) - 4} more" if len(addresses) > 4 else "")
    report.add("name resolution", "ok", f"{host} -> {shown}", addresses=addresses)


async def _online(report: Report, manifest: Manifest, url: str, key: str,
                  trace: Path | None, no_key: bool) -> None:
    bucket = TokenBucket(manifest.api.requests_per_second, manifest.api.burst)
    host = urlsplit(url).netloc
    https = url.lower().startswith("https://")
    answers: list[dict[str, Any]] = []
    async with ApiClient(url, key, bucket, trace=trace) as client:
        started = time.perf_counter()
        try:
            reached = await client.reach(budget=REACH_BUDGET)
        except Unreachable as exc:
            report.add("connection", "FAIL", exc.message)
            report.add("key accepted", "skip", "the endpoint was not reached")
            report.add("idempotency", "skip", "the endpoint was not reached")
            return
        except ApiError as exc:
            if exc.status not in (401, 403):
                raise
            _connected(report, host, https, started)
            _status_answer(answers, None, exc)
            if no_key:
                report.add("key accepted", "skip",
                           f"no key was set; without one the API answers HTTP {exc.status}")
            else:
                report.add("key accepted", "FAIL", exc.message, http_status=exc.status)
            report.add("idempotency", "skip", "needs an accepted key")
            _answers(report, answers)
            return
        _connected(report, host, https, started)
        _status_answer(answers, reached, None)
        if no_key:  # pragma: no cover - an API that answers without any key
            report.add("key accepted", "warn",
                       f"no key was set, yet the API answered HTTP {reached.status}")
        else:
            report.add("key accepted", "ok",
                       f"a status request for a trigger word that cannot exist was answered "
                       f"HTTP {reached.status}, not 401/403", http_status=reached.status)
        _idempotency(report, answers, await _probe(client))
        _answers(report, answers)


def _connected(report: Report, host: str, https: bool, started: float) -> None:
    ms = (time.perf_counter() - started) * 1000
    how = "over https, certificate verified" if https else "over plain http (loopback)"
    report.add("connection", "ok", f"reached {host} {how} in {ms:.0f} ms")


async def _probe(client: ApiClient) -> tuple[bool | None, ApiError | None, Answer | None]:
    try:
        honoured = await client.probe_idempotency()
    except ApiError as exc:
        return None, exc, client.probe_answer
    return honoured, None, client.probe_answer


def _idempotency(report: Report, answers: list[dict[str, Any]],
                 probed: tuple[bool | None, ApiError | None, Answer | None]) -> None:
    honoured, error, answer = probed
    if answer is not None:
        answers.append(_describe("POST /finetune (a form the API must refuse: no images, "
                                 "an unknown option)", answer))
    if error is not None:
        report.add("idempotency", "FAIL", f"the probe was refused: {error.message}", http_status=error.status)
    elif answer is None:
        report.add("idempotency", "warn",
                   "the probe got no answer; apply will treat a lost POST answer as uncertain")
    elif 200 <= answer.status < 300:
        report.add("idempotency", "FAIL",
                   f"the API accepted a POST with no images and an unknown option (HTTP "
                   f"{answer.status}); it may have started something: please report this answer",
                   echoed=bool(honoured))
    elif honoured:
        report.add("idempotency", "ok",
                   "the API echoes Idempotency-Key: a POST whose answer is lost is replayed "
                   "under the same key, safely", echoed=True)
    elif answer.status >= 500 or answer.status == 429:
        report.add("idempotency", "warn",
                   f"the probe was answered HTTP {answer.status}, which tells nothing; apply "
                   "will treat a lost POST answer as uncertain", echoed=False)
    else:
        report.add("idempotency", "ok",
                   f"not echoed (the probe was refused with HTTP {answer.status}, as expected): "
                   "a POST whose answer is lost stays uncertain until --resubmit-uncertain",
                   echoed=False)


def _status_answer(answers: list[dict[str, Any]], answer: Answer | None,
                   refused: ApiError | None) -> None:
    what = f"GET /finetune/{DOCTOR_PREFIX}... (a trigger word that cannot exist)"
    if answer is not None:
        answers.append(_describe(what, answer))
    elif refused is not None:
        answers.append({"request": what, "status": refused.status, "message": refused.message})


def _describe(what: str, answer: Answer) -> dict[str, Any]:
    out: dict[str, Any] = {
        "request": what,
        "status": answer.status,
        "content_type": answer.headers.get("content-type"),
        "shape": wire.describe_shape(answer.body),
    }
    if answer.status >= 300:
        out["message"] = wire.error_message(answer.body, f"HTTP {answer.status}")
    elif what.startswith("GET"):
        read = wire.read_status(answer.body)
        if isinstance(read, wire.Unreadable):
            out["reads_as"] = f"unreadable ({read.reason})"
        else:
            out["reads_as"] = read.state
    return out


def _answers(report: Report, answers: list[dict[str, Any]]) -> None:
    lines = []
    for a in answers:
        text = f"{a['request']}: HTTP {a['status']}"
        if a.get("shape"):
            text += f", {a['shape']}"
        if a.get("message"):
            text += f", message {a['message']!r}"
        if a.get("reads_as"):
            text += f", reads as {a['reads_as']}"
        lines.append(text)
    status = "ok"
    odd = next((a for a in answers if a.get("status") == 200 and a["request"].startswith("GET")), None)
    if odd is not None:
        # A trigger word that cannot exist answered 200: a wrong word would read so too.
        status = "warn"
        lines.append(f"a trigger word that cannot exist was answered 200 (reads as {odd.get('reads_as')}): "
                     "a wrong trigger word would look the same; please send us this answer")
    report.add("answers", status, "\n".join(lines) or "none", answers=answers)


def render(report: Report) -> str:
    width = max(len(c.name) for c in report.checks)
    out = [f"runner doctor: {report.endpoint}"]
    for c in report.checks:
        first, *rest = c.detail.split("\n")
        out.append(f"  {c.status:<4}  {c.name:<{width}}  {first}")
        out.extend(f"        {'':<{width}}  {line}" for line in rest)
    failed = [c.name for c in report.checks if c.status == "FAIL"]
    if failed:
        out.append(f"{len(failed)} check{'s' if len(failed) > 1 else ''} failed: {', '.join(failed)}.")
    else:
        out.append("All checks passed: nothing was trained or paid for.")
    return "\n".join(out) + "\n"
