"""``--refresh`` for plan and status: ask the API about entries still training.

Read-only: the answers change what is shown, never the lockfile (only apply writes it).
A trust change that needs approval (``runner.engine.trust``: the manifest now targets another
endpoint, or reads the key from another variable, than the lockfile's entries were made
with) is refused before the key is read: a pull request's plan never sends the key to a
host nobody reviewed.
"""

from __future__ import annotations

import os

import anyio

from runner.api import wire
from runner.api.client import ApiClient
from runner.api.endpoint import accepts, connect, made_at, target_identity
from runner.api.ratelimit import TokenBucket
from runner.engine.pipeline import Prepared
from runner.engine.plan import Plan, make_plan
from runner.engine.transitions import on_status
from runner.engine.trust import assess, refuse
from runner.errors import ApiError
from runner.models import LockEntry, Manifest, utcnow


def refresh_entries(manifest: Manifest, entries: dict[str, LockEntry]) -> dict[str, LockEntry]:
    # Only entries made against the API the manifest targets now: another API's trigger
    # words are never sent to this one (nor is this key sent about them).
    target = target_identity(manifest, None, os.environ)
    refuse(assess(target, manifest.api.api_key_env, entries), manifest.path.name, "--refresh")
    training = {
        n: e for n, e in entries.items()
        if e.status == "training" and e.trigger_word and accepts(target, made_at(e, target))
    }
    if not training:
        return dict(entries)
    out = dict(entries)

    async def ask(client: ApiClient, name: str, entry: LockEntry) -> None:
        assert entry.trigger_word
        try:
            status = await client.status(entry.trigger_word, job=name)
        except ApiError:
            return  # shown as last known
        if isinstance(status, wire.Unreadable):
            return  # never read as success or failure: shown as last known
        ended = on_status(entry, status, utcnow())  # as apply would record it
        if ended is not None:
            out[name] = ended

    async def main(url: str, key: str) -> None:
        bucket = TokenBucket(manifest.api.requests_per_second, manifest.api.burst)
        async with ApiClient(url, key, bucket) as client, anyio.create_task_group() as tg:
            for name, entry in training.items():
                tg.start_soon(ask, client, name, entry)

    with connect(manifest, None, os.environ) as conn:
        anyio.run(main, conn.url, conn.api_key)
    return out


def refresh_plan(prepared: Prepared) -> Plan:
    entries = refresh_entries(prepared.manifest, prepared.state.entries)
    targets = [c.name for c in prepared.plan.changes] if prepared.targets else []
    return make_plan(prepared.plan.manifest, prepared.jobs, entries, targets, api=prepared.api)
