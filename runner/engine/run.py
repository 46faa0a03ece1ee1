"""Run an apply in this process: the engine's entry point, ``run_apply``.

``runner apply`` (``runner.commands.apply``) wraps the same steps in what a person or a CI
job needs around them: several manifests, the budget guards, the ``yes`` question, the live
view and the summary. ``run_apply`` is the run alone, for tools and tests; given
``transport`` (any httpx transport: ``httpx.ASGITransport(runner.sandbox.app.create_app(...))``,
``httpx.MockTransport``) every request goes there instead of the network, so the apply rules
can be tested in-process against the real sandbox app::

    result = run_apply("runner.yaml", transport=httpx.ASGITransport(app))
    assert result.exit_code == 0
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import anyio
import httpx

from runner import logsetup
from runner.api.client import ApiClient
from runner.api.endpoint import (
    SANDBOX,
    Connection,
    api_identity,
    api_key_for,
    choose_endpoint,
    connect,
    is_loopback_identity,
    target_identity,
    with_api,
)
from runner.api.ratelimit import TokenBucket
from runner.engine.pipeline import Prepared, prepare
from runner.engine.plan import Plan, make_plan
from runner.engine.reporting import LogReporter, Reporter
from runner.engine.scheduler import Applier, ApplyOptions
from runner.engine.trust import assess, key_env_amendments, refuse
from runner.engine.upload import Preparer
from runner.manifest.resize import ResizeCache
from runner.models import ApplyResult, Manifest
from runner.state.session import LockSession

log = logsetup.get_logger("runner.engine.apply")
# Where requests go when a transport stands in for the embedded sandbox: never dialled.
IN_PROCESS_URL = "http://127.0.0.1"


def run_apply(
    manifest_path: str | Path,
    *,
    lockfile: str | None = None,
    targets: Sequence[str] = (),
    options: ApplyOptions | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
    endpoint: str | None = None,
    reporter: Reporter | None = None,
    allow_trust_change: bool = False,
) -> ApplyResult:
    """Plan ``manifest_path`` against its lockfile and apply it, as ``runner apply`` does
    with ``--auto-approve`` (no budget guard, nothing printed: events go to ``reporter``,
    structlog by default). Raises what ``runner apply`` exits 1 for (``RunnerError``)."""
    prepared = prepare(str(manifest_path), lockfile, list(targets), endpoint=endpoint)
    manifest = prepared.manifest
    with LockSession(prepared.lockfile) as session:
        target = target_identity(manifest, endpoint, os.environ)
        if not allow_trust_change:
            refuse(assess(target, manifest.api.api_key_env, session.state.entries), prepared.display, "apply")
        plan = plan_locked(prepared, session, target)
        amend_identity(session, manifest, target, plan)
        return execute(plan, session, manifest, options or ApplyOptions(), reporter or LogReporter(),
                       endpoint=endpoint, transport=transport)


def plan_locked(prepared: Prepared, session: LockSession, target: str) -> Plan:
    """The plan again, against the lockfile as it is under the lock (another apply may have
    finished since); the jobs' fingerprints are still the ones computed before."""
    manifest = prepared.manifest
    entries = session.state.entries
    plan = make_plan(prepared.display, prepared.jobs, entries, list(prepared.targets), api=target)
    return plan.with_trust(target, manifest.api.api_key_env, entries, manifest.variables)


def amend_identity(session: LockSession, manifest: Manifest, target: str, plan: Plan) -> None:
    """Entries from before ``api`` existed gain it (inferred) on this run's write, once; and
    ``api_key_env`` likewise, or the approved new one (so approval is needed once)."""
    assert plan.trust is not None
    session.amend(with_api(session.state.entries, target))
    approved = bool(plan.trust.changes)
    session.amend(key_env_amendments(session.state.entries, manifest.api.api_key_env, approved=approved))


def execute(
    plan: Plan,
    session: LockSession,
    manifest: Manifest,
    options: ApplyOptions,
    reporter: Reporter,
    *,
    endpoint: str | None = None,
    trace: Path | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> ApplyResult:
    """Run ``plan`` under ``session``: connect (the embedded sandbox starts here) only when
    some change needs the API."""
    if not plan.api_work():
        # Only noops and orphans: no endpoint, key or sandbox needed.
        return anyio.run(Applier(plan, session, None, manifest.api, options, reporter).run)
    with _connection(manifest, endpoint, transport) as conn:
        log.info("endpoint", url=conn.url, embedded=conn.embedded)
        return anyio.run(_run_online, plan, session, manifest, options, conn, reporter, trace, transport)


@contextlib.contextmanager
def _connection(
    manifest: Manifest, endpoint: str | None, transport: httpx.AsyncBaseTransport | None
) -> Iterator[Connection]:
    """``endpoint.connect``; with a transport, no sandbox is started: it answers instead."""
    if transport is None:
        with connect(manifest, endpoint, os.environ) as conn:
            yield conn
        return
    url = choose_endpoint(manifest, endpoint, os.environ)
    key = api_key_for(manifest, url, os.environ)
    yield Connection(IN_PROCESS_URL if url == SANDBOX else url, key, embedded=url == SANDBOX)


async def _run_online(
    plan: Plan,
    session: LockSession,
    manifest: Manifest,
    options: ApplyOptions,
    conn: Connection,
    reporter: Reporter,
    trace: Path | None,
    transport: httpx.AsyncBaseTransport | None,
) -> ApplyResult:
    bucket = TokenBucket(manifest.api.requests_per_second, manifest.api.burst)
    api = SANDBOX if conn.embedded else api_identity(conn.url)
    cache = ResizeCache.for_manifest(manifest.folder)
    preparer = Preparer(cache, manifest.api.max_uploads)
    try:
        async with ApiClient(conn.url, conn.api_key, bucket, transport=transport, trace=trace) as client:
            if is_loopback_identity(api) and await client.is_sandbox():
                api = SANDBOX
            applier = Applier(plan, session, client, manifest.api, options, reporter, api=api, preparer=preparer)
            return await applier.run()
    finally:
        cache.close()
