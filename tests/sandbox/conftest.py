"""Fixtures for the sandbox tests: real images, configs, an in-process client and a
loopback server. Plain helpers are importable from ``sandbox_support``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sandbox_support import png_bytes
from support.clock import FakeClock

from runner.sandbox.app import create_app
from runner.sandbox.config import SandboxConfig
from runner.sandbox.serve import RunningSandbox, start_server


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., SandboxConfig]:
    """SandboxConfig over a fresh state dir, quick trainings unless told otherwise."""

    def make(**overrides: Any) -> SandboxConfig:
        overrides.setdefault("state_dir", tmp_path / "state")
        overrides.setdefault("train_seconds", 1.0)
        return SandboxConfig(**overrides)

    return make


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def asgi(make_config: Callable[..., SandboxConfig], clock: FakeClock) -> Callable[..., Any]:
    """Factory: an ``httpx.AsyncClient`` over ``ASGITransport`` on a fresh app (fake clock)."""
    apps: list[Any] = []

    def make(**overrides: Any) -> httpx.AsyncClient:
        app = create_app(make_config(**overrides), clock=clock)
        apps.append(app)
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://sandbox.test"
        )

    yield make
    for app in apps:
        app.state.sandbox.close()


@pytest.fixture
async def client(asgi: Callable[..., httpx.AsyncClient]) -> AsyncIterator[httpx.AsyncClient]:
    """A default in-process client (any key accepted, unlimited credits, fake clock)."""
    async with asgi() as c:
        yield c


@pytest.fixture
def server(make_config: Callable[..., SandboxConfig]) -> Callable[..., Any]:
    """Factory: a context manager running a real uvicorn sandbox on a loopback port."""

    def make(**overrides: Any) -> Any:
        return start_server(make_config(**overrides))

    return make


@pytest.fixture
def live(server: Callable[..., Any]) -> Iterator[RunningSandbox]:
    """A running loopback sandbox with the default settings and 0.2 s trainings."""
    with server(train_seconds=0.2) as running:
        yield running


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    """Three small real images on disk (two PNG, one JPEG), for curl and file uploads."""
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "a.png").write_bytes(png_bytes((200, 30, 30)))
    (folder / "b.png").write_bytes(png_bytes((30, 200, 30)))
    from sandbox_support import jpeg_bytes

    (folder / "c.jpg").write_bytes(jpeg_bytes((30, 30, 200)))
    return folder
