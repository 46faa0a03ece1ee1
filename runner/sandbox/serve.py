"""Running the sandbox: ``start_server`` (uvicorn in a thread) and ``runner sandbox serve``.

``start_server`` binds the socket itself before uvicorn starts, so port 0 gives a free
port that is known (and accepting) by the time the context manager yields; the embedded
``api.endpoint: sandbox`` default and end-to-end tests rely on that.

The CLI runs the same thread-based server and waits in the main thread, because uvicorn's
own signal handling re-raises SIGINT after shutdown (which would turn a clean stop into
exit 130); here SIGINT/SIGTERM simply stop the server and ``run`` returns 0.

Listening beyond loopback (``--host 0.0.0.0``, a LAN address, a host name) is *exposed*:
it needs at least one ``--api-key`` (else any key would do), and the app is told so that
its webhooks never reach loopback or private addresses (``runner.sandbox.webhooks``).
Only literal loopback addresses and ``localhost`` count as loopback.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from runner.errors import UsageError
from runner.sandbox.config import (
    DEFAULT_MAX_STORED_MB_PER_KEY,
    DEFAULT_MAX_TRAININGS_PER_KEY,
    FAULT_KINDS,
    SandboxConfig,
)

START_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0


@dataclass(frozen=True)
class RunningSandbox:
    """What ``start_server`` yields: where the server listens, and its app."""

    url: str
    host: str
    port: int
    config: SandboxConfig
    app: Any


def is_loopback_host(host: str) -> bool:
    """Whether binding ``host`` keeps the server on this machine: ``localhost`` or a literal
    loopback address. Anything else (``0.0.0.0``, ``::``, a LAN address, a name) is exposed."""
    host = host.strip().strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposed_config(config: SandboxConfig, host: str) -> SandboxConfig:
    """``config`` for a server bound to ``host``: marked exposed when it leaves loopback,
    which refuses to exist without an API key (a UsageError that says so)."""
    if is_loopback_host(host) or config.exposed:
        return config
    if not config.api_keys:
        raise UsageError(
            f"--host {host} listens beyond this machine: give at least one --api-key"
            " (without one the sandbox accepts any key)"
        )
    return dataclasses.replace(config, exposed=True)


def _url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose
    # proto says TCP, and without it every answer waits ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise UsageError(f"cannot listen on {_url(host, port)}: {exc.strerror or exc}") from exc
    return sock


@contextmanager
def start_server(
    config: SandboxConfig,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    app: Any = None,
    log_level: str = "warning",
) -> Iterator[RunningSandbox]:
    """Serve the sandbox in a background thread until the block exits."""
    import uvicorn

    from runner.sandbox.app import create_app

    config = exposed_config(config, host)
    if app is None:
        app = create_app(config)
    elif config.exposed and not app.state.sandbox.config.exposed:
        raise UsageError(f"this app was made for loopback; make it with exposed=True for {host}")
    sock = _bind(host, port)
    bound_port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            log_level=log_level,
            access_log=log_level in ("debug", "info"),
            lifespan="on",
            proxy_headers=False,
            server_header=False,
            timeout_graceful_shutdown=2,
            timeout_keep_alive=5,
        )
    )
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # surfaced to the caller below
            failure.append(exc)

    thread = threading.Thread(target=serve, name=f"sandbox-{bound_port}", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not server.started:
            if failure or not thread.is_alive():
                raise RuntimeError(f"sandbox server failed to start: {failure[:1]}")
            if time.monotonic() > deadline:
                raise RuntimeError("sandbox server did not start in time")
            time.sleep(0.002)
        yield RunningSandbox(_url(host, bound_port), host, bound_port, config, app)
    finally:
        server.should_exit = True
        thread.join(STOP_TIMEOUT)
        if thread.is_alive():  # pragma: no cover - a hung request; do not hang the caller
            server.force_exit = True
            thread.join(STOP_TIMEOUT)
        sock.close()


def config_from_args(args: argparse.Namespace) -> SandboxConfig:
    """CLI flags → SandboxConfig; every bad value is a UsageError (exit 1)."""
    kinds_text = getattr(args, "fault_kinds", None)
    kinds = (
        tuple(k.strip() for k in kinds_text.split(",") if k.strip()) if kinds_text else FAULT_KINDS
    )
    max_mb = args.max_upload_mb
    if not isinstance(max_mb, int | float) or not max_mb > 0:
        raise UsageError(f"--max-upload-mb must be > 0, not {max_mb!r}")
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be between 0 and 65535, not {args.port}")
    # Quotas protect an exposed sandbox from its other users: on by default there, and on
    # loopback (one user, benchmarks of 10,000 trainings) only when asked for.
    host = getattr(args, "host", "127.0.0.1")
    exposed = not is_loopback_host(host)
    max_trainings = getattr(args, "max_trainings_per_key", None)
    stored_mb = getattr(args, "max_stored_mb_per_key", None)
    if max_trainings is None and exposed:
        max_trainings = DEFAULT_MAX_TRAININGS_PER_KEY
    if stored_mb is None and exposed:
        stored_mb = DEFAULT_MAX_STORED_MB_PER_KEY
    if stored_mb is not None and (
        not isinstance(stored_mb, int | float) or not stored_mb > 0 or stored_mb != stored_mb
    ):
        raise UsageError(f"--max-stored-mb-per-key must be > 0, not {stored_mb!r}")
    config = SandboxConfig(
        state_dir=Path(args.state_dir),
        train_seconds=args.train_seconds,
        credits=args.credits,
        rate_limit=args.rate_limit,
        fault_rate=args.fault_rate,
        fault_delay=args.fault_delay,
        fault_kinds=kinds,
        api_keys=tuple(args.api_key or ()),
        allow_external_webhooks=bool(args.allow_external_webhooks),
        max_upload_bytes=int(max_mb * 1024 * 1024),
        bandwidth_mbps=getattr(args, "bandwidth_mbps", None),
        seed=getattr(args, "seed", None),
        idempotency=not getattr(args, "no_idempotency", False),
        dialect=getattr(args, "dialect", None) or "envelope",
        max_trainings_per_key=max_trainings,
        max_stored_bytes_per_key=None if stored_mb is None else max(1, int(stored_mb * 1024 * 1024)),
    )
    return exposed_config(config, host)


def run(args: argparse.Namespace) -> int:
    """``runner sandbox serve``: first stdout line is ``sandbox listening on URL``."""
    config = config_from_args(args)
    verbosity = (getattr(args, "verbose", 0) or 0) - (getattr(args, "quiet", 0) or 0)
    log_level = "info" if verbosity > 0 else "warning"
    logging.getLogger("runner.sandbox").setLevel(logging.INFO if verbosity > 0 else logging.WARNING)
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with start_server(config, args.host, args.port, log_level=log_level) as running:
            print(f"sandbox listening on {running.url}", flush=True)
            print(
                f"state in {config.state_dir}; train-seconds {config.train_seconds}; "
                f"dialect {config.dialect}; Ctrl-C to stop",
                file=sys.stderr,
                flush=True,
            )
            if config.exposed:
                print(
                    f"listening beyond loopback: only the {len(config.api_keys)} given key(s)"
                    " are accepted; webhooks never go to loopback or private addresses;"
                    f" per key at most {config.max_trainings_per_key} trainings and"
                    f" {(config.max_stored_bytes_per_key or 0) / 1048576:g} MB of uploads."
                    " This is a stand-in, not a service: do not leave it exposed.",
                    file=sys.stderr,
                    flush=True,
                )
            while not stop.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
