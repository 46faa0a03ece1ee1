"""Which API to talk to, with which key; and the embedded sandbox behind ``endpoint: sandbox``.

Precedence: ``--endpoint`` flag, then ``RUNNER_ENDPOINT``, then ``api.endpoint``. Remote
endpoints must be https; plain http is accepted only for loopback addresses, so an API key
never crosses a network in clear text (the rule: ``runner.manifest.values.endpoint_problem``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from runner.errors import UsageError
from runner.logsetup import register_secret
from runner.manifest.values import endpoint_problem, is_loopback
from runner.models import Manifest

if TYPE_CHECKING:
    from runner.models import LockEntry

SANDBOX = "sandbox"
SANDBOX_KEY = "sandbox-local-key"
DEFAULT_SANDBOX_TRAIN_SECONDS = 3.0


def check_endpoint_url(url: str, source: str) -> str:
    """``url`` (trailing slash dropped) when ``manifest.values.endpoint_problem`` finds no
    problem with it; ``UsageError`` naming ``source`` otherwise."""
    problem = endpoint_problem(url)
    if problem is not None:
        raise UsageError(f"{source}: {problem}")
    return url if url == SANDBOX else url.rstrip("/")


def choose_endpoint(manifest: Manifest, flag: str | None, environ: Mapping[str, str]) -> str:
    if flag:
        return check_endpoint_url(flag, "--endpoint")
    env = environ.get("RUNNER_ENDPOINT")
    if env:
        return check_endpoint_url(env, "RUNNER_ENDPOINT")
    return check_endpoint_url(manifest.api.endpoint, f"{manifest.path.name}: api.endpoint")


# -- endpoint identity (DESIGN section 4) ----------------------------------------------------
# A lock entry counts only for the API it was made against: ``api`` in the entry says where
# (``sandbox``, or an origin such as ``https://api.vimmerse.net``). These functions are pure
# (no request, no key), so plan, status and output can check it offline.

SANDBOX_FILE_ROUTE = "/_sandbox/files/"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def api_identity(endpoint: str) -> str:
    """``sandbox`` for the embedded sandbox, else the URL's origin.

    Scheme and host lower-cased, the port only when it is not the scheme's default; path,
    query and any user info dropped (``https://API.vimmerse.net:443/v1`` ->
    ``https://api.vimmerse.net``).
    """
    if endpoint == SANDBOX:
        return SANDBOX
    parts = urlsplit(endpoint.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:  # IPv6 literal: brackets back on
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:  # not a number: keep what was written, so it still differs
        port = None
        netloc = parts.netloc.rsplit("@", 1)[-1].lower()
        return f"{scheme}://{netloc}"
    if port is not None and port != _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}:{port}"
    return f"{scheme}://{host}"


def is_loopback_identity(identity: str) -> bool:
    """``sandbox``, or an origin whose host is this machine."""
    if identity == SANDBOX:
        return True
    host = urlsplit(identity).hostname
    return bool(host) and is_loopback(host or "")


def accepts(target: str, made: str) -> bool:
    """Whether an entry made at ``made`` counts for a manifest that now targets ``target``.

    Both are ``api_identity`` values. The sandbox, or a loopback origin, accepts entries made
    by the sandbox or by that same origin; an https origin accepts only its own entries, so
    a sandbox trigger word is never taken for a real one.
    """
    if made == target:
        return True
    return is_loopback_identity(target) and made == SANDBOX


def inferred_api(entry: LockEntry, target: str) -> str:
    """Where an entry written before ``api`` existed was made.

    Sample URLs on a loopback host, or on the sandbox's file route, mean the sandbox; any
    other entry (no samples, or samples elsewhere) is taken as made against ``target``.
    """
    for url in entry.results:
        if not isinstance(url, str):
            continue
        if SANDBOX_FILE_ROUTE in url:
            return SANDBOX
        try:
            host = urlsplit(url).hostname
        except ValueError:
            continue
        if host and is_loopback(host):
            return SANDBOX
    return target


def made_at(entry: LockEntry, target: str) -> str:
    """The entry's ``api``, or where it is inferred to have been made when it has none."""
    return entry.api or inferred_api(entry, target)


def target_identity(manifest: Manifest, flag: str | None, environ: Mapping[str, str]) -> str:
    """The identity of the endpoint a run targets: ``--endpoint``, ``RUNNER_ENDPOINT``, ``api.endpoint``."""
    return api_identity(choose_endpoint(manifest, flag, environ))


def with_api(entries: Mapping[str, LockEntry], target: str) -> dict[str, LockEntry]:
    """The entries that lack ``api``, each with it filled in (``inferred_api``); by name.

    Apply stores them, so an old lockfile gains ``api`` on its next write, once.
    """
    return {
        name: entry.evolve(api=inferred_api(entry, target))
        for name, entry in entries.items()
        if entry.api is None
    }


@dataclass(frozen=True)
class Connection:
    url: str
    api_key: str
    embedded: bool


def api_key_for(manifest: Manifest, endpoint: str, environ: Mapping[str, str]) -> str:
    var = manifest.api.api_key_env
    key = environ.get(var, "").strip()
    if key:
        register_secret(key)
        if not key.isascii() or not key.isprintable():
            # An HTTP header cannot carry it; say so instead of failing deep inside httpx.
            raise UsageError(f"the API key in {var} has characters an HTTP header cannot carry")
        return key
    if endpoint == SANDBOX:
        return SANDBOX_KEY
    raise UsageError(f"no API key: set the environment variable {var} (api.api_key_env) for {endpoint}")


@contextlib.contextmanager
def connect(
    manifest: Manifest, flag: str | None = None, environ: Mapping[str, str] | None = None
) -> Iterator[Connection]:
    """Yield where to send requests; for ``sandbox`` run it in-process until the block ends."""
    environ = os.environ if environ is None else environ
    endpoint = choose_endpoint(manifest, flag, environ)
    key = api_key_for(manifest, endpoint, environ)
    if endpoint != SANDBOX:
        yield Connection(endpoint, key, embedded=False)
        return
    from runner.sandbox.config import SandboxConfig
    from runner.sandbox.serve import start_server

    train = float(environ.get("RUNNER_SANDBOX_TRAIN_SECONDS", DEFAULT_SANDBOX_TRAIN_SECONDS))
    state_dir = sandbox_state_dir(manifest.folder)
    dialect = environ.get("RUNNER_SANDBOX_DIALECT") or "envelope"
    config = SandboxConfig(state_dir=state_dir, train_seconds=train, dialect=dialect)
    with start_server(config) as server:
        yield Connection(server.url, key, embedded=True)


def sandbox_state_dir(folder: Path) -> Path:
    return folder / ".runner" / "sandbox"
