"""Which API to talk to, with which key; and the embedded sandbox behind ``endpoint: sandbox``.

Precedence: ``--endpoint`` flag, then ``RUNNER_ENDPOINT``, then ``api.endpoint``. Remote
endpoints must be https; plain http is accepted only for loopback addresses, so an API key
never crosses a network in clear text.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from runner.errors import UsageError
from runner.logsetup import register_secret
from runner.models import Manifest

SANDBOX = "sandbox"
SANDBOX_KEY = "sandbox-local-key"
DEFAULT_SANDBOX_TRAIN_SECONDS = 3.0


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_endpoint_url(url: str, source: str) -> str:
    if url == SANDBOX:
        return url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{source}: endpoint must be 'sandbox' or an https:// URL, got {url!r}")
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise UsageError(
            f"{source}: plain http is only allowed to loopback addresses; use https:// for {parts.hostname}"
        )
    return url.rstrip("/")


def choose_endpoint(manifest: Manifest, flag: str | None, environ: Mapping[str, str]) -> str:
    if flag:
        return check_endpoint_url(flag, "--endpoint")
    env = environ.get("RUNNER_ENDPOINT")
    if env:
        return check_endpoint_url(env, "RUNNER_ENDPOINT")
    return check_endpoint_url(manifest.api.endpoint, f"{manifest.path.name}: api.endpoint")


def api_identity(endpoint: str) -> str:
    """Where an entry is recorded as made: "sandbox", or the endpoint's origin (lower-case
    scheme and host, the port only when it is not the scheme's default)."""
    if endpoint == SANDBOX:
        return SANDBOX
    parts = urlsplit(endpoint)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    default = {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{host}" + (f":{port}" if port and port != default else "")


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
