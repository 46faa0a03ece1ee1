"""Support for the pull-request attacks on secrets and trust (issue 12, items 1 and 2).

A temporary git repository whose reviewed ``main`` holds a manifest applied against a real
sandbox on loopback (lockfile committed), a pull-request-like commit on top, ``runner`` run
as a subprocess with secret-looking values in its environment, a scan of every output and
every file for any 8-character piece of a secret, and a listening socket on a non-loopback
address of this machine that stands for another host and records every connection to it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from clisupport import git, run_cli
from support.cli import Run, pythonpath
from support.images import make_image

# Secret-looking values, as CI would hold them; no piece of 8+ characters may leak.
KEY = "sk-live-7Hq2Xv9LmR4tW8zK3pN6bY1cQe5J"
AWS = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzq9Lk2Vb"
HOOK = "https://hooks.example/ci?token=whsec-Jm4Qx8Tz2Lk7Rv5Np9Wd3Hf6"
HOOK_SECRET = "whsec-Jm4Qx8Tz2Lk7Rv5Np9Wd3Hf6"
FRAGMENT = 8


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "VIMMERSE_"))}
    env.update(
        VIMMERSE_API_KEY=KEY,
        AWS_SECRET_ACCESS_KEY=AWS,
        CI="true",
        NO_COLOR="1",
        RUNNER_SANDBOX_TRAIN_SECONDS="0.05",
        PYTHONPATH=pythonpath(),
    )
    env.update(extra)
    return env


def run(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> Run:
    """``python -m runner ARGS`` in ``cwd`` with the secret-looking environment."""
    return run_cli(*args, cwd=cwd, env=env or environment(), timeout=timeout)


def images(repo: Path, *names: str) -> None:
    for i, name in enumerate(names):
        for k in range(2):
            make_image(repo / "data" / name / f"{k}.png", (16, 16), (30 * i + 10 * k, 90, 160))


def manifest_text(url: str, *, head: str = "", api: str = "", defaults: str = "", jobs: str = "") -> str:
    """A manifest of two jobs (hero, mug) against ``url``, with extra top-level keys
    (``head``), api keys, defaults and jobs spliced in as YAML text."""
    return (
        "version: 1\n"
        + head
        + "api:\n"
        + f"  endpoint: {url}\n"
        + "  poll_interval: 100ms\n"
        + "  job_timeout: 60s\n"
        + api
        + (f"defaults:\n{defaults}" if defaults else "")
        + "jobs:\n"
        + "  - name: hero\n    lora_prefix: HERO\n    images: data/hero\n"
        + "  - name: mug\n    lora_prefix: MUG\n    images: data/mug\n"
        + jobs
    )


def make_repo(root: Path, manifest: str) -> Path:
    """A git repository with ``m.yaml`` and its images committed on ``main``."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    images(repo, "hero", "mug", "extra")
    (repo / "m.yaml").write_text(manifest, encoding="utf-8")
    (repo / ".gitignore").write_text(".runner/\n", encoding="utf-8")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "reviewed manifest")
    return repo


def commit(repo: Path, message: str, *paths: str) -> None:
    git(repo, "add", "--", *(paths or (".",)))
    git(repo, "commit", "-q", "-m", message)


def pull_request(repo: Path, manifest: str, message: str = "PR") -> None:
    """Check out a branch ``pr`` whose one commit changes ``m.yaml``, as a PR author would."""
    git(repo, "checkout", "-q", "-B", "pr", "main")
    (repo / "m.yaml").write_text(manifest, encoding="utf-8")
    commit(repo, message, "m.yaml")


def lock_doc(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    return doc


# -- leaks ----------------------------------------------------------------------------------


def fragments(secret: str, size: int = FRAGMENT) -> set[str]:
    return {secret[i : i + size] for i in range(len(secret) - size + 1)}


def leaked(text: str | bytes, secrets: Iterable[str]) -> list[str]:
    """Every piece (of ``FRAGMENT`` characters) of any secret found in ``text``."""
    found: list[str] = []
    for secret in secrets:
        for piece in sorted(fragments(secret)):
            needle: str | bytes = piece.encode() if isinstance(text, bytes) else piece
            if needle in text:  # type: ignore[operator]
                found.append(piece)
    return found


def files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root`` except git's own (compressed) objects."""
    for path in sorted(root.rglob("*")):
        if ".git" in path.relative_to(root).parts or path.is_symlink() or not path.is_file():
            continue
        yield path


def assert_no_leak(secrets: Iterable[str], *, runs: Iterable[Run] = (), roots: Iterable[Path] = ()) -> None:
    secrets = list(secrets)
    for result in runs:
        assert leaked(result.text, secrets) == [], result.text[-3000:]
    for root in roots:
        for path in files(root):
            assert leaked(path.read_bytes(), secrets) == [], path


# -- another host ---------------------------------------------------------------------------


def outside_address() -> str | None:
    """A non-loopback IPv4 address of this machine (one a route would leave from), or None."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent by a UDP connect
        address = str(probe.getsockname()[0])
    except OSError:
        return None
    finally:
        probe.close()
    if address.startswith("127.") or address == "0.0.0.0":
        return None
    return address


@dataclass
class Recorder:
    """A TCP listener standing for an attacker's host: ``url`` is ``https://ADDRESS:PORT``
    (or an unresolvable name when this machine has no other address, then ``connections``
    is None: nothing can be recorded, and nothing can connect either)."""

    url: str
    connections: list[bytes] | None = None
    _sock: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def serve(self) -> None:
        assert self._sock is not None and self.connections is not None
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(1.0)
                try:
                    self.connections.append(conn.recv(4096))
                except OSError:
                    self.connections.append(b"")


@contextlib.contextmanager
def attacker_host() -> Iterator[Recorder]:
    address = outside_address()
    sock: socket.socket | None = None
    if address is not None:
        try:
            sock = socket.create_server((address, 0))
        except OSError:
            sock = None
    if sock is None:
        yield Recorder("https://attacker.invalid")
        return
    recorder = Recorder(f"https://{address}:{sock.getsockname()[1]}", [], sock)
    thread = threading.Thread(target=recorder.serve, daemon=True)
    thread.start()
    try:
        yield recorder
    finally:
        recorder._stop.set()
        thread.join(timeout=5)
        sock.close()
