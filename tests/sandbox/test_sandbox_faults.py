"""Fault injection produces each kind, over real sockets and in-process; the RNG is seedable."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from sandbox_support import HEADERS, data, image_parts

from runner.sandbox.config import FAULT_KINDS, SandboxConfig
from runner.sandbox.faults import FaultInjector


def ledger(url: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/_sandbox/ledger", headers=HEADERS, timeout=10)
    assert response.status_code == 200
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.parametrize("kind", ["500", "502", "503"])
def test_status_faults_answer_that_status_and_train_nothing(
    server: Callable[..., Any], kind: str
) -> None:
    """An injected 5xx answers that status with {"message"} and neither trains nor charges."""
    with server(fault_rate=1.0, fault_kinds=(kind,), seed=1) as running:
        h = HEADERS | {"Idempotency-Key": f"fault-{kind}"}
        response = httpx.post(
            f"{running.url}/finetune", headers=h, files=image_parts(2), timeout=10
        )
        assert response.status_code == int(kind)
        assert "fault" in response.json()["message"]
        assert response.headers["idempotency-key"] == f"fault-{kind}"
        assert httpx.get(f"{running.url}/finetune/x_y", headers=HEADERS).status_code == int(kind)
        counts = ledger(running.url)
        assert counts["trainings"] == 0 and counts["credits_charged"] == 0 and counts["posts"] == 1


def test_drop_closes_the_connection_without_an_answer(server: Callable[..., Any]) -> None:
    """A dropped request gets no HTTP answer at all, and nothing was trained."""
    with server(fault_rate=1.0, fault_kinds=("drop",), seed=1) as running:
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(f"{running.url}/finetune", headers=HEADERS, files=image_parts(2), timeout=10)
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(f"{running.url}/finetune/x_y", headers=HEADERS, timeout=10)
        assert ledger(running.url)["trainings"] == 0


def test_slow_answers_arrive_late_but_whole(server: Callable[..., Any]) -> None:
    """A slow fault delays the answer by half to all of fault_delay, then answers normally."""
    with server(fault_rate=1.0, fault_kinds=("slow",), fault_delay=0.4, seed=1) as running:
        started = time.monotonic()
        response = httpx.post(
            f"{running.url}/finetune", headers=HEADERS, files=image_parts(2), timeout=10
        )
        elapsed = time.monotonic() - started
        assert response.status_code == 200
        assert 0.2 <= elapsed < 2.0
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(
                f"{running.url}/finetune/{data(response)['id']}", headers=HEADERS, timeout=0.1
            )


def test_lost_post_trains_then_drops_and_a_replay_recovers_it(server: Callable[..., Any]) -> None:
    """lost_post creates and charges the training but drops the answer; the same key replays it."""
    with server(fault_rate=1.0, fault_kinds=("lost_post",), seed=1) as running:
        h = HEADERS | {"Idempotency-Key": "lost-1"}
        parts = image_parts(2)
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(f"{running.url}/finetune", headers=h, files=parts, timeout=10)
        assert ledger(running.url)["trainings"] == 1  # GETs are never lost_post
    with server(fault_rate=0.0) as running:  # same state dir, faults off
        replay = httpx.post(f"{running.url}/finetune", headers=h, files=parts, timeout=10)
        assert replay.status_code == 200
        assert replay.headers["idempotent-replayed"] == "true"
        counts = ledger(running.url)
        assert counts["trainings"] == 1 and counts["credits_charged"] == 1


def test_mixed_faults_produce_every_kind(server: Callable[..., Any]) -> None:
    """At fault rate 0.8 with all kinds, 60 POSTs see each kind (504 = gateway_timeout)."""
    seen: Counter[str] = Counter()
    with (
        server(fault_rate=0.8, fault_delay=0.2, seed=3) as running,
        httpx.Client(base_url=running.url, headers=HEADERS, timeout=10) as client,
    ):
        for _ in range(60):
            before = client.get("/_sandbox/ledger").json()["trainings"]
            started = time.monotonic()
            try:
                response = client.post("/finetune", files=image_parts(1))
            except httpx.RemoteProtocolError:
                lost = client.get("/_sandbox/ledger").json()["trainings"] > before
                seen["lost_post" if lost else "drop"] += 1
                continue
            if response.status_code == 504:
                created = client.get("/_sandbox/ledger").json()["trainings"] > before
                assert created  # a 504 always stands for a training started
                seen["gateway_timeout"] += 1
            elif response.status_code >= 500:
                seen[str(response.status_code)] += 1
            elif time.monotonic() - started >= 0.1:
                seen["slow"] += 1
            else:
                seen["ok"] += 1
    assert set(FAULT_KINDS) <= set(seen), seen
    assert seen["ok"] >= 1


def test_in_process_drop_raises_what_httpx_raises(
    make_config: Callable[..., SandboxConfig],
) -> None:
    """Under ASGITransport a drop surfaces as httpx.RemoteProtocolError, like a real socket drop."""
    import asyncio

    from runner.sandbox.app import create_app

    app = create_app(make_config(fault_rate=1.0, fault_kinds=("drop",)))

    async def main() -> None:
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t"
        ) as c:
            with pytest.raises(httpx.RemoteProtocolError):
                await c.post("/finetune", headers=HEADERS, files=image_parts(1))

    try:
        asyncio.run(main())
    finally:
        app.state.sandbox.close()


def test_fault_rng_is_reproducible_with_a_seed(make_config: Callable[..., SandboxConfig]) -> None:
    """Two injectors with the same seed draw the same faults; rate 0 never draws one."""
    config = make_config(fault_rate=0.5, seed=42)
    first, second = FaultInjector(config), FaultInjector(config)
    draws = [first.draw(is_post=True) for _ in range(200)]
    assert draws == [second.draw(is_post=True) for _ in range(200)]
    assert None in draws and len(set(draws)) == len(FAULT_KINDS) + 1
    never = FaultInjector(make_config(fault_rate=0.0))
    assert {never.draw(is_post=True) for _ in range(200)} == {None}


def test_lost_post_never_hits_a_get(make_config: Callable[..., SandboxConfig]) -> None:
    """With only lost_post configured, non-POST requests are never faulted."""
    injector = FaultInjector(make_config(fault_rate=1.0, fault_kinds=("lost_post",), seed=1))
    assert {injector.draw(is_post=False) for _ in range(50)} == {None}
    assert {injector.draw(is_post=True) for _ in range(50)} == {"lost_post"}
